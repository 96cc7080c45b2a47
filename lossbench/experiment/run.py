"""`run(cfg)`: the whole workflow of one experiment, from a composed config to a run directory.

seed → data (split, noise, imbalance) → model (sized from the data and the loss) → loss →
optimizer/scheduler → epochs of train/validate → best weights → test → report → files.

The entry point that commands, sweeps and tests import; the work is done in
- `launch.py`: one process, N ranks started from here, or one torchrun rank;
- `builders.py`: data, loss, model, optimizer and scheduler from a config (`lossbench eval`
  rebuilds a run's parts with them);
- `workflow.py`: one process's run, step by step;
- `outcome.py`: the test reports, the metrics and the run record's files.
"""

from __future__ import annotations

from lossbench.data.prepare import PREP_KEYS as DATA_PREP_KEYS
from lossbench.engine.optim import scheduler_stepping
from lossbench.experiment.builders import (Schedule, build_loss_and_model,
                                           build_scheduler, build_training_optimizer,
                                           check_loss_fits, data_to_device,
                                           load_data, loss_name, order_hash, output_size,
                                           pick_device, run_seeds,
                                           seed_everything, state_hash, user_loss_options)
from lossbench.experiment.launch import resumed_config, run, run_directory
from lossbench.experiment.outcome import (loss_params_line, robust_line, stop_early,
                                          test_report, write_plots, write_record)
from lossbench.experiment.workflow import choices, config_tree, run_process, shows_config

__all__ = [
    "DATA_PREP_KEYS", "Schedule", "build_loss_and_model", "build_scheduler",
    "build_training_optimizer", "check_loss_fits", "choices", "config_tree", "data_to_device",
    "load_data", "loss_name", "loss_params_line", "order_hash", "output_size",
    "pick_device", "resumed_config", "robust_line", "run", "run_directory", "run_process",
    "run_seeds", "scheduler_stepping", "seed_everything", "shows_config", "state_hash",
    "stop_early", "test_report", "user_loss_options", "write_plots", "write_record",
]
