"""trainer.threads: what `auto` decides (not how fast it is; see benchmarks/run.py), the work it
counts against torch's own FLOP counter, and a count set from the command line."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from lossbench.engine import threads
from lossbench.models import CNN, MLP
from lossbench.engine.threads import SMALL_STEP_FLOPS, auto_threads, step_flops


@pytest.mark.parametrize("model, shape", [
    (MLP([64], 10, hidden=[128, 64]), (64,)),
    (CNN([3, 32, 32], 10), (3, 32, 32)),
    (CNN([1, 28, 28], 10), (1, 28, 28)),
    (nn.Sequential(nn.Conv1d(2, 8, 5, groups=2), nn.Flatten(), nn.Linear(8 * 12, 3)), (2, 16)),
], ids=["mlp", "cnn32", "cnn28", "grouped-conv1d"])
def test_step_flops_match_torch_flop_counter(model, shape):
    """Linear and convolution layers carry the work: the count equals torch's own FLOP counter
    (which counts matrix products and convolutions) on a whole batch."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = 16
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(batch, *shape))
    assert step_flops(model, shape, batch) == counter.get_total_flops()
    assert model.training is False  # the mode it had is given back
    model.train()
    step_flops(model, shape, batch)
    assert model.training is True


def test_auto_picks_one_thread_for_small_steps_and_every_thread_for_large_ones():
    assert auto_threads(int(SMALL_STEP_FLOPS) - 1, 8)[0] == 1
    assert auto_threads(int(SMALL_STEP_FLOPS), 8)[0] == 8
    assert auto_threads(10**12, 3)[0] == 3  # never more than the process was given
    assert auto_threads(10**3, 8, "cuda")[0] == 8  # on a GPU the CPU threads are left alone
    why = auto_threads(10**6, 4)[1]
    assert "auto" in why and "1e+06" in why and "4 available" in why


@pytest.mark.parametrize("overrides, small", [
    ((), True),  # the default run: digits MLP, batch 128
    (("dataset=fake_images", "model=cnn"), False),  # a CNN on 32x32 images
    (("dataset=fake_images", "model=cnn", "trainer.batch_size=4"), True),
])
def test_auto_on_the_shipped_configs(compose_cfg, overrides, small):
    from lossbench.experiment.run import load_data

    cfg = compose_cfg(*overrides)
    splits = load_data(cfg)
    model = instantiate(cfg.model, input_shape=list(splits.sample_shape),
                        num_outputs=splits.num_classes)
    flops = step_flops(model, splits.sample_shape, cfg.trainer.batch_size)
    assert (flops < SMALL_STEP_FLOPS) == small
    assert auto_threads(flops, 6)[0] == (1 if small else 6)


def test_threads_given_to_the_process_are_read_once(monkeypatch):
    """Jobs of a sweep run one after another in one process: a small model's job sets one
    thread, and the next job, a large model, still gets every thread the process was given."""
    monkeypatch.setattr(threads, "_given", None)
    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    monkeypatch.setattr(torch, "get_num_threads", lambda: calls[-1] if calls else 6)
    calls: list[int] = []
    cpu = torch.device("cpu")
    threads.set_threads("auto", MLP([64], 10, hidden=[8]), (64,), 32, cpu)
    threads.set_threads("auto", CNN([3, 32, 32], 10), (3, 32, 32), 128, cpu)
    threads.set_threads(2, MLP([64], 10, hidden=[8]), (64,), 32, cpu)
    assert calls == [1, 6, 2]
    assert before >= 1


def test_a_count_from_the_command_line_is_used(cli, tmp_path):
    proc = cli("train", "trainer=smoke", "trainer.threads=2", "trainer.plots=false",
               "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert "torch threads 2," in log and "torch threads: trainer.threads=2" in log


def test_auto_is_logged_with_its_reason(cli, tmp_path):
    proc = cli("train", "trainer=smoke", "trainer.plots=false", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert "torch threads 1," in log  # digits' MLP is a small model
    assert re.search(r"torch threads: auto: [\d.e+]+ forward FLOPs per training batch, under "
                     r"1e\+08: one thread", log)


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5", "true"])
def test_a_bad_thread_count_is_a_user_error(cli, tmp_path, value):
    proc = cli("train", "trainer=smoke", f"trainer.threads={value}")
    assert proc.returncode == 2
    assert proc.stderr.strip().lower().splitlines() == [  # YAML's true prints as True
        f"lossbench: error: trainer.threads={value} must be auto or a count of at least 1"]
    assert not (tmp_path / "outputs").exists()


def test_counting_leaves_a_lazy_model_trainable():
    """A model of one's own may build its layers on the first forward pass (nn.LazyLinear):
    the counting pass builds them as ordinary trainable weights."""
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 3))
    assert step_flops(model, (8,), 32) == 2 * (8 * 16 + 16 * 3) * 32
    loss = model(torch.randn(4, 8)).sum()
    loss.backward()
    assert model[0].weight.grad is not None
