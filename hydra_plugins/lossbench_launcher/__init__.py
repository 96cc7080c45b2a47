"""lossbench's Hydra launcher plugin: `hydra/launcher=stacked` (stacked_launcher.py)."""
