"""The CUDA paths: the decisions lossbench takes for a GPU, and whole runs on one.

Two kinds of tests:
- the decisions (nccl or gloo, which GPU a rank takes, pinned memory and DataLoader workers,
  which device `auto` picks, the fused optimizer, the RNG states a checkpoint keeps) run on any
  machine: the torch.cuda functions lossbench asks are replaced by ones that answer as a GPU
  machine would, and no CUDA tensor is ever made;
- whole runs through the CLI (fp16 with its gradient scaler, bf16, torch.compile, deterministic
  algorithms, two GPUs over nccl, images through a DataLoader, resume) need a GPU and are
  skipped without one.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import read_metrics, run_dirs
from lossbench.engine import distributed
from lossbench.errors import UserError
from lossbench.engine.predict import loader_options
from lossbench.engine.optim import build_optimizer, can_fuse, fused_devices, optimizer_kernel
from lossbench.experiment.run import pick_device, seed_everything
from lossbench.engine.precision import autocast, autocast_dtype, training_model
from test_resume import RUN, assert_same_result, interrupt_at, run_in

CUDA = torch.device("cuda")
CPU = torch.device("cpu")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2,
                                    reason="needs two CUDA GPUs (nccl, one per process)")


@pytest.fixture
def gpus(monkeypatch):
    """gpus(n): torch.cuda answers as on a machine with n GPUs (0: no CUDA at all)."""

    def machine_with(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return machine_with


# --- process groups: backend and the GPU each rank takes

def test_backend_is_nccl_for_cuda_and_gloo_for_cpu():
    assert distributed.backend_for(CUDA) == "nccl"
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"
    assert distributed.backend_for(CPU) == "gloo"


def test_each_rank_takes_the_gpu_of_its_local_rank(gpus):
    gpus(4)
    assert [distributed.rank_device(CUDA, r, 4) for r in range(4)] == [
        torch.device("cuda", r) for r in range(4)]
    # cuda:0 means "start at the first GPU" and is accepted like cuda
    assert distributed.rank_device(torch.device("cuda", 0), 3, 4) == torch.device("cuda", 3)
    # one process keeps the device it was given, index and all
    assert distributed.rank_device(torch.device("cuda", 2), 0, 1) == torch.device("cuda", 2)
    assert distributed.rank_device(CPU, 1, 2) == CPU  # CPU ranks share the CPU


def test_several_processes_refuse_a_fixed_gpu_too_few_gpus_and_mps(gpus):
    gpus(2)
    with pytest.raises(UserError, match=r"^trainer.device=cuda:1 with several processes: each "
                                        r"process takes its own GPU .*use trainer.device=cuda$"):
        distributed.rank_device(torch.device("cuda", 1), 0, 2)
    with pytest.raises(UserError, match=r"^3 processes per machine need 3 GPUs; 2 found$"):
        distributed.rank_device(CUDA, 2, 3)
    with pytest.raises(UserError, match=r"^several processes run on cpu \(gloo\) or cuda "
                                        r"\(nccl\), not mps$"):
        distributed.rank_device(torch.device("mps"), 0, 2)


@pytest.mark.parametrize("overrides,message", [
    (("trainer.devices=3",), "3 processes per machine need 3 GPUs; 2 found"),
    (("trainer.devices=2", "trainer.device=cuda:1"), "trainer.device=cuda:1 with several"),
])
def test_devices_beyond_the_gpus_stop_before_any_process_or_file(gpus, compose_cfg, overrides,
                                                                 message):
    from lossbench.experiment.run import run

    gpus(2)
    cfg = compose_cfg("trainer=smoke", "trainer.device=cuda", *overrides)
    with pytest.raises(UserError, match=message):
        run(cfg)
    assert not Path(cfg.run_dir).exists()


@pytest.mark.parametrize("device,threads", [(torch.device("cuda"), None), (CPU, 4)])
def test_a_rank_joins_its_group_on_its_own_gpu(monkeypatch, gpus, device, threads):
    """A CUDA rank makes its GPU the current device (nccl and broadcast_object_list use it) and
    joins with nccl; a CPU rank joins with gloo and takes its share of the cores."""
    gpus(2)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: calls.append(("init", backend, kw["rank"],
                                                            kw["world_size"])))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    for key, value in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1",
                           LOCAL_WORLD_SIZE="2").items():
        monkeypatch.setenv(key, value)
    assert distributed.init_from_env(device) == distributed.Dist(1, 2, 1)
    if device.type == "cuda":
        assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl", 1, 2)]
    else:
        assert calls == [("threads", threads), ("init", "gloo", 1, 2)]


def test_ddp_is_told_the_rank_gpu_and_nothing_on_cpu(monkeypatch):
    seen = []

    class FakeDDP(torch.nn.Module):
        def __init__(self, module, device_ids=None):
            super().__init__()
            seen.append(device_ids)

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(1, 2, 1))
    training_model(torch.nn.Linear(2, 2), torch.device("cuda", 1))
    training_model(torch.nn.Linear(2, 2), CPU)
    assert seen == [[1], None]


# --- data loading: pinned memory and worker processes on a GPU only

@pytest.mark.parametrize("device,workers,cores,world,expected", [
    (CPU, "auto", 16, 1, (0, False)),  # the cores train: read in the main process
    (CPU, 2, 16, 1, (2, False)),  # asked for: kept, but no pinned memory without a GPU
    (CUDA, "auto", 16, 1, (4, True)),  # at most 4 workers
    (CUDA, "auto", 4, 1, (3, True)),  # one core left to the training process
    (CUDA, "auto", 16, 8, (1, True)),  # 2 cores per rank: 1 worker each
    (CUDA, "auto", 4, 8, (0, True)),  # fewer cores than ranks: no workers at all
    (CUDA, "auto", None, 1, (0, True)),  # core count unknown
    (CUDA, 0, 16, 1, (0, True)),  # asked for none
    (torch.device("cuda", 1), "auto", 16, 2, (4, True)),
])
def test_loader_options_pin_memory_and_share_cores_on_cuda(monkeypatch, device, workers, cores,
                                                           world, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(0, world, 0))
    options = loader_options(device, workers)
    assert (options["num_workers"], options["pin_memory"]) == expected
    if workers == "auto" and options["num_workers"]:  # workers leave the rank one core
        assert options["num_workers"] < (cores or 1) // world


# --- which device `auto` picks

def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, gpus):
    gpus(1)
    assert pick_device("auto") == CUDA
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    gpus(0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == CPU
    with pytest.raises(UserError, match=r"^trainer.device=mps but MPS is not available here; "
                                        r"use trainer.device=auto or cpu$"):
        pick_device("mps")


def test_a_gpu_index_beyond_the_gpus_present_is_a_user_error(gpus):
    gpus(1)
    with pytest.raises(UserError, match=r"^trainer.device=cuda:1 but this machine has 1 CUDA GPU "
                                        r"\(cuda:0\)$"):
        pick_device("cuda:1")
    gpus(2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"has 2 CUDA GPUs \(cuda:0 to cuda:1\)$"):
        pick_device("cuda:2")


# --- mixed precision and the fused optimizer on a GPU

def test_precision_16_mixed_and_autocast_on_an_indexed_gpu(monkeypatch):
    assert autocast_dtype("16-mixed") is torch.float16
    assert autocast_dtype("16") is torch.float16
    # torch.autocast takes a device type, not a device: cuda:1 must arrive as "cuda"
    monkeypatch.setattr(torch, "autocast", lambda **kwargs: kwargs)
    assert autocast(torch.device("cuda", 1), torch.float16) == {"device_type": "cuda",
                                                                "dtype": torch.float16}


def test_torch_has_fused_kernels_for_cuda():
    assert "cuda" in fused_devices()  # else every GPU run would silently take the slow loop


def test_fusing_follows_the_device_list(monkeypatch):
    params = list(torch.nn.Linear(3, 2).parameters())  # CPU parameters
    monkeypatch.setattr("lossbench.engine.optim.fused_devices", lambda: ("cuda",))
    assert not can_fuse(torch.optim.Adam, params)
    factory = functools.partial(torch.optim.Adam, lr=0.01, fused=None)
    assert optimizer_kernel(build_optimizer(factory, "Adam", params)) == "per-parameter loop"
    monkeypatch.setattr("lossbench.engine.optim.fused_devices", lambda: ("cuda", "cpu"))
    assert can_fuse(torch.optim.Adam, params)
    assert not can_fuse(torch.optim.Adam, [*params, torch.zeros(2, device="meta")])


# --- reproducibility on a GPU: deterministic algorithms and the CUDA generators in a checkpoint

@pytest.mark.parametrize("preset,expected", [(None, ":4096:8"), (":16:8", ":16:8")])
def test_deterministic_sets_up_cublas_and_cudnn(monkeypatch, preset, expected):
    if preset is None:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    else:  # the user's own setting is kept
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", preset)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == expected
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("initialized", [True, False])
def test_checkpoint_keeps_the_cuda_generators_once_cuda_is_in_use(monkeypatch, gpus,
                                                                  initialized):
    from lossbench.engine.checkpoint import capture_rng, restore_rng

    gpus(2)
    states = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    generator = torch.Generator().manual_seed(0)
    state = capture_rng(generator)
    assert ("cuda" in state) is initialized  # no CUDA context made only to read a state
    restore_rng(state, generator)
    assert restored == ([states] if initialized else [])


def test_augmented_images_read_by_workers_resume_exactly(compose_cfg, tmp_path, monkeypatch):
    """On a GPU, `num_workers=auto` reads augmented images in worker processes; the same
    workers are asked for here on the CPU so that the resume path they take runs anywhere."""
    from lossbench.errors import Interrupted

    overrides = ("dataset=fake_images", "dataset.n_samples=192", "model=cnn",
                 "dataset.augment.crop_padding=2", "dataset.augment.hflip=true",
                 "trainer.batch_size=32", "trainer.epochs=3", "trainer.early_stopping=false",
                 "trainer.device=cpu", "trainer.num_workers=2", "print_config=false",
                 "trainer.plots=false")
    run_in(compose_cfg, tmp_path / "whole", *overrides)
    interrupt_at(monkeypatch, 2, 2)
    with pytest.raises(Interrupted):
        run_in(compose_cfg, tmp_path / "stopped", *overrides)
    monkeypatch.undo()
    run_in(compose_cfg, tmp_path / "ignored", f"resume={tmp_path / 'stopped'}")
    assert_same_result(tmp_path / "stopped", tmp_path / "whole")


# --- whole runs on a GPU, through the CLI

def history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def completed_on_cuda(run_dir: Path) -> dict:
    """metrics.json of a run that completed on a GPU with finite losses throughout."""
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed"
    assert "device cuda" in (run_dir / "train.log").read_text()
    rows = history(run_dir)
    assert rows and all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
                        for r in rows)
    assert math.isfinite(metrics["test"]["loss"])
    return metrics


QUIET = ("print_config=false", "trainer.plots=false")


@needs_cuda
@pytest.mark.parametrize("precision", [
    "16",  # autocast to float16 and the gradient scaler
    pytest.param("bf16", marks=pytest.mark.skipif(
        not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        reason="this GPU has no bfloat16")),
])
def test_mixed_precision_on_cuda_trains_with_finite_losses(cli, tmp_path, precision):
    common = ("train", "trainer=smoke", "trainer.device=cuda", *QUIET)
    cli(*common, "hydra.run.dir=full", check=True)
    cli(*common, f"trainer.precision={precision}", "hydra.run.dir=mixed", check=True)
    completed_on_cuda(tmp_path / "full")
    completed_on_cuda(tmp_path / "mixed")
    log = (tmp_path / "mixed" / "train.log").read_text()
    assert "optimizer Adam, fused" in log  # the fused CUDA kernel, under the scaler for fp16
    # the half-precision forward rounds: its losses are not fp32's (autocast was on)
    assert ([r["val_loss"] for r in history(tmp_path / "full")]
            != [r["val_loss"] for r in history(tmp_path / "mixed")])


@needs_cuda
@pytest.mark.slow
def test_compiled_model_on_cuda_trains_and_saves_plain_weights(cli, tmp_path):
    cli("train", "trainer=smoke", "trainer.device=cuda", "trainer.compile=true", *QUIET,
        "hydra.run.dir=run", check=True, timeout=600)
    completed_on_cuda(tmp_path / "run")
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert state and not any(k.startswith(("_orig_mod.", "module.")) for k in state)


@needs_cuda
def test_deterministic_runs_on_cuda_are_identical(cli, tmp_path):
    # convolutions (cuDNN picks among nondeterministic algorithms) and dropout (CUDA generator)
    common = ("train", "trainer=smoke", "model=cnn", "model.dropout=0.2", "trainer.device=cuda",
              "trainer.deterministic=true", *QUIET)
    cli(*common, "hydra.run.dir=a", check=True)
    cli(*common, "hydra.run.dir=b", check=True)
    a, b = (completed_on_cuda(tmp_path / d) for d in ("a", "b"))
    assert_same_result(tmp_path / "a", tmp_path / "b")
    del a["wall_time_s"], b["wall_time_s"]
    assert a == b


def class_supports(metrics: dict) -> dict[int, int]:
    """Samples per class index in a run's test classification report."""
    report = metrics["test"]["classification_report"]
    support = {int(k): v["support"] for k, v in report.items() if k.isdigit()}
    if not support:  # classes reported by name
        names = metrics["test"]["class_names"]
        support = {names.index(k): v["support"] for k, v in report.items() if k in names}
    return support


