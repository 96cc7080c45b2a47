"""lossbench's speed, measured side by side: a table on stdout and the figures as JSON.

1. loop    lossbench's training epoch (its own `train_batches` + `train_epoch`, as `fit` runs
           them) against a minimal hand-written PyTorch loop on the same model, data and batch
           size: digits MLP, and a CNN on 28×28 images. Also a whole `fit` epoch (train +
           validate + bookkeeping) against the hand loop plus a hand-written validation pass.
           Every side steps the optimizer `lossbench train` builds by default (Adam on torch's
           fused kernel where the device has one); one more side shows what the fused kernel
           saves against torch's per-parameter loop.
           Repetitions interleaved (ABAB...), medians, ratio. Targets: ≤ 1.05 (≤ 1.10 at most).
2. lightning  the same MLP epoch under PyTorch Lightning's Trainer, when `lightning` imports
           (optional; `--lightning-path DIR` adds a directory it was installed into with
           `pip install --target DIR lightning`), same optimizer. Target: lossbench ≥ 2×
           faster per epoch. Measured with the process's own environment, then again with the
           PYTORCH_NVML_BASED_CUDA_CHECK=1 that importing lightning sets (see bench_lightning).
3. startup `lossbench --help` (target < 0.5 s) and a whole `lossbench train trainer=smoke`,
           imports included (target < 5 s on 2 cores); medians of several runs, with a bare
           `python -c pass` beside them for scale.
4. sweep   an 8-job smoke sweep (4 losses × 2 seeds) with the basic launcher and with joblib
           on 2 jobs (`hydra/launcher=parallel`): wall time and jobs per second.
5. memory  peak RSS (ru_maxrss of the process) of the default `lossbench train`, and of a smoke run.
6. whole   the per-epoch cost of whole runs: `lossbench train` (digits MLP, early stopping and
           plots off) for a long and a short run, the difference divided by the epochs between
           them, against benchmarks/hand_loop.py (the same experiment in plain PyTorch with
           per-epoch validation) run the same way. Target ≤ 1.10.
7. busy    the same default `lossbench train` (120 epochs) idle and beside two CPU-bound
           neighbour processes that the benchmark starts (`while True: pass`): loaded / idle,
           target ≤ 2 (a fair share of 2 cores among 3 processes is 1.5); the hand loop and
           `lossbench train trainer.threads=<cores>` (torch's default count) beside it.
8. threads a CNN on 32×32 images (dataset=fake_images model=cnn), whole runs with
           trainer.threads=auto and with each fixed count up to the cores: the median epoch time
           of each run (its history.csv); target: auto ≤ 1.05 × the best fixed count.

Timings on a shared machine are noisy: every figure is a median of interleaved repetitions, and
ratios are what counts. Absolute times belong to the machine printed in the header.

Run:  python benchmarks/run.py                         # everything (about 2.5 minutes on 2 cores)
      python benchmarks/run.py --only loop,startup     # some parts
      python benchmarks/run.py --quick                 # fewer repetitions, a first look
      python benchmarks/run.py --out benchmarks/results.json --threads 1
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("loop", "lightning", "startup", "sweep", "memory", "whole", "busy", "threads")
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


# --------------------------------------------------------------------------- helpers

# The in-process parts (loop, lightning) time with this process's CPU time: on a machine shared
# with other users, wall time also counts the moments the scheduler gave our core to someone
# else. `--clock wall` switches to wall time.
clock = time.process_time

def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each variant once per round, alternating the order between rounds (ABBA...), so a
    burst of load from other users falls on both sides; returns every variant's timings."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(variants[name]())
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a_i / b_i: the two sides of one round ran back to back, under the
    same load from other users, so their ratio is steadier than a ratio of medians."""
    return median([x / y for x, y in zip(a, b)])


def lossbench_cmd() -> list[str]:
    """The `lossbench` a user types: the console script beside this Python, else `-m`."""
    script = Path(sys.executable).with_name("lossbench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lossbench"]


def timed_process(cmd: list[str], cwd: Path, env: dict | None = None
                  ) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in MiB, CPU seconds: user + system) of one child process.

    On a machine shared with other users the CPU seconds are the steadier figure: they do not
    grow while the child waits for a core (a one-process run is mostly single-threaded, so on
    an idle machine its wall time is close to its CPU time)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-2000:]}")
    # ru_maxrss is in KiB on Linux
    return wall, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "load_average_start": list(os.getloadavg())}


