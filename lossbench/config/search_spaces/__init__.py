"""What `lossbench study` tunes: shared.yaml (every loss) and <loss>.yaml (the loss's own
hyperparameters), each key a `lossbench train` config key with its range and grid.

They live here, not in conf/: a folder there would be a Hydra config group (`search=...`),
which these files are not. Shipped as package data (pyproject: "*.yaml" of lossbench*)."""
