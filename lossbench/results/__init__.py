"""What a run leaves behind and how runs are compared: the run record, metrics, report, plots,
tracking, and the statistics of `lossbench compare`."""