# --------------------------------------------------------------------------- 1. loop overhead

@functools.cache
def default_config():
    """The root config `lossbench train` composes with no overrides."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        return compose(config_name="config")


def digits_splits():
    """The default dataset exactly as `lossbench train` prepares it (split, scaled)."""
    from lossbench.experiment.run import load_data

    cfg = default_config()
    return load_data(cfg), list(cfg.model.hidden)


def lossbench_optimizer(params, fused: bool | None = None) -> torch.optim.Optimizer:
    """The optimizer `lossbench train` builds from its default config (Adam, lr 1e-3, on
    torch's fused kernel where the device has one); `fused=False` forces the per-parameter
    loop. Every side of a comparison gets the same one."""
    from hydra.utils import instantiate

    from lossbench.engine.optim import build_optimizer

    cfg = default_config()
    factory = instantiate(cfg.optimizer)
    if fused is not None:
        factory = functools.partial(factory, fused=fused)
    return build_optimizer(factory, cfg.optimizer._target_, list(params))


def image_splits(n_train: int = 2048, n_val: int = 512, classes: int = 10):
    """28×28 one-channel images (MNIST-sized), random but class-dependent, in lossbench's Splits."""
    from lossbench.data import Split, Splits

    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(classes, 1, 28, 28, generator=g)

    def part(n: int) -> Split:
        y = torch.randint(0, classes, (n,), generator=g)
        return Split(x=prototypes[y] + torch.randn(n, 1, 28, 28, generator=g), y=y)

    return Splits(train=part(n_train), val=part(n_val), test=part(n_val), task="multiclass",
                  name="images28", num_classes=classes, class_names=None,
                  sample_shape=(1, 28, 28))


def trainer_cfg(epochs: int, batch_size: int):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "epochs": epochs, "batch_size": batch_size, "eval_batch_size": 1024, "grad_clip": None,
        "early_stopping": False, "monitor": "auto", "mode": "auto", "patience": 10,
        "max_batches": None, "precision": 32, "num_workers": "auto", "compile": False})


