"""The state a checkpoint keeps of the training loop: `lossbench.engine.loop_state`."""
from __future__ import annotations

import math
import random

import numpy as np
import torch

from lossbench.engine.checkpoint import capture_rng, restore_rng
from lossbench.engine.loop_state import EpochSoFar, LoopState

# The `loop` entry of checkpoint.pt: the keys a resumed run and older checkpoints rely on.
CHECKPOINT_KEYS = {"epoch", "batch", "epoch_rng", "rng", "losses", "sizes", "term_sums",
                   "history", "best_epoch", "best_value", "best_tie", "best_state", "waited",
                   "best_loss_state", "scaler"}


def mid_epoch_state(generator: torch.Generator) -> LoopState:
    epoch_rng = capture_rng(generator)
    torch.rand(5, generator=generator), torch.rand(3), random.random(), np.random.rand()
    return LoopState(
        epoch=3, history=[{"epoch": 1, "train_loss": 0.9, "steps": 17},
                          {"epoch": 2, "train_loss": 0.7, "steps": 34}],
        stopping={"best_epoch": 2, "best_value": 0.81, "best_tie": 0.44, "waited": 0},
        best_state={"w": torch.randn(4, 3)}, best_loss_state={"log_vars": torch.zeros(2)},
        scaler={"scale": 1024.0, "_growth_tracker": 3}, batch=2, epoch_rng=epoch_rng,
        rng=capture_rng(generator),
        so_far=EpochSoFar([torch.tensor(0.5), torch.tensor(0.25)], [64, 64],
                          {"ce": torch.tensor(40.0), "contrastive": torch.tensor(8.0)}))


def saved_and_loaded(loop: dict, tmp_path) -> dict:
    torch.save({"loop": loop}, tmp_path / "checkpoint.pt")
    return torch.load(tmp_path / "checkpoint.pt", weights_only=True)["loop"]


def assert_same(a, b) -> None:
    """Equal plain data, tensors element for element (and of the same dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def test_the_checkpoint_entry_has_the_keys_of_the_format():
    state = mid_epoch_state(torch.Generator().manual_seed(0))
    assert set(state.to_checkpoint()) == CHECKPOINT_KEYS


def test_a_mid_epoch_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    state = mid_epoch_state(torch.Generator().manual_seed(0))
    loop = state.to_checkpoint()
    loaded = LoopState.from_checkpoint(saved_and_loaded(loop, tmp_path), torch.device("cpu"))
    assert_same(loaded.to_checkpoint(), loop)
    assert (loaded.epoch, loaded.batch, len(loaded.so_far), loaded.steps_run) == (3, 2, 2, 34)
    assert [float(x) for x in loaded.so_far.losses] == [0.5, 0.25]
    assert loaded.so_far.sizes == [64, 64] and loaded.stopping == state.stopping


def test_the_restored_rng_draws_what_the_stopped_run_would_have(tmp_path):
    g = torch.Generator().manual_seed(7)
    state = mid_epoch_state(g)
    # what the run would have drawn next, had it gone on
    want = (torch.rand(4, generator=g), torch.rand(2), random.random(), np.random.rand())
    loaded = LoopState.from_checkpoint(saved_and_loaded(state.to_checkpoint(), tmp_path),
                                       torch.device("cpu"))
    other = torch.Generator().manual_seed(123)
    torch.rand(10), random.random(), np.random.rand()  # the new process drew other numbers
    restore_rng(loaded.rng, other)
    got = (torch.rand(4, generator=other), torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[2:] == want[2:]
    restore_rng(loaded.epoch_rng, other)  # the epoch's start: its data order again
    first = torch.Generator().manual_seed(7)
    assert torch.equal(torch.rand(5, generator=other), torch.rand(5, generator=first))


def test_an_end_of_epoch_state_holds_no_batches(tmp_path):
    g = torch.Generator().manual_seed(0)
    rng = capture_rng(g)
    state = LoopState(epoch=5, history=[{"epoch": 4, "steps": 8}],
                      stopping={"best_epoch": 4, "best_value": 1.0, "best_tie": math.nan,
                                "waited": 0},
                      best_state={}, best_loss_state={}, epoch_rng=rng, rng=rng)
    loop = state.to_checkpoint()
    assert loop["batch"] == 0 and loop["losses"].numel() == 0 and loop["sizes"] == []
    loaded = LoopState.from_checkpoint(saved_and_loaded(loop, tmp_path), torch.device("cpu"))
    assert len(loaded.so_far) == 0 and loaded.so_far.term_sums == {}
    assert_same(loaded.to_checkpoint(), loop)


def test_the_history_is_copied_not_shared():
    state = mid_epoch_state(torch.Generator().manual_seed(0))
    loop = state.to_checkpoint()
    state.history.append({"epoch": 3})
    assert len(loop["history"]) == 2


def test_an_older_checkpoint_without_tie_loss_weights_or_scaler_still_loads():
    loop = mid_epoch_state(torch.Generator().manual_seed(0)).to_checkpoint()
    for key in ("best_tie", "best_loss_state", "scaler"):
        del loop[key]
    state = LoopState.from_checkpoint(loop, torch.device("cpu"))
    assert math.isnan(state.stopping["best_tie"])
    assert state.best_loss_state is None and state.scaler is None


def test_checkpoints_are_written_when_due_and_the_last_good_epoch_on_divergence():
    from lossbench.engine.loop import Settings
    from lossbench.engine.loop_state import Checkpoints

    written = []
    checkpoints = Checkpoints(lambda loop, states=None: written.append((loop["epoch"], states)),
                              Settings(checkpoint_interval_s=0, checkpoint_every=2))
    g = torch.Generator().manual_seed(0)

    def at(epoch):
        return lambda: LoopState(epoch=epoch, epoch_rng=capture_rng(g), rng=capture_rng(g))

    checkpoints.epoch_end(1, at(2), lambda: {"model": 1}, stopping=False)  # kept, not written
    assert written == [] and checkpoints.good[0]["epoch"] == 2
    checkpoints.epoch_end(2, at(3), lambda: {"model": 2}, stopping=False)  # every 2nd: due
    assert written == [(3, None)] and checkpoints.good is None
    checkpoints.diverged()  # the state after epoch 2 is on disk already: nothing more
    assert written == [(3, None)]
    checkpoints.epoch_end(3, at(4), lambda: {"model": 3}, stopping=False)
    checkpoints.diverged()  # epoch 4 diverged: the end of epoch 3 with its weights
    assert written == [(3, None), (4, {"model": 3})]
    checkpoints.epoch_end(4, at(5), lambda: {"model": 4}, stopping=True)  # Ctrl-C: now
    assert written[-1] == (5, None)


def test_without_a_writer_nothing_is_kept():
    from lossbench.engine.loop import Settings
    from lossbench.engine.loop_state import Checkpoints

    checkpoints = Checkpoints(None, Settings())
    checkpoints.epoch_end(1, lambda: 1 / 0, lambda: 1 / 0, stopping=True)  # never built
    checkpoints.mid_epoch(lambda: 1 / 0)
    assert checkpoints.good is None
