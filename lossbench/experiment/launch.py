"""Processes: one run in this process, in N ranks started from here, or as one torchrun rank.

`run(cfg)` decides which; every process then runs `workflow.run_process`, and rank 0 (or the
only process) prints, logs and writes the run directory.
"""

from __future__ import annotations

import copy
import logging
import shutil
import signal
import time
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from lossbench.config.moved import current_targets
from lossbench.config.schema import check_config
from lossbench.console import output_console
from lossbench.engine import distributed
from lossbench.engine.checkpoint import resume_point, resume_state
from lossbench.engine.signals import StopOnSignal
from lossbench.errors import Diverged, Interrupted, UserError
from lossbench.experiment.builders import pick_device
from lossbench.config.hydra_context import hydra_config, in_sweep
from lossbench.experiment.outcome import stopped_after_completing
from lossbench.experiment.workflow import log, run_process
from lossbench.results import tracking
from lossbench.results.folder_lock import release_held
from lossbench.results.record import has_metrics, metrics_path, read_metrics


def run_directory(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):  # set by tests, and by `resume=` (a run goes on in its own directory)
        return Path(cfg.run_dir)
    runtime = hydra_config()
    return Path(runtime.runtime.output_dir if runtime is not None else "outputs/run")


def resumed_config(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """`resume=<run dir>`: the run's own saved config (pointing at its directory) and its
    checkpoint. Nothing else may change: the run must end as if it had never stopped."""
    run_dir = Path(cfg.resume)
    runtime = hydra_config()
    others = [] if runtime is None else [o for o in runtime.overrides.task
                                         if not o.lstrip("+~").startswith("resume=")]
    if others:
        raise UserError(f"resume={run_dir} continues that run with its own saved config; "
                        f"drop the other overrides ({' '.join(others)})")
    state = resume_state(run_dir)
    saved = current_targets(OmegaConf.create(state["config"]))  # a run of an older lossbench
    saved.run_dir = str(run_dir)
    return saved, state


def run(cfg: DictConfig, resume: dict[str, Any] | None = None) -> float:
    """Run one experiment; returns the best value of the monitored validation metric.

    `resume`: a checkpoint of this very config to continue from (a sweep's job that was killed,
    see `sweep.run_sweep_job`); `resume=<run dir>` in the config loads the run's own.

    `trainer.devices=N` (N > 1) runs it in N processes started from here, which share this run
    directory (see `lossbench.engine.distributed`); under torchrun this process is one of them already.

    A run that stops early raises once its files are written: `Diverged` (NaN/inf loss;
    metrics.json status "diverged", the last good checkpoint.pt kept) or `Interrupted` (a stop
    signal, `engine.signals`: in training, checkpoint.pt written, status "interrupted",
    `resume=<run dir>` continues it; after training, once the completed run is all written).
    A signal during start-up raises `Stopped` at once: there is nothing to save yet.
    """
    check_config(cfg)
    if cfg.get("resume"):
        typed = cfg.resume
        cfg, resume = resumed_config(cfg)
        print(f"lossbench: resume={typed}: continuing from {resume_point(resume)} with its "
              "checkpoint and saved config", flush=True)
    if resume is not None:
        if distributed.launched_by_torchrun():
            raise UserError("resume= under torchrun is not supported; use trainer.devices=N")
        devices = int(cfg.trainer.get("devices", 1) or 1)
        return _spawn_ranks(cfg, devices, resume) if devices > 1 else _run_in(cfg, resume)
    if distributed.current().active:
        return _run_in(cfg)
    if distributed.launched_by_torchrun():
        return _torchrun_rank(cfg)
    devices = int(cfg.trainer.get("devices", 1) or 1)
    if devices < 1:
        raise UserError(f"trainer.devices={devices} must be at least 1")
    if devices > 1:
        return _spawn_ranks(cfg, devices)
    return _run_in(cfg)


def _run_in(cfg: DictConfig, resume: dict[str, Any] | None = None) -> float:
    """One process's run: rank 0 (or the only process) prints, logs and writes the run dir."""
    started = time.perf_counter()
    run_dir = run_directory(cfg)
    main = distributed.current().is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # a sweep's console shows one line per job (lossbench/experiment/sweep_console.py): details go to files
    console = output_console(quiet=not main or in_sweep())
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if main:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the console shows the progress bar and the report, not log lines
    # start-up, then training, then finishing (lossbench/engine/signals.py)
    stop = StopOnSignal(announce=main, phase="start-up")
    try:
        with stop:
            best = run_process(cfg, run_dir, console, started, resume, stop)
    except BaseException as err:
        tracking.fail_open_runs(err)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
    # a signal that came once training was over: the run wrote its whole record, now it stops
    # (spawned ranks leave that to the process that started them)
    if stop.requested is not None and not distributed.current().active:
        raise stopped_after_completing(run_dir, stop.requested)
    return best


def _spawn_ranks(cfg: DictConfig, devices: int, resume: dict[str, Any] | None = None) -> float:
    """`trainer.devices=N`: N processes from inside this one job, one run directory.

    Ctrl-C in a terminal reaches every process: the ranks stop together at the end of the epoch
    and rank 0 writes the checkpoint, while this process waits for them and then reports what
    rank 0 wrote (interrupted or diverged) instead of a failed child process.
    """
    device = pick_device(cfg.trainer.device)  # a wrong device stops before any process starts
    distributed.rank_device(device, devices - 1, devices)
    run_dir = run_directory(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    # the ranks see the same Hydra runtime (run directory, choices) as this job: the whole
    # config Hydra holds, which `HydraConfig.set_config` takes back in each rank
    hydra_cfg = None
    if hydra_config() is not None:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.instance().cfg

    # rank 0 announces a signal; this process only notes it and waits for the ranks to stop
    stop, started = StopOnSignal(announce=False), time.time()
    try:
        with stop:
            distributed.spawn(_rank_main, devices, (cfg, hydra_cfg, resume))
        failure = None
    except Exception as err:  # a rank that raised Diverged exits non-zero
        failure = err
    written = has_metrics(run_dir) and metrics_path(run_dir).stat().st_mtime >= started
    metrics = (read_metrics(run_dir) or {}) if written else {}
    if metrics.get("status") == "diverged":
        raise Diverged(metrics["message"]) from None
    if metrics.get("status") == "interrupted":  # the ranks exit quietly on KeyboardInterrupt
        raise Interrupted(metrics["message"], 128 + (stop.requested or signal.SIGINT)) from None
    if failure is not None:
        raise failure
    if stop.requested is not None:  # the ranks completed the run, then the stop
        raise stopped_after_completing(run_dir, stop.requested)
    return float(metrics["best_val"])


def _rank_main(cfg: DictConfig, hydra_cfg: DictConfig | None,
               resume: dict[str, Any] | None = None) -> None:
    """Body of one spawned rank (see `distributed.spawn`)."""
    if hydra_cfg is not None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(hydra_cfg)
    distributed.init_from_env(pick_device(cfg.trainer.device))
    # `resume` arrived in memory shared with the other ranks; the optimizer would keep its
    # tensors as its own state and every rank would update the same moments: copy them.
    _run_in(cfg, copy.deepcopy(resume))


def _torchrun_rank(cfg: DictConfig) -> NoReturn:
    """One process of `torchrun --nproc_per_node=N -m lossbench train ...`; ends the process."""
    dist = distributed.init_from_env(pick_device(cfg.trainer.device))
    try:
        _run_in(cfg)
        # Each torchrun process composed its own Hydra job; only rank 0's directory is the run.
        main_dir = Path(distributed.broadcast_object(str(run_directory(cfg).resolve()), dist))
        own = run_directory(cfg).resolve()
        if not dist.is_main and own != main_dir and own.is_dir() and {
                p.name for p in own.iterdir()} <= {".hydra"}:
            shutil.rmtree(own, ignore_errors=True)
    except BaseException:
        distributed.shutdown()
        raise
    distributed.shutdown(together=True)
    release_held()  # rank 0's lock on the run directory: exit_process skips every `finally`
    distributed.exit_process(0)  # the run is complete and written: see exit_process