def loop_workload(name: str, splits, model, batch_size: int, epochs: int,
                  repeats: int) -> dict[str, Any]:
    """Time `epochs` training epochs per repetition, lossbench's code against a hand loop."""
    from rich.console import Console

    from lossbench import distributed
    from lossbench.engine.progress import EpochProgress
    from lossbench.engine.batches import train_batches
    from lossbench.engine.loop import fit, train_epoch

    from lossbench.losses import CrossEntropyLoss
    from lossbench.engine.optim import optimizer_kernel

    device = torch.device("cpu")
    x, y = splits.train.x, splits.train.y
    xv, yv = splits.val.x, splits.val.y
    loss_fn = CrossEntropyLoss()  # lossbench's `ce`, the default loss, on both sides
    models = {k: copy.deepcopy(model)
              for k in ("lossbench", "hand", "fit", "hand+val", "lossbench, loop Adam")}
    # the optimizer lossbench builds by default, the same on every side; one more lossbench
    # side steps Adam with torch's per-parameter loop, to show what the fused kernel saves
    opts = {k: lossbench_optimizer(m.parameters(), fused=False if "loop Adam" in k else None)
            for k, m in models.items()}
    gens = {k: torch.Generator().manual_seed(0) for k in models}

    def lossbench_epochs(key: str = "lossbench") -> float:
        # what fit does for the training part of an epoch, with its own functions
        m, opt, g = models[key], opts[key], gens[key]
        params = [p for group in opt.param_groups for p in group["params"]]
        start = clock()
        for _ in range(epochs):
            m.train()
            _, batches = train_batches(splits.train, batch_size, g)
            sums = train_epoch(m, loss_fn, opt, batches, params=params)
            distributed.all_reduce_sum(sums, distributed.current()).tolist()
        return (clock() - start) / epochs

    def hand_train(m: torch.nn.Module, opt: torch.optim.Optimizer, g: torch.Generator) -> None:
        # the minimal hand-written epoch
        m.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            loss = loss_fn(m(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def hand_epochs() -> float:
        start = clock()
        for _ in range(epochs):
            hand_train(models["hand"], opts["hand"], gens["hand"])
        return (clock() - start) / epochs

    def fit_epochs() -> float:
        # the whole lossbench epoch: train, validate (loss, accuracy, macro-F1), history row,
        # best-weights bookkeeping
        progress = EpochProgress(Console(quiet=True), epochs, "val_accuracy", enabled=False)
        start = clock()
        fit(models["fit"], loss_fn, opts["fit"], None, splits, "logits",
            trainer_cfg(epochs, batch_size), device, gens["fit"], progress)
        return (clock() - start) / epochs

    def hand_val_epochs() -> float:
        m = models["hand+val"]
        start = clock()
        for _ in range(epochs):
            hand_train(m, opts["hand+val"], gens["hand+val"])
            m.eval()
            with torch.inference_mode():
                out = torch.cat([m(xv[i:i + 1024]) for i in range(0, len(yv), 1024)])
                float(loss_fn(out, yv)), float((out.argmax(1) == yv).float().mean())
        return (clock() - start) / epochs

    variants = {"lossbench": lossbench_epochs, "hand": hand_epochs, "fit": fit_epochs,
                "hand+val": hand_val_epochs,
                "lossbench, loop Adam": functools.partial(lossbench_epochs, "lossbench, loop Adam")}
    interleaved(variants, 2)  # warm-up: allocator, first-call costs
    times = interleaved(variants, repeats)
    med = {k: median(v) for k, v in times.items()}
    return {"workload": name, "batch_size": batch_size, "train_samples": len(y),
            "epochs_per_repeat": epochs, "repeats": repeats,
            "median_epoch_s": med, "times_s": times,
            "optimizer": optimizer_kernel(opts["lossbench"]),
            "ratio_train_epoch": paired_ratio(times["lossbench"], times["hand"]),
            "fused_speedup": paired_ratio(times["lossbench, loop Adam"], times["lossbench"]),
            "ratio_with_validation": paired_ratio(times["fit"], times["hand+val"]),
            "ratio_of_medians": {"train_epoch": med["lossbench"] / med["hand"],
                                 "with_validation": med["fit"] / med["hand+val"]}}


def bench_loop(repeats: int) -> list[dict[str, Any]]:
    from lossbench.models import CNN, MLP

    torch.manual_seed(0)
    digits, hidden = digits_splits()
    mlp = MLP(digits.sample_shape, digits.num_classes, hidden=hidden)
    images = image_splits(n_train=1024, n_val=256)
    cnn = CNN(images.sample_shape, images.num_classes)
    return [loop_workload("digits MLP", digits, mlp, 128, 5, repeats * 4),
            loop_workload("28x28 CNN", images, cnn, 128, 1, repeats)]


# --------------------------------------------------------------------------- 2. Lightning

def bench_lightning(repeats: int, lightning_path: str | None) -> dict[str, Any]:
    if lightning_path:
        sys.path.insert(0, lightning_path)
    env_before = os.environ.get(NVML_CHECK)
    try:
        import lightning.pytorch as pl
    except ImportError:
        return {"skipped": "lightning is not installed (pip install --target DIR lightning, "
                           "then --lightning-path DIR)"}
    # Importing lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 for the whole process; with the
    # CUDA build of torch on a machine without a GPU, torch then asks NVML whether CUDA is there
    # at every call that checks, which slows every training step (forward, backward and the
    # optimizer's) of both sides. The comparison is made with the setting the process had
    # before, then repeated with lightning's, and both are reported.
    lightning_env = os.environ.get(NVML_CHECK)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from lossbench import distributed
    from lossbench.losses import CrossEntropyLoss
    from lossbench.models import MLP
    from lossbench.engine.batches import train_batches
    from lossbench.engine.loop import train_epoch

    loss_fn = CrossEntropyLoss()  # lossbench's `ce` on both sides
    torch.manual_seed(0)
    splits, hidden = digits_splits()
    x, y = splits.train.x, splits.train.y
    base = MLP(splits.sample_shape, splits.num_classes, hidden=hidden)
    epochs = 20

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = copy.deepcopy(base)

        def training_step(self, batch, _):
            xb, yb = batch
            return loss_fn(self.model(xb), yb)

        def configure_optimizers(self):
            return lossbench_optimizer(self.parameters())  # the same optimizer on both sides

    class EpochTimes(pl.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_epoch_start(self, *_):
            self.start = clock()

        def on_train_epoch_end(self, *_):
            self.times.append(clock() - self.start)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=128,
                                         shuffle=True)

    def lightning_epochs() -> float:
        timer = EpochTimes()
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0,
                             limit_val_batches=0, callbacks=[timer])
        trainer.fit(Module(), loader)
        return median(timer.times)  # per-epoch time, Trainer set-up excluded

    model = copy.deepcopy(base)
    opt = lossbench_optimizer(model.parameters())
    gen = torch.Generator().manual_seed(0)

    def lossbench_epochs() -> float:
        times = []
        for _ in range(epochs):
            start = clock()
            model.train()
            _, batches = train_batches(splits.train, 128, gen)
            sums = train_epoch(model, loss_fn, opt, batches)
            distributed.all_reduce_sum(sums, distributed.current()).tolist()
            times.append(clock() - start)
        return median(times)

    variants = {"lossbench": lossbench_epochs, "lightning": lightning_epochs}

    def measure(env_value: str | None) -> dict[str, list[float]]:
        if env_value is None:
            os.environ.pop(NVML_CHECK, None)
        else:
            os.environ[NVML_CHECK] = env_value
        interleaved(variants, 1)
        return interleaved(variants, repeats)

    try:
        times = measure(env_before)
        with_env = measure(lightning_env) if lightning_env != env_before else None
    finally:  # leave the process as lightning's import left it
        if lightning_env is None:
            os.environ.pop(NVML_CHECK, None)
        else:
            os.environ[NVML_CHECK] = lightning_env
    med = {k: median(v) for k, v in times.items()}
    from lossbench.engine.optim import optimizer_kernel

    result = {"workload": "digits MLP", "lightning": pl.__version__, "median_epoch_s": med,
              "optimizer": f"{type(opt).__name__}, {optimizer_kernel(opt)}",
              "times_s": times, "speedup": paired_ratio(times["lightning"], times["lossbench"]),
              "env": {NVML_CHECK: env_before}}
    if with_env is not None:
        result["with_lightning_env"] = {
            "env": {NVML_CHECK: lightning_env},
            "median_epoch_s": {k: median(v) for k, v in with_env.items()}, "times_s": with_env,
            "speedup": paired_ratio(with_env["lightning"], with_env["lossbench"])}
    return result


# --------------------------------------------------------------------------- 3. start-up

def bench_startup(repeats: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="lossbench-bench-"))
    try:
        lb = lossbench_cmd()
        counter = iter(range(10_000))
        cpu: dict[str, list[float]] = {}

        def measured(name: str, cmd: Callable[[], list[str]]) -> Callable[[], float]:
            def go() -> float:
                wall, _, seconds = timed_process(cmd(), work)
                cpu.setdefault(name, []).append(seconds)
                return wall
            return go

        variants = {
            "python -c pass": measured("python -c pass", lambda: [sys.executable, "-c", "pass"]),
            "lossbench --help": measured("lossbench --help", lambda: [*lb, "--help"]),
            "lossbench train trainer=smoke": measured(
                "lossbench train trainer=smoke",
                lambda: [*lb, "train", "trainer=smoke", f"hydra.run.dir=smoke{next(counter)}"]),
        }
        timed_process([*lb, "train", "trainer=smoke", "hydra.run.dir=warm"], work)  # disk cache
        times = interleaved(variants, repeats)
        return {"command": " ".join(lb), "median_s": {k: median(v) for k, v in times.items()},
                "median_cpu_s": {k: median(v) for k, v in cpu.items()},
                "times_s": times, "cpu_s": cpu}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- 4. sweep