@needs_two_gpus
def test_two_gpus_over_nccl_report_every_test_sample_once(cli, tmp_path, compose_cfg):
    from lossbench.experiment.run import load_data

    common = ("train", "trainer.device=cuda", "trainer.epochs=15", "trainer.early_stopping=false",
              *QUIET)
    cli(*common, "hydra.run.dir=one", check=True)
    two = cli(*common, "trainer.devices=2", "hydra.run.dir=two", check=True)
    assert run_dirs(tmp_path) == [tmp_path / "one", tmp_path / "two"]
    assert two.stdout.count("run directory:") == 1  # rank 0 alone prints
    assert "device cuda:0" in (tmp_path / "two" / "train.log").read_text()
    single, multi = completed_on_cuda(tmp_path / "one"), completed_on_cuda(tmp_path / "two")
    labels = Counter(load_data(compose_cfg()).test.y.tolist())
    assert class_supports(multi) == dict(labels)
    assert sum(map(sum, multi["test"]["confusion_matrix"])) == sum(labels.values())
    assert multi["split_sizes"]["test"] == sum(labels.values())
    assert single["test"]["accuracy"] > 0.9
    assert abs(multi["test"]["accuracy"] - single["test"]["accuracy"]) < 0.05


@needs_cuda
def test_augmented_images_through_pinned_loader_workers_on_cuda(cli, tmp_path):
    cli("train", "dataset=fake_images", "model=cnn", "trainer=smoke", "trainer.device=cuda",
        "dataset.augment.crop_padding=2", "dataset.augment.hflip=true", *QUIET,
        "hydra.run.dir=run", check=True)
    metrics = completed_on_cuda(tmp_path / "run")
    assert metrics["data"]["augment"] == {"crop_padding": 2, "hflip": True}  # the loader path
    assert metrics["split_sizes"]["test"] == 64


@needs_cuda
@pytest.mark.parametrize("precision", ["32", "16"])
def test_interrupted_run_on_cuda_resumes_to_identical_result(compose_cfg, tmp_path, monkeypatch,
                                                            precision):
    """As tests/test_resume.py on the CPU: dropout draws from the CUDA generator, the data order
    from a generator on the GPU, Adam steps on the fused CUDA kernel, fp16 adds the scaler."""
    from lossbench.errors import Interrupted

    overrides = (*(o for o in RUN if not o.startswith("trainer.device=")), "trainer.device=cuda",
                 f"trainer.precision={precision}", "trainer.epochs=4")
    run_in(compose_cfg, tmp_path / "whole", *overrides)
    interrupt_at(monkeypatch, 2, 5)
    with pytest.raises(Interrupted):
        run_in(compose_cfg, tmp_path / "stopped", *overrides)
    monkeypatch.undo()
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert "cuda" in state["loop"]["rng"]
    assert (state["loop"]["scaler"] is not None) == (precision == "16")
    run_in(compose_cfg, tmp_path / "ignored", f"resume={tmp_path / 'stopped'}")
    assert_same_result(tmp_path / "stopped", tmp_path / "whole")
