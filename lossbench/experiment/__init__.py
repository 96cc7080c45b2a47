"""One experiment end to end: run a config (one process or N), the workflow, sweeps, studies."""