def bench_sweep(repeats: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="lossbench-bench-"))
    try:
        lb = lossbench_cmd()
        sweep = ["train", "-m", "loss=ce,bce,mse,contrastive", "seed=0,1", "trainer=smoke"]
        counter = iter(range(10_000))

        def launch(extra: list[str]) -> Callable[[], float]:
            def go() -> float:
                out = work / f"sweep{next(counter)}"
                wall = timed_process([*lb, *sweep, *extra, f"hydra.sweep.dir={out}"], work)[0]
                done = len(list(out.rglob("metrics.json")))
                if done != 8:
                    raise RuntimeError(f"sweep in {out} finished {done} of 8 jobs")
                return wall
            return go

        variants = {"basic": launch([]),
                    "joblib n_jobs=2": launch(["hydra/launcher=parallel",
                                               "hydra.launcher.n_jobs=2"])}
        times = interleaved(variants, repeats)
        med = {k: median(v) for k, v in times.items()}
        return {"jobs": 8, "command": " ".join([*lb, *sweep]), "median_s": med,
                "jobs_per_s": {k: 8 / v for k, v in med.items()}, "times_s": times,
                "speedup_joblib": paired_ratio(times["basic"], times["joblib n_jobs=2"])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- 5. memory

def bench_memory(repeats: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="lossbench-bench-"))
    try:
        lb = lossbench_cmd()
        result = {}
        for name, args in (("lossbench train", []), ("lossbench train trainer=smoke",
                                                     ["trainer=smoke"])):
            runs = [timed_process([*lb, "train", *args, f"hydra.run.dir=m{i}"], work)
                    for i in range(repeats)]
            result[name] = {"peak_rss_mib": median([r[1] for r in runs]),
                            "wall_s": median([r[0] for r in runs]),
                            "cpu_s": median([r[2] for r in runs])}
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- 6-8. whole runs

