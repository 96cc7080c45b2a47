"""`lossbench compare`'s parts: run records, rows, families of tests, tables and plots."""
