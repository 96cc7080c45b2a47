"""Early stopping and the best epoch: `lossbench.engine.selection.EarlyStopping`."""
from __future__ import annotations

import math

from lossbench.engine.loop import Settings
from lossbench.engine.selection import EarlyStopping, selection_rule


def rows(*values, column="val_accuracy", tie="val_nll"):
    """History rows from (value, tie) pairs or bare values (tie NaN)."""
    out = []
    for v in values:
        value, tie_value = v if isinstance(v, tuple) else (v, math.nan)
        out.append({column: value, tie: tie_value})
    return out


def verdicts(stopping: EarlyStopping, history, steps_per_epoch: int = 10) -> list[str]:
    return [stopping.observe(epoch, row, epoch * steps_per_epoch)
            for epoch, row in enumerate(history, 1)]


def test_patience_counts_epochs_without_improvement_and_an_improvement_resets_it():
    stopping = EarlyStopping("val_accuracy", "max", patience=2)
    got = verdicts(stopping, rows(0.5, 0.4, 0.6, 0.6, 0.55, 0.7))
    # epoch 3 improves after one bad epoch; epochs 4 (equal, no tie-break) and 5 make two
    assert got == ["best", "worse", "best", "worse", "stop", "best"]
    assert stopping.best_epoch == 6 and stopping.best_value == 0.7 and stopping.waited == 0


def test_early_stopping_never_stops_before_min_steps():
    stopping = EarlyStopping("val_accuracy", "max", patience=1, min_steps=45)
    got = verdicts(stopping, rows(0.9, 0.1, 0.1, 0.1, 0.1, 0.1), steps_per_epoch=10)
    # patience ran out at epoch 2 (20 steps); the first epoch with >= 45 steps is the 5th
    assert got == ["best", "worse", "worse", "worse", "stop", "stop"]
    assert stopping.waited == 5


def test_without_patience_it_never_stops():
    stopping = EarlyStopping("val_accuracy", "max", patience=None)
    assert "stop" not in verdicts(stopping, rows(0.9, *[0.1] * 20))
    assert stopping.best_epoch == 1 and stopping.waited == 20


def test_ties_on_the_metric_are_broken_by_lower_nll():
    stopping = EarlyStopping("val_accuracy", "max", tie_column="val_nll", patience=5)
    got = verdicts(stopping, rows((0.8, 0.50), (0.8, 0.40), (0.8, 0.45), (0.8, 0.40), (0.7, 0.1)))
    # equal accuracy: strictly lower NLL wins (0.40 < 0.50); 0.45 and an equal 0.40 do not
    assert got == ["best", "best", "worse", "worse", "worse"]
    assert (stopping.best_epoch, stopping.best_tie) == (2, 0.40)


def test_without_a_tie_column_an_equal_value_is_no_improvement():
    stopping = EarlyStopping("val_loss", "min", patience=5)
    got = verdicts(stopping, rows((1.0, 9.0), (1.0, 0.0), (0.9, 5.0), column="val_loss"))
    assert got == ["best", "worse", "best"] and stopping.best_epoch == 3


def test_min_mode_prefers_lower_values():
    stopping = EarlyStopping("val_rmse", "min", patience=3)
    assert verdicts(stopping, rows(3.0, 2.0, 2.5, 1.0, column="val_rmse")) == [
        "best", "best", "worse", "best"]
    assert stopping.best_value == 1.0


def test_epochs_before_the_first_selectable_one_are_skipped_and_it_is_kept_whatever_it_scores():
    stopping = EarlyStopping("val_accuracy", "max", patience=1, first_selectable=3)
    got = verdicts(stopping, rows(0.99, 0.98, 0.2, 0.1))
    assert got == ["skipped", "skipped", "best", "stop"]
    assert stopping.best_epoch == 3 and stopping.best_value == 0.2


def test_a_nan_first_value_is_replaced_by_any_number():
    stopping = EarlyStopping("val_accuracy", "max", patience=3, first_selectable=0)
    assert verdicts(stopping, rows(math.nan, 0.1)) == ["best", "best"]


def test_built_from_the_selection_rule_of_a_trainer_config():
    trainer = Settings(monitor="auto", mode="auto", early_stopping=True, patience=4,
                       min_steps=100, select_on="clean")
    stopping = EarlyStopping.of(selection_rule("multiclass", trainer, noisy=True), 2)
    assert (stopping.column, stopping.mode, stopping.tie_column) == (
        "val_accuracy_clean", "max", "val_nll_clean")
    assert (stopping.patience, stopping.min_steps, stopping.first_selectable) == (4, 100, 2)
    regression = EarlyStopping.of(selection_rule(
        "regression", Settings(trainer, early_stopping=False, select_on="noisy"), noisy=False))
    assert (regression.column, regression.mode, regression.tie_column,
            regression.patience) == ("val_rmse", "min", None, None)


def test_the_counters_round_trip_through_state_dict():
    a = EarlyStopping("val_accuracy", "max", tie_column="val_nll", patience=3)
    verdicts(a, rows((0.5, 1.0), (0.7, 0.9), (0.6, 0.1)))
    b = EarlyStopping("val_accuracy", "max", tie_column="val_nll", patience=3)
    b.load_state_dict(a.state_dict())
    assert b == a
    # both go on alike: one more bad epoch stops both (waited 1 -> 2 -> 3)
    assert [a.observe(4, {"val_accuracy": 0.1, "val_nll": 0}, 40) for _ in range(2)] == [
        b.observe(4, {"val_accuracy": 0.1, "val_nll": 0}, 40) for _ in range(2)] == [
        "worse", "stop"]


def test_an_old_checkpoint_without_the_tie_loads_it_as_nan():
    stopping = EarlyStopping("val_accuracy")
    stopping.load_state_dict({"best_epoch": 4, "best_value": 0.5, "waited": 1})
    assert stopping.best_epoch == 4 and math.isnan(stopping.best_tie)


def test_the_first_epoch_is_kept_whatever_it_scores():
    stopping = EarlyStopping("val_loss", "min", patience=1)
    assert stopping.observe(1, {"val_loss": math.inf}, 0) == "best"
    assert stopping.observe(2, {"val_loss": math.inf}, 0) == "stop"


def test_keep_last_runs_the_whole_budget_and_says_so(cli, tmp_path):
    """With lr=0 nothing improves: patience 1 would end the run at epoch 2, and `last` would be
    wherever patience ran out, not the end of the budget."""
    from conftest import read_metrics

    rule = selection_rule("multiclass", Settings(monitor="auto", mode="auto",
                                                 early_stopping=True, patience=1,
                                                 keep="last"), noisy=False)
    assert rule["patience"] is None
    proc = cli("train", "dataset=iris", "model=linear", "trainer.epochs=6", "trainer.patience=1",
               "trainer.min_steps=0", "optimizer.lr=0", "trainer.keep=last",
               "trainer.plots=false", "print_config=false", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr
    assert "no early stopping: trainer.keep=last keeps the end of the whole budget" in proc.stdout
    metrics = read_metrics(tmp_path / "run")
    assert metrics["epochs_run"] == 6 and metrics["stopped_early"] is False
    assert metrics["budget"]["early_stopping"] is False