HAND_LOOP = str(ROOT / "benchmarks" / "hand_loop.py")
WHOLE_RUN = ["trainer.early_stopping=false", "trainer.plots=false", "print_config=false"]


def run_commands(work: Path) -> dict[str, Callable[[int], list[str]]]:
    """Command lines by epochs: the default `lossbench train` and the hand loop."""
    lb = lossbench_cmd()
    counter = iter(range(100_000))
    return {
        "lossbench": lambda epochs: [*lb, "train", f"trainer.epochs={epochs}", *WHOLE_RUN,
                                     f"hydra.run.dir=r{next(counter)}"],
        "hand": lambda epochs: [sys.executable, HAND_LOOP, f"--epochs={epochs}"],
        # on the one thread `trainer.threads=auto` gives this model: the loops side by side
        "hand 1 thread": lambda epochs: [sys.executable, HAND_LOOP, f"--epochs={epochs}",
                                         "--threads=1"],
    }


def per_epoch(cmds: dict[str, Callable[[int], list[str]]], long: int, short: int, repeats: int,
              work: Path) -> dict[str, Any]:
    """Seconds per epoch of each command: (wall of `long` epochs − wall of `short`) / (long −
    short), so that start-up, data loading and the test cancel out; one per round, the
    commands interleaved; medians."""
    variants = {f"{name} {n}": functools.partial(
        lambda cmd, n: timed_process(cmd(n), work)[0], cmd, n)
        for name, cmd in cmds.items() for n in (long, short)}
    times = interleaved(variants, repeats)
    epoch_s = {name: [(a - b) / (long - short) for a, b in
                      zip(times[f"{name} {long}"], times[f"{name} {short}"])] for name in cmds}
    return {"epochs": [long, short], "per_epoch_s": epoch_s,
            "median_per_epoch_s": {k: median(v) for k, v in epoch_s.items()},
            "times_s": times}


