"""Mixed precision (trainer.precision), torch.compile (trainer.compile) and device choice, on CPU.

CUDA-only paths (fp16 on a GPU, nccl, pinned memory) cannot run here; what can be checked on
CPU is: bf16 and fp16 autocast train and report, the gradient scaler skips overflowing steps,
a compiled model trains and is saved without its wrapper, and wrong settings are user errors.
"""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import read_metrics
from lossbench.errors import UserError
from lossbench.models import MLP
from lossbench.experiment.run import run
from lossbench.engine.loop import train_epoch
from lossbench.engine.precision import autocast, autocast_dtype, unwrap


def test_precision_names_map_to_autocast_dtypes():
    assert autocast_dtype(32) is None and autocast_dtype("32") is None
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("bf16-mixed") is torch.bfloat16
    assert autocast_dtype(16) is torch.float16
    with pytest.raises(UserError, match="trainer.precision=8 must be 32, bf16 or 16"):
        autocast_dtype(8)


def test_autocast_runs_the_forward_in_the_chosen_dtype():
    model, x = MLP([64], 10), torch.randn(4, 64)
    cpu = torch.device("cpu")
    with autocast(cpu, torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
    with autocast(cpu, None):
        assert model(x).dtype == torch.float32


def _history(cfg) -> list[dict[str, str]]:
    return list(csv.DictReader(open(f"{cfg.run_dir}/history.csv")))


def test_bf16_on_cpu_trains_and_reports_close_to_fp32(compose_cfg, tmp_path):
    common = ("trainer.device=cpu", "trainer.epochs=8", "trainer.early_stopping=false",
              "print_config=false", "trainer.plots=false")
    full = compose_cfg(*common)
    run(full)
    half = compose_cfg(*common, "trainer.precision=bf16")
    half.run_dir = str(tmp_path / "bf16")
    run(half)
    f32, b16 = read_metrics(full.run_dir), read_metrics(half.run_dir)
    assert b16["status"] == "completed"
    assert b16["test"]["accuracy"] > 0.85
    assert abs(b16["test"]["accuracy"] - f32["test"]["accuracy"]) < 0.05
    # bf16 rounds activations: the losses differ from fp32's (so autocast was really on)
    assert [r["val_loss"] for r in _history(full)] != [r["val_loss"] for r in _history(half)]


def test_fp16_gradient_scaler_skips_overflowing_steps():
    torch.manual_seed(0)
    model = MLP([64], 10)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # a scale of 2**40 makes fp16 gradients overflow: the step must be skipped, scale halved
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    cpu = torch.device("cpu")
    sums = train_epoch(model, torch.nn.CrossEntropyLoss(), optimizer, iter([(x, y)]),
                       amp=lambda: autocast(cpu, torch.float16), scaler=scaler)
    assert scaler.get_scale() == 2.0 ** 39
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert sums[1].item() == 32 and torch.isfinite(sums[0])
    # with a sane scale the same step changes the weights
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    train_epoch(model, torch.nn.CrossEntropyLoss(), optimizer, iter([(x, y)]),
                amp=lambda: autocast(cpu, torch.float16), scaler=scaler)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fp16_run_through_the_cli_completes(cli, tmp_path):
    cli("train", "trainer=smoke", "trainer.device=cpu", "trainer.precision=16",
        "hydra.run.dir=run", check=True)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["split_sizes"]["test"] > 0


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_weights(compose_cfg):
    # torch.compile on CPU builds C++ kernels: about 20 s here, hence slow
    cfg = compose_cfg("trainer=smoke", "trainer.device=cpu", "trainer.compile=true",
                      "print_config=false", "trainer.plots=false")
    run(cfg)
    assert read_metrics(cfg.run_dir)["status"] == "completed"
    state = torch.load(f"{cfg.run_dir}/model.pt", weights_only=True)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state)
    MLP([1, 8, 8], 10, hidden=list(cfg.model.hidden)).load_state_dict(state)


def test_unwrap_finds_the_module_inside_wrappers():
    model = MLP([4], 2)
    assert unwrap(model) is model
    assert unwrap(torch.compile(model)) is model  # compiling is lazy: no kernels built here


def test_wrong_precision_and_missing_cuda_are_one_line_errors(cli):
    proc = cli("train", "trainer=smoke", "trainer.precision=8")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "lossbench: error: trainer.precision=8 must be 32, bf16 or 16")
    if not torch.cuda.is_available():
        proc = cli("train", "trainer=smoke", "trainer.device=cuda:1")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "trainer.device=cuda:1 but CUDA is not available" in proc.stderr


def test_unwrap_keeps_a_model_whose_own_submodule_is_called_module():
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = torch.nn.Linear(2, 2)

    holder = Holder()
    assert unwrap(holder) is holder
    assert unwrap(torch.compile(holder)) is holder
