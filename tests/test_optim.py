"""The optimizer is built on torch's fused kernel where it has one, and only there."""

from __future__ import annotations

import functools

import pytest
import torch

from lossbench.errors import UserError
from lossbench.engine.optim import build_optimizer, can_fuse, fused_devices, optimizer_kernel
from conftest import run_dirs

CPU_FUSED = "cpu" in fused_devices()


def _params():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
def test_null_fused_becomes_the_fused_kernel_on_cpu(cls):
    model = _params()
    opt = build_optimizer(functools.partial(cls, lr=0.01, fused=None), cls.__name__,
                          list(model.parameters()))
    assert optimizer_kernel(opt) == ("fused" if CPU_FUSED else "per-parameter loop")


def test_explicit_choices_are_kept():
    model = _params()
    loop = build_optimizer(functools.partial(torch.optim.Adam, lr=0.01, fused=False), "Adam",
                           list(model.parameters()))
    assert optimizer_kernel(loop) == "per-parameter loop"
    foreach = build_optimizer(functools.partial(torch.optim.Adam, lr=0.01, fused=None,
                                                foreach=True), "Adam", list(model.parameters()))
    assert optimizer_kernel(foreach) == "foreach"
    # a class without `fused` (RMSprop) and a config without the key are left alone
    rms = build_optimizer(functools.partial(torch.optim.RMSprop, lr=0.01), "RMSprop",
                          list(model.parameters()))
    assert optimizer_kernel(rms) == "per-parameter loop"
    assert not can_fuse(torch.optim.RMSprop, model.parameters())


def test_can_fuse_needs_floating_parameters_on_a_fused_device():
    assert not can_fuse(torch.optim.Adam, [])
    assert not can_fuse(torch.optim.Adam, [torch.zeros(3, dtype=torch.int64)])
    assert can_fuse(torch.optim.Adam, [torch.zeros(3)]) == CPU_FUSED
    assert not can_fuse(lambda params, lr: None, [torch.zeros(3)])  # takes no `fused`


@pytest.mark.skipif(not CPU_FUSED, reason="this torch has no fused CPU kernels")
@pytest.mark.parametrize("cls,kwargs", [(torch.optim.Adam, {"weight_decay": 0.01}),
                                        (torch.optim.AdamW, {}),
                                        (torch.optim.SGD, {"momentum": 0.9, "nesterov": True})])
def test_fused_steps_match_the_loop(cls, kwargs):
    """Twenty steps on the same batches: the fused kernel and the per-parameter loop agree to
    float32 rounding, so the choice changes speed, not results."""
    models = {k: _params() for k in (True, False)}
    opts = {k: cls(m.parameters(), lr=0.01, fused=k, **kwargs) for k, m in models.items()}
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
        for k, m in models.items():
            opts[k].zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opts[k].step()
    for a, b in zip(models[True].parameters(), models[False].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(models[True][0].weight, _params()[0].weight)  # it did train


def test_fused_with_foreach_is_a_user_error():
    model = _params()
    with pytest.raises(UserError, match=r"optimizer \(Adam\).*fused"):
        build_optimizer(functools.partial(torch.optim.Adam, lr=0.01, fused=True, foreach=True),
                        "Adam", list(model.parameters()))


def test_cli_run_logs_its_optimizer_kernel(cli, tmp_path):
    proc = cli("train", "trainer=smoke", "trainer.plots=false", check=True)
    (run,) = run_dirs(tmp_path)
    log = (run / "train.log").read_text()
    assert f"optimizer Adam, {'fused' if CPU_FUSED else 'per-parameter loop'}" in log, proc.stdout
    proc = cli("train", "trainer=smoke", "trainer.plots=false", "optimizer=sgd",
               "optimizer.fused=false", "hydra.run.dir=loop", check=True)
    assert "optimizer SGD, per-parameter loop" in (tmp_path / "loop" / "train.log").read_text()


def test_cli_fused_and_foreach_together_is_one_line_and_exit_2(cli, tmp_path):
    proc = cli("train", "trainer=smoke", "optimizer.fused=true", "+optimizer.foreach=true")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "optimizer (torch.optim.Adam)" in proc.stderr and "fused" in proc.stderr
    assert run_dirs(tmp_path) == []