def bench_whole(repeats: int, long: int, short: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="lossbench-bench-"))
    try:
        result = per_epoch(run_commands(work), long, short, repeats, work)
        e = result["per_epoch_s"]
        result["ratio"] = paired_ratio(e["lossbench"], e["hand"])
        result["ratio_same_threads"] = paired_ratio(e["lossbench"], e["hand 1 thread"])
        result["command"] = " ".join(run_commands(work)["lossbench"](long)[:-1])
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_busy(repeats: int, epochs: int) -> dict[str, Any]:
    """Whole runs idle, then beside two busy neighbours (started and stopped here)."""
    work = Path(tempfile.mkdtemp(prefix="lossbench-bench-"))
    cores = len(os.sched_getaffinity(0))
    try:
        cmds = run_commands(work)
        cmds[f"lossbench threads={cores}"] = lambda n, c=cmds["lossbench"]: [
            *c(n), f"trainer.threads={cores}"]
        variants = {name: functools.partial(lambda cmd: timed_process(cmd(epochs), work)[0], cmd)
                    for name, cmd in cmds.items()}
        result: dict[str, Any] = {"epochs": epochs, "neighbours": 2, "cores": cores}
        for state in ("idle", "busy"):
            neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                          for _ in range(2 if state == "busy" else 0)]
            try:
                result[state] = interleaved(variants, repeats)
            finally:
                for proc in neighbours:
                    proc.kill()
                    proc.wait()
        result["median_s"] = {state: {k: median(v) for k, v in result[state].items()}
                              for state in ("idle", "busy")}
        result["slowdown"] = {k: result["median_s"]["busy"][k] / result["median_s"]["idle"][k]
                              for k in cmds}
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_threads(repeats: int, epochs: int, samples: int) -> dict[str, Any]:
    """A CNN on 32×32 images, whole `lossbench train` runs with trainer.threads=auto and with
    every fixed count up to the cores, interleaved. The figure per run is the median of its
    epochs' own times (history.csv's `seconds`, training and validation, the first epoch left
    out as warm-up): start-up does not dilute the differences between thread counts."""
    import csv

    work = Path(tempfile.mkdtemp(prefix="lossbench-bench-"))
    cores = len(os.sched_getaffinity(0))
    try:
        lb = lossbench_cmd()
        counter = iter(range(100_000))
        cnn = ["dataset=fake_images", "model=cnn", f"dataset.n_samples={samples}",
               "trainer.device=cpu", f"trainer.epochs={epochs}", *WHOLE_RUN]

        def run(threads: str) -> float:
            out = work / f"t{next(counter)}"
            timed_process([*lb, "train", *cnn, f"trainer.threads={threads}",
                           f"hydra.run.dir={out}"], work)
            with open(out / "history.csv", newline="") as f:
                return median([float(row["seconds"]) for row in csv.DictReader(f)][1:])

        counts = ["auto", *map(str, range(1, cores + 1))]
        times = interleaved({t: functools.partial(run, t) for t in counts}, repeats)
        med = {k: median(v) for k, v in times.items()}
        best = min(counts[1:], key=lambda t: med[t])
        return {"epochs": epochs, "samples": samples, "median_epoch_s": med, "times_s": times,
                "best_fixed": best, "ratio_auto_to_best": paired_ratio(times["auto"], times[best]),
                "command": " ".join([*lb, "train", *cnn])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- table

def verdict(value: float, target: float, lower_is_better: bool = True) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "ok" if ok else "OVER TARGET"


def print_table(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    for w in results.get("loop", []):
        m = w["median_epoch_s"]
        rows.append((f"loop: {w['workload']} train epoch",
                     f"{m['lossbench'] * 1e3:.2f} ms vs hand {m['hand'] * 1e3:.2f} ms",
                     f"x{w['ratio_train_epoch']:.3f}",
                     f"<= 1.05 {verdict(w['ratio_train_epoch'], 1.05)}"))
        rows.append((f"loop: {w['workload']} train epoch, Adam {w['optimizer']} vs loop",
                     f"{m['lossbench'] * 1e3:.2f} ms vs {m['lossbench, loop Adam'] * 1e3:.2f} ms",
                     f"x{w['fused_speedup']:.2f} faster", "(no target)"))
        rows.append((f"loop: {w['workload']} epoch + validation",
                     f"{m['fit'] * 1e3:.2f} ms vs hand {m['hand+val'] * 1e3:.2f} ms",
                     f"x{w['ratio_with_validation']:.3f}", "(no target)"))
    lt = results.get("lightning")
    if lt is not None:
        if "skipped" in lt:
            rows.append(("lightning", lt["skipped"], "", ""))
        else:
            m = lt["median_epoch_s"]
            rows.append((f"lightning {lt['lightning']}: digits MLP epoch",
                         f"{m['lightning'] * 1e3:.2f} ms vs lossbench {m['lossbench'] * 1e3:.2f} ms",
                         f"lossbench {lt['speedup']:.1f}x faster",
                         f">= 2x {verdict(lt['speedup'], 2.0, False)}"))
            we = lt.get("with_lightning_env")
            if we is not None:
                m = we["median_epoch_s"]
                rows.append((f"lightning, both sides with {NVML_CHECK}=1",
                             f"{m['lightning'] * 1e3:.2f} ms vs lossbench {m['lossbench'] * 1e3:.2f} ms",
                             f"lossbench {we['speedup']:.1f}x faster", "(no target)"))
    st = results.get("startup")
    if st is not None:
        m, c = st["median_s"], st["median_cpu_s"]
        for name, target in (("python -c pass", None), ("lossbench --help", 0.5),
                             ("lossbench train trainer=smoke", 5.0)):
            rows.append((f"startup: {name}", f"{m[name]:.3f} s wall, {c[name]:.3f} s CPU", "",
                         "(scale)" if target is None else
                         f"< {target} s: wall {verdict(m[name], target)}, "
                         f"CPU {verdict(c[name], target)}"))
    sw = results.get("sweep")
    if sw is not None:
        for k, v in sw["median_s"].items():
            rows.append((f"sweep: 8 smoke jobs, {k}", f"{v:.1f} s",
                         f"{sw['jobs_per_s'][k]:.2f} jobs/s", ""))
        rows.append(("sweep: joblib vs basic", "", f"x{sw['speedup_joblib']:.2f} faster", ""))
    mem = results.get("memory")
    if mem is not None:
        for k, v in mem.items():
            rows.append((f"memory: {k}", f"{v['peak_rss_mib']} MiB peak RSS",
                         f"{v['wall_s']:.1f} s wall, {v['cpu_s']:.1f} s CPU", ""))
    wh = results.get("whole")
    if wh is not None:
        m = wh["median_per_epoch_s"]
        rows.append((f"whole: default run per epoch ({wh['epochs'][0]} - {wh['epochs'][1]})",
                     f"{m['lossbench'] * 1e3:.2f} ms vs hand {m['hand'] * 1e3:.2f} ms",
                     f"x{wh['ratio']:.3f}", "(hand loop on torch's default threads)"))
        if "ratio_same_threads" in wh:
            rows.append(("whole: the same, hand loop on one thread as lossbench's auto",
                         f"{m['lossbench'] * 1e3:.2f} ms vs hand "
                         f"{m['hand 1 thread'] * 1e3:.2f} ms", f"x{wh['ratio_same_threads']:.3f}",
                         f"<= 1.10 {verdict(wh['ratio_same_threads'], 1.10)}"))
    bz = results.get("busy")
    if bz is not None:
        for k, v in bz["slowdown"].items():
            rows.append((f"busy: {k}, {bz['epochs']} epochs, 2 neighbours",
                         f"{bz['median_s']['idle'][k]:.2f} s idle, "
                         f"{bz['median_s']['busy'][k]:.2f} s busy", f"x{v:.2f}",
                         f"<= 2 {verdict(v, 2.0)}" if k == "lossbench" else "(beside)"))
    th = results.get("threads_cnn")  # "threads" is the in-process parts' setting
    if th is not None:
        m = th["median_epoch_s"]
        rows.append(("threads: CNN 32x32 epoch, auto vs best fixed",
                     ", ".join(f"{k} {v:.3f} s" for k, v in m.items()),
                     f"x{th['ratio_auto_to_best']:.3f} (best {th['best_fixed']})",
                     f"<= 1.05 {verdict(th['ratio_auto_to_best'], 1.05)}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("measure", "medians", "ratio", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    # ratios: median over interleaved rounds of the per-round ratio
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts among {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for the in-process parts (1: on a shared "
                             "machine more threads measure contention)")
    parser.add_argument("--lightning-path", default=os.environ.get("LIGHTNING_PATH"),
                        help="a directory lightning was installed into (pip install --target)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="in-process timings: this process's CPU time (steadier on a shared "
                             "machine) or wall time")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    torch.set_num_threads(args.threads)
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    q = args.quick
    results: dict[str, Any] = {"machine": machine(), "threads": args.threads,
                               "clock": args.clock,
                               "command": " ".join([Path(sys.executable).name, *sys.argv])}
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
          f"torch {torch.__version__}, {args.threads} intra-op thread(s) and {args.clock} time "
          f"in-process; "
          f"load average {results['machine']['load_average_start']}")
    started = time.perf_counter()
    if "loop" in parts:
        results["loop"] = bench_loop(3 if q else 7)
    if "lightning" in parts:
        results["lightning"] = bench_lightning(2 if q else 5, args.lightning_path)
    if "startup" in parts:
        results["startup"] = bench_startup(3 if q else 7)
    if "sweep" in parts:
        results["sweep"] = bench_sweep(1 if q else 2)
    if "memory" in parts:
        results["memory"] = bench_memory(1 if q else 3)
    if "whole" in parts:
        results["whole"] = bench_whole(1, 60, 20) if q else bench_whole(5, 120, 40)
    if "busy" in parts:
        results["busy"] = bench_busy(1 if q else 3, 60 if q else 120)
    if "threads" in parts:
        results["threads_cnn"] = bench_threads(1, 4, 512) if q else bench_threads(3, 6, 1024)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["seconds"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the table: kept if it fails
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print()
    print_table(results)
    print(f"\nwrote {args.out}; rerun: python benchmarks/run.py --only {','.join(parts)}"
          + (" --quick" if q else "") + (f" --threads {args.threads}" if args.threads != 1 else "")
          + (" --lightning-path DIR" if args.lightning_path else ""))


if __name__ == "__main__":
    main()
