"""`lossbench compare`: on a real smoke sweep (table rows, CSV columns, valid PNG plots), and on
run directories written by hand in the same file formats, where the right answer is known."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import lossbench_cmd, read_metrics, run_dirs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
    env.pop("LOSSBENCH_DEBUG", None)
    return subprocess.run([*lossbench_cmd(), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real 2-loss × 2-seed smoke sweep under label noise, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("compare")
    proc = run_cli("train", "-m", "loss=ce,bce", "seed=0,1", "trainer=smoke", "model=linear",
                   "dataset=iris", "dataset.noise.kind=symmetric", "dataset.noise.rate=0.2",
                   f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "sweep"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # something was drawn


def test_compare_sweep_writes_table_csv_markdown_and_plots(sweep, tmp_path):
    proc = run_cli("compare", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # under the header's rule, a row's first line names its loss; a wrapped cell continues on
    # lines that start blank (the table has no borders: it fits an 80-column terminal)
    lines = proc.stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    body = lines[rule + 1:next(i for i, line in enumerate(lines) if line.startswith("Test "))]
    table_rows = [line for line in body if not line.startswith(" ")]
    assert len(table_rows) == 2
    assert {row.split()[0] for row in table_rows} == {"ce", "bce"}

    rows = read_csv(sweep / "comparison.csv")
    assert len(rows) == 2
    columns = set(rows[0])
    assert {"dataset", "task", "loss", "n_runs", "accuracy_mean", "accuracy_std",
            "accuracy_ci95_low", "accuracy_ci95_high", "macro_f1_mean", "macro_f1_std",
            "best_epoch_mean", "train_time_s_mean", "mark", "test", "p_value", "p_holm",
            "p_better", "noise_kind", "noise_rate", "imbalance_ratio", "memorised"} <= columns
    assert "seed" not in columns  # the seed is what is averaged over
    for row in rows:
        assert row["dataset"] == "iris" and row["task"] == "multiclass"
        runs = [read_metrics(p) for p in run_dirs(sweep)
                if read_metrics(p)["choices"]["loss"] == row["loss"]]
        assert int(row["n_runs"]) == len(runs) == 2
        acc = np.array([m["test"]["accuracy"] for m in runs])
        half = stats.t.ppf(0.975, 1) * acc.std(ddof=1) / math.sqrt(2)
        assert float(row["accuracy_mean"]) == pytest.approx(acc.mean())
        assert float(row["accuracy_std"]) == pytest.approx(acc.std(ddof=1))
        # the t interval, clipped to accuracy's range [0, 1]
        assert float(row["accuracy_ci95_low"]) == pytest.approx(max(0.0, acc.mean() - half))
        assert float(row["accuracy_ci95_high"]) == pytest.approx(min(1.0, acc.mean() + half))
        f1 = np.mean([m["test"]["macro_f1"] for m in runs])
        assert float(row["macro_f1_mean"]) == pytest.approx(f1)
        epochs = np.mean([m["best_epoch"] for m in runs])
        assert float(row["best_epoch_mean"]) == pytest.approx(epochs)
        # the corruption the runs recorded
        realised = np.mean([m["data"]["noise"]["realised_rate"]["train_and_val"] for m in runs])
        assert (row["noise_kind"], row["noise_rate"]) == ("symmetric", "0.2")
        assert float(row["noise_realised_rate"]) == pytest.approx(realised)
    means = [float(r["accuracy_mean"]) for r in rows]
    assert means == sorted(means, reverse=True)
    assert rows[0]["mark"] in ("best", "top")
    # paired when every run records pairing hashes and the two losses' runs of a seed share
    # them; runs recorded without them are compared unpaired
    records: dict[int, set] = {}
    for run in run_dirs(sweep):
        metrics = read_metrics(run)
        record = metrics.get("pairing") or {}
        records.setdefault(metrics["seed"], set()).add(json.dumps(
            [record.get(k) for k in ("data_seed", "init_hash", "order_hash")]))
    paired = all(len(r) == 1 and "null" not in next(iter(r)) for r in records.values())
    assert rows[1]["test"] == ("paired t" if paired else "Welch")
    assert rows[1]["reference"] == f"loss={rows[0]['loss']}"

    markdown = (sweep / "comparison.md").read_text()
    assert "| ce |" in markdown and "| bce |" in markdown
    assert_png(sweep / "comparison.png")
    assert_png(sweep / "curves.png")


def test_compare_output_formats_and_metric_choice(sweep, tmp_path):
    out = tmp_path / "report"
    as_csv = run_cli("compare", str(sweep), "--format", "csv", "--out", str(out),
                     "--metric", "nll", cwd=tmp_path)
    assert as_csv.returncode == 0, as_csv.stderr
    assert as_csv.stdout == (out / "comparison.csv").read_text()
    rows = list(csv.DictReader(as_csv.stdout.splitlines()))
    nll = [float(r["nll_mean"]) for r in rows]
    assert nll == sorted(nll)  # lower is better for a negative log-likelihood
    assert {r["sort_metric"] for r in rows} == {"nll"}

    as_json = run_cli("compare", str(sweep), "--format", "json", "--out", str(out),
                      "--no-plots", cwd=tmp_path)
    data = json.loads(as_json.stdout)
    assert len(data["configurations"]) == 2 and data["failed"] == []

    as_md = run_cli("compare", str(sweep), "--format", "markdown", "--out", str(out), cwd=tmp_path)
    assert as_md.stdout == (out / "comparison.md").read_text()

    wrong = run_cli("compare", str(sweep), "--metric", "accuracyy", "--out", str(out),
                    cwd=tmp_path)
    assert wrong.returncode == 2
    assert "accuracyy" in wrong.stderr and "macro_f1" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1


def test_compare_without_runs_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("compare", "empty", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("lossbench: error: no runs under empty")
    assert not (tmp_path / "empty" / "comparison.csv").exists()
    missing = run_cli("compare", "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and "nowhere does not exist" in missing.stderr


# --- run directories written by hand: the right answer is known ------------------------------


def fake_run(path: Path, *, loss: str, seed: int, test: dict[str, float], dataset: str = "wine",
             task: str = "multiclass", noise: float = 0.0, status: str = "completed",
             history: list[float] | None = None, **fields) -> Path:
    """A run directory as `lossbench train` writes it; `fields` are extra metrics.json keys
    (test_at, budget, pairing, warnings, ...) and `config=` entries merge into the config."""
    config = {"seed": seed, "loss": {"_target_": f"lossbench.losses.{loss}"},
              "dataset": {"_target_": f"data.{dataset}", "noise": {"rate": noise}}}
    for key, value in fields.pop("config", {}).items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    metrics = {"status": status, "task": task, "dataset": dataset, "seed": seed,
               "choices": {"loss": loss, "dataset": dataset}, "monitor": "val_accuracy",
               "best_epoch": 2, "wall_time_s": 1.5, "test": test, "config": config, **fields}
    if status != "completed":
        metrics = {"status": status, "error": "ValueError: boom", "seed": seed,
                   "choices": {"loss": loss, "dataset": dataset}, "config": config, **fields}
    (path / ".hydra").mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / ".hydra" / "overrides.yaml").write_text(
        f"- loss={loss}\n- seed={seed}\n- dataset={dataset}\n- dataset.noise.rate={noise}\n")
    values = history or [0.5, 0.7, 0.8]
    (path / "history.csv").write_text("epoch,train_loss,val_accuracy\n" + "".join(
        f"{i + 1},1.0,{v}\n" for i, v in enumerate(values)))
    return path


def test_all_pairs_with_holm_mark_top_not_separated_and_worse(tmp_path, cli):
    accuracies = {"ce": [0.90, 0.92, 0.91], "gce": [0.905, 0.915, 0.90], "mae": [0.50, 0.52, 0.51]}
    n = 0
    for loss, values in accuracies.items():
        for seed, acc in enumerate(values):
            fake_run(tmp_path / "sweep" / str(n), loss=loss, seed=seed,
                     test={"accuracy": acc, "macro_f1": acc - 0.05})
            n += 1
    # interrupted (not failed): listed, neither averaged nor counted as a loss
    fake_run(tmp_path / "sweep" / str(n), loss="ce", seed=3, test={}, status="interrupted")
    proc = cli("compare", "sweep")
    assert proc.returncode == 0, proc.stderr
    rows = {r["loss"]: r for r in read_csv(tmp_path / "sweep" / "comparison.csv")}
    # ce has the highest mean but is not separated from gce: no "best", and never "tied"
    assert rows["ce"]["mark"] == "top"
    assert rows["gce"]["mark"] == "not separated (n = 3 + 3)"
    assert rows["mae"]["mark"] == "worse than best"
    # Welch's t-test against the top row, as scipy computes it, Holm over all 3 pairs
    pairs = [("gce", "ce"), ("mae", "ce"), ("gce", "mae")]
    raw = [stats.ttest_ind(accuracies[a], accuracies[b], equal_var=False).pvalue
           for a, b in pairs]
    order = np.argsort(raw)
    holm = np.empty(3)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, raw[i] * (3 - rank)))
        holm[i] = running
    assert float(rows["gce"]["p_value"]) == pytest.approx(raw[0])
    assert float(rows["gce"]["p_holm"]) == pytest.approx(holm[0])
    assert float(rows["mae"]["p_holm"]) == pytest.approx(holm[1]) and holm[1] < 0.05
    assert {r["test"] for r in rows.values()} == {"", "Welch"}
    assert "tied" not in proc.stdout
    # the failed run is listed, not averaged
    assert rows["ce"]["n_runs"] == "3"
    assert float(rows["ce"]["accuracy_mean"]) == pytest.approx(np.mean(accuracies["ce"]))
    # as the user typed the folder: relative to where compare ran, like the 'wrote' line
    failed_dir = "sweep/9"
    assert failed_dir in proc.stdout.replace("\n", "")
    assert str(tmp_path) not in proc.stdout
    markdown = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "Failed or unfinished runs" in markdown and "ValueError: boom" in markdown
    # at alpha = 0.99 the same small difference separates: ce is best, above every other row
    loose = cli("compare", "sweep", "--alpha", "0.99", "--format", "csv")
    marks = {r["loss"]: r["mark"] for r in csv.DictReader(loose.stdout.splitlines())}
    assert marks == {"ce": "best", "gce": "worse than best", "mae": "worse than best"}


def test_datasets_and_tasks_are_never_averaged_together(tmp_path, cli):
    for i, dataset in enumerate(["wine", "iris"]):
        for seed in range(2):
            fake_run(tmp_path / "runs" / f"{dataset}{seed}", loss="ce", seed=seed,
                     dataset=dataset, test={"accuracy": 0.5 + 0.4 * i + 0.01 * seed,
                                            "macro_f1": 0.5})
    for seed, rmse in enumerate([3.0, 3.2]):
        fake_run(tmp_path / "runs" / f"reg_mse{seed}", loss="mse", seed=seed, dataset="diabetes",
                 task="regression", test={"rmse": rmse, "r2": 0.4})
        fake_run(tmp_path / "runs" / f"reg_mae{seed}", loss="mae", seed=seed, dataset="diabetes",
                 task="regression", test={"rmse": rmse - 1.0, "r2": 0.5})
    proc = cli("compare", "runs", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(proc.stdout.splitlines()))
    by_dataset = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], []).append(row)
    assert sorted(by_dataset) == ["diabetes", "iris", "wine"]
    assert [r["n_runs"] for r in by_dataset["wine"]] == ["2"]
    assert float(by_dataset["iris"][0]["accuracy_mean"]) == pytest.approx(0.905)
    regression = by_dataset["diabetes"]
    assert [r["loss"] for r in regression] == ["mae", "mse"]  # lower RMSE first
    assert regression[0]["mark"] == "best" and regression[0]["sort_metric"] == "rmse"
    assert float(regression[0]["r2_mean"]) == pytest.approx(0.5)
    assert regression[0]["accuracy_mean"] == ""  # classification columns stay empty
    assert by_dataset["wine"][0]["loss"] == "ce"


def test_group_by_and_varying_override_columns(tmp_path, cli):
    for noise in (0.2, 0.4):
        for loss in ("ce", "gce"):
            for seed in range(2):
                fake_run(tmp_path / "s" / f"{loss}-{noise}-{seed}", loss=loss, seed=seed,
                         noise=noise, test={"accuracy": 0.9 - noise + 0.01 * seed,
                                            "macro_f1": 0.5})
    default = list(csv.DictReader(cli("compare", "s", "--format", "csv").stdout.splitlines()))
    assert len(default) == 4
    assert {"loss", "dataset.noise.rate"} <= set(default[0]) and "dataset" in default[0]
    assert {(r["loss"], r["dataset.noise.rate"]) for r in default} == {
        ("ce", "0.2"), ("ce", "0.4"), ("gce", "0.2"), ("gce", "0.4")}
    grouped = list(csv.DictReader(
        cli("compare", "s", "--group-by", "loss", "--format", "csv").stdout.splitlines()))
    assert {r["loss"]: r["n_runs"] for r in grouped} == {"ce": "4", "gce": "4"}
    assert "dataset.noise.rate" not in grouped[0]


def test_compare_reads_files_only_never_torch(tmp_path):
    fake_run(tmp_path / "r0", loss="ce", seed=0, test={"accuracy": 0.9, "macro_f1": 0.8})
    code = ("import sys; from lossbench.cli import main\n"
            "try:\n    main(['compare', 'r0', '--format', 'json'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('torch', 'lossbench.experiment.run', 'lossbench.engine.loop') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["configurations"][0]["accuracy_mean"] == 0.9


def test_metric_missing_from_one_task_leaves_that_block_on_its_headline(tmp_path, cli):
    for seed in range(2):
        fake_run(tmp_path / "r" / f"c{seed}", loss="ce", seed=seed,
                 test={"accuracy": 0.8, "macro_f1": 0.7, "nll": 0.5 + seed})
        fake_run(tmp_path / "r" / f"g{seed}", loss="gce", seed=seed,
                 test={"accuracy": 0.9, "macro_f1": 0.7, "nll": 0.1 + seed})
        fake_run(tmp_path / "r" / f"m{seed}", loss="mse", seed=seed, dataset="diabetes",
                 task="regression", test={"rmse": 3.0, "r2": 0.4})
    proc = cli("compare", "r", "--metric", "nll", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(proc.stdout.splitlines()))
    assert {(r["dataset"], r["sort_metric"]) for r in rows} == {("wine", "nll"),
                                                                 ("diabetes", "rmse")}
    assert [r["loss"] for r in rows if r["dataset"] == "wine"] == ["gce", "ce"]  # lower nll first


def test_config_keys_that_follow_the_seed_do_not_split_a_configuration(tmp_path, cli):
    for loss in ("ce", "gce"):
        for seed in (3, 4, 5):
            run = fake_run(tmp_path / "s" / f"{loss}{seed}", loss=loss, seed=seed,
                           test={"accuracy": 0.8, "macro_f1": 0.7})
            metrics = json.loads((run / "metrics.json").read_text())
            metrics["config"]["dataset"]["random_state"] = seed  # resolved `${seed}`
            (run / "metrics.json").write_text(json.dumps(metrics))
    rows = list(csv.DictReader(cli("compare", "s", "--format", "csv").stdout.splitlines()))
    assert sorted((r["loss"], r["n_runs"]) for r in rows) == [("ce", "3"), ("gce", "3")]
    assert "dataset.random_state" not in rows[0]


def test_runs_without_a_config_in_metrics_are_grouped_by_hydra_config_yaml(tmp_path, cli):
    """metrics.json written before it held the config: .hydra/config.yaml tells runs apart,
    and a key that varies without being an override still gets its column."""
    for lr in (0.1, 0.01):
        for seed in range(2):
            run = fake_run(tmp_path / "old" / f"{lr}-{seed}", loss="ce", seed=seed,
                           test={"accuracy": 0.5 + lr + 0.01 * seed, "macro_f1": 0.5})
            metrics = json.loads((run / "metrics.json").read_text())
            del metrics["config"]
            (run / "metrics.json").write_text(json.dumps(metrics))
            (run / ".hydra" / "config.yaml").write_text(
                f"seed: {seed}\nloss:\n  _target_: x.CE\noptimizer:\n  lr: {lr}\n")
    rows = list(csv.DictReader(cli("compare", "old", "--format", "csv").stdout.splitlines()))
    assert [(r["optimizer.lr"], r["n_runs"]) for r in rows] == [("0.1", "2"), ("0.01", "2")]


# --- pairing, baselines, Holm, P(better), sample sizes ---------------------------------------


def pairing(seed: int, init: str = "i") -> dict:
    return {"data_seed": seed, "train_seed": seed, "init_hash": f"{init}{seed}",
            "order_hash": f"o{seed}"}


def paired_sweep(root: Path, values: dict[str, list[float | None]], init: dict | None = None
                 ) -> None:
    """One run per loss and seed, paired by seed; None is a seed that failed."""
    for loss, accs in values.items():
        for seed, acc in enumerate(accs):
            fake_run(root / f"{loss}{seed}", loss=loss, seed=seed,
                     test={"accuracy": acc, "macro_f1": acc} if acc is not None else {},
                     status="completed" if acc is not None else "failed",
                     pairing=pairing(seed, (init or {}).get(loss, "i")))


CE = [0.80, 0.82, 0.81, 0.83, 0.79, 0.80]
GCE = [c + d for c, d in zip(CE, [0.02, 0.03, 0.01, 0.02, 0.025, 0.015])]
MAE = [0.805, 0.81, 0.815, 0.82, 0.79, None]  # seed 5 failed: a loss, not a dropped pair


def test_baseline_paired_tests_holm_and_a_failed_seed_that_counts_as_a_loss(tmp_path, cli):
    from test_stats import power_by_nct

    paired_sweep(tmp_path / "s", {"ce": CE, "gce": GCE, "mae": MAE})
    proc = cli("compare", "s", "--baseline", "ce", "--mde", "0.01", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = {r["loss"]: r for r in csv.DictReader(proc.stdout.splitlines())}
    assert rows["ce"]["mark"] == "baseline" and rows["ce"]["test"] == ""
    gce, mae = rows["gce"], rows["mae"]
    assert gce["test"] == mae["test"] == "paired t"
    assert gce["reference"] == mae["reference"] == "loss=ce"
    mae_scored = [v if v is not None else 0.0 for v in MAE]  # worst accuracy for the lost seed
    p = [stats.ttest_rel(GCE, CE).pvalue, stats.ttest_rel(mae_scored, CE).pvalue]
    assert float(gce["p_value"]) == pytest.approx(p[0])
    assert float(mae["p_value"]) == pytest.approx(p[1])
    # Holm over the k - 1 = 2 tests against the baseline
    low, high = sorted(p)
    holm = {low: 2 * low, high: max(2 * low, high)}
    assert float(gce["p_holm"]) == pytest.approx(holm[p[0]])
    assert float(mae["p_holm"]) == pytest.approx(min(1.0, holm[p[1]]))
    assert gce["mark"] == "better"
    assert mae["mark"] == "not separated (n = 6)"
    assert mae["n_compared"] == "6" and mae["n_lost"] == "1" and mae["n_runs"] == "5"
    # P(better): gce wins 6 of 6 seeds; mae loses seed 5 (failed), exact intervals
    assert float(gce["p_better"]) == 1.0
    ref = stats.binomtest(6, 6).proportion_ci(method="exact")
    assert float(gce["p_better_ci95_low"]) == pytest.approx(ref.low)
    mae_wins = sum(m is not None and m > c for m, c in zip(MAE, CE))
    ties = sum(m == c for m, c in zip(MAE, CE))  # seed 4: 0.79 both, half a win
    assert ties == 1
    assert float(mae["p_better"]) == pytest.approx((mae_wins + 0.5 * ties) / 6)
    # the paired difference and its bootstrap interval
    diffs = np.array(GCE) - np.array(CE)
    assert float(gce["diff"]) == pytest.approx(diffs.mean())
    assert float(gce["diff_ci95_low"]) < diffs.mean() < float(gce["diff_ci95_high"])
    assert diffs.min() <= float(gce["diff_ci95_low"])
    # sample sizes at power 0.8 and alpha / 2 (two tests), from the sd of the differences
    sd = diffs.std(ddof=1)
    assert power_by_nct(float(gce["detectable_diff"]), sd, 6, 0.025, True) == pytest.approx(0.8)
    n = int(gce["n_needed"])
    assert power_by_nct(0.01, sd, n, 0.025, True) >= 0.8 > power_by_nct(0.01, sd, n - 1,
                                                                          0.025, True)
    as_json = json.loads(cli("compare", "s", "--baseline", "ce", "--format", "json",
                             "--no-plots").stdout)
    [family] = as_json["families"]
    assert family["alpha_adjusted"] == pytest.approx(0.025)
    assert sorted((c["a"], c["b"]) for c in family["comparisons"]) == [
        ("loss=gce", "loss=ce"), ("loss=mae", "loss=ce")]
    table = cli("compare", "s", "--baseline", "ce", "--no-plots")
    assert "paired t-test" in table.stdout and "not separated (n = 6)" in table.stdout
    assert "tied" not in table.stdout


def test_unequal_pairing_hashes_fall_back_to_welch(tmp_path, cli):
    # gce's initial weights differ (another head): the same seed is no longer a pair
    paired_sweep(tmp_path / "s", {"ce": CE, "gce": GCE}, init={"gce": "other"})
    rows = {r["loss"]: r for r in csv.DictReader(
        cli("compare", "s", "--baseline", "ce", "--format", "csv").stdout.splitlines())}
    assert rows["gce"]["test"] == "Welch" and rows["gce"]["n_compared"] == "6 + 6"
    assert float(rows["gce"]["p_value"]) == pytest.approx(
        stats.ttest_ind(GCE, CE, equal_var=False).pvalue)
    mw = stats.mannwhitneyu(GCE, CE).statistic / 36
    assert float(rows["gce"]["p_better"]) == pytest.approx(mw)


def test_unknown_baseline_is_one_line_exit_2(tmp_path, cli):
    paired_sweep(tmp_path / "s", {"ce": CE[:3], "gce": GCE[:3]})
    proc = cli("compare", "s", "--baseline", "focal")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lossbench: error: --baseline focal: no configuration has loss=focal; "
        "choose from: ce, gce"]
    assert not (tmp_path / "s" / "comparison.csv").exists()
    bad = cli("compare", "s", "--mde", "-0.01")
    assert bad.returncode == 2 and "--mde" in bad.stderr


def test_too_few_seeds_say_what_they_cannot_show(tmp_path, cli):
    paired_sweep(tmp_path / "five", {"ce": CE[:5], "gce": GCE[:5]})
    proc = cli("compare", "five", "--baseline", "ce", "--format", "markdown", "--mde", "0.01")
    assert "even 5 of 5 gives a lower bound of 0.478; 6 seeds can" in proc.stdout
    paired_sweep(tmp_path / "two", {"ce": CE[:2], "gce": GCE[:2]})
    rows = list(csv.DictReader(cli("compare", "two", "--baseline", "ce", "--mde", "0.01",
                                   "--format", "csv").stdout.splitlines()))
    gce = [r for r in rows if r["loss"] == "gce"][0]
    assert gce["test"] == "paired t"
    assert gce["detectable_diff"] == "" and gce["n_needed"] == ""  # nothing below 3 pairs


# --- the terminal table -----------------------------------------------------------------------


def rendered_table(root: Path, width: int, baseline: str | None) -> tuple[str, list]:
    """(what `lossbench compare` prints on a terminal `width` columns wide, its blocks)."""
    from rich.console import Console

    from lossbench.results.comparison import tables
    from lossbench.results.comparison.blocks import DEFAULT_IGNORE, build_blocks
    from lossbench.results.comparison.records import find_runs

    runs = find_runs([root])
    blocks = build_blocks(runs, None, None, 0.05, None, list(DEFAULT_IGNORE), baseline=baseline)
    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    notes = tables.Notes(alpha=0.05, at="best", baseline=baseline, mde=None)
    tables.print_table(blocks, [r for r in runs if r.status != "completed"], notes,
                       console=console)
    return console.export_text(), blocks


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_terminal_table_keeps_its_key_columns_whole_at_any_width(tmp_path, width):
    from lossbench.results.comparison.tables import key_cells

    paired_sweep(tmp_path / "s", {"ce": CE, "gce": GCE, "mae": MAE})  # mae: a lost seed
    rate_sweep(tmp_path / "rates")  # two label columns: loss and the noise rate
    for root, baseline in ((tmp_path / "s", "ce"), (tmp_path / "s", None),
                           (tmp_path / "rates", "ce")):
        text, blocks = rendered_table(root, width, baseline)
        lines = text.splitlines()
        assert "…" not in text
        assert max(map(len, lines)) <= width
        header = next(line for line in lines if line.startswith("loss "))
        for column in ("n", "accuracy [95% CI]", "Δ vs ce" if baseline else "Δ vs top",
                       "verdict"):
            assert column in header
        for block in blocks:
            for row in block.rows:
                cells = key_cells(block, row)
                # the labels, n, mean [CI] and Δ [CI]: whole, on the row's first line
                [first] = [i for i, line in enumerate(lines) if line.startswith(cells[0] + " ")
                           and all(c in line for c in cells[1:-1])]
                # the verdict whole, or wrapped at its spaces on the row's next lines
                continued = " ".join(lines[first:first + 3])
                assert all(word in continued for word in cells[-1].split())
                if width >= 100:  # a row is one line
                    assert cells[-1] in lines[first]
        # the title is a line of its own, wrapped at the terminal, not at the table's width
        assert lines[0].startswith(blocks[0].title[:70])


def test_a_difference_that_rounds_to_zero_has_no_sign(tmp_path, cli):
    paired_sweep(tmp_path / "s", {"ce": CE, "gce": [c - 1e-7 for c in CE]})
    for args in ((), ("--format", "markdown"), ("--format", "latex")):
        proc = cli("compare", "s", "--baseline", "ce", "--no-plots", *args)
        assert proc.returncode == 0, proc.stderr
        assert not re.search(r"-0\.0+\b", proc.stdout), proc.stdout
    assert "+0.0000 [0.0000, 0.0000]" in cli("compare", "s", "--baseline", "ce", "--no-plots",
                                             "--format", "markdown").stdout


def test_wide_shows_every_column_and_the_default_says_how_to_get_them(tmp_path, cli):
    paired_sweep(tmp_path / "s", {"ce": CE, "gce": GCE})
    narrow = cli("compare", "s", "--baseline", "ce", "--no-plots", env={"COLUMNS": "100"})
    assert narrow.returncode == 0, narrow.stderr
    assert "P(better) [95% CI]" not in narrow.stdout and "--wide" in narrow.stdout
    wide = cli("compare", "s", "--baseline", "ce", "--no-plots", "--wide",
               env={"COLUMNS": "400"})
    assert wide.returncode == 0, wide.stderr
    for column in ("accuracy mean ± std", "p (Holm)", "P(better) [95% CI]", "best epoch",
                   "train s"):
        assert column in wide.stdout


# --- best and last, corruption, warnings, grouping, rate curves, LaTeX -----------------------


def at_fields(best: float, last: float, epochs_run: int = 30) -> dict:
    return {"test_at": {"best": {"accuracy": best, "macro_f1": best},
                        "last": {"accuracy": last, "macro_f1": last}},
            "budget": {"epochs": 30, "epochs_run": epochs_run, "steps_run": 10 * epochs_run,
                       "early_stopping": epochs_run < 30}}


def test_at_last_reads_last_epoch_metrics_and_refuses_unequal_budgets(tmp_path, cli):
    for seed in range(3):
        fake_run(tmp_path / "s" / f"ce{seed}", loss="ce", seed=seed, test={"accuracy": 0.9},
                 **at_fields(0.9 + 0.01 * seed, 0.6 + 0.01 * seed))
        fake_run(tmp_path / "s" / f"gce{seed}", loss="gce", seed=seed, test={"accuracy": 0.8},
                 **at_fields(0.8 + 0.01 * seed, 0.75 + 0.01 * seed))
    best = {r["loss"]: r for r in csv.DictReader(
        cli("compare", "s", "--format", "csv").stdout.splitlines())}
    last = {r["loss"]: r for r in csv.DictReader(
        cli("compare", "s", "--at", "last", "--format", "csv").stdout.splitlines())}
    assert float(best["ce"]["accuracy_mean"]) == pytest.approx(0.91) and best["ce"]["at"] == "best"
    assert float(last["ce"]["accuracy_mean"]) == pytest.approx(0.61)
    assert float(last["gce"]["accuracy_mean"]) == pytest.approx(0.76)
    assert next(iter(last)) == "gce" and last["gce"]["at"] == "last"  # order flips at the end
    md = cli("compare", "s", "--at", "last", "--format", "markdown").stdout
    assert "Test metrics at the last epoch of the training budget" in md

    # one ce seed stopped early at epoch 12: its last epoch is not the others'
    metrics = json.loads((tmp_path / "s" / "ce1" / "metrics.json").read_text())
    metrics.update(at_fields(0.91, 0.61, epochs_run=12))
    (tmp_path / "s" / "ce1" / "metrics.json").write_text(json.dumps(metrics))
    proc = cli("compare", "s", "--at", "last", "--out", "report")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "different budgets" in proc.stderr and "12 epochs" in proc.stderr
    assert not (tmp_path / "report").exists()
    assert cli("compare", "s", "--at", "best", "--out", "report").returncode == 0

    # a run recorded before last-epoch metrics existed
    fake_run(tmp_path / "old" / "r0", loss="ce", seed=0, test={"accuracy": 0.9})
    old = cli("compare", "old", "--at", "last")
    assert old.returncode == 2 and "no last-epoch test metrics" in old.stderr
    assert len(old.stderr.strip().splitlines()) == 1


def test_corruption_memorisation_warnings_and_privileged_selection_columns(tmp_path, cli):
    for seed in range(2):
        data = {"noise": {"kind": "symmetric", "rate": 0.4,
                          "realised_rate": {"train": 0.38 + 0.02 * seed, "val": 0.4,
                                            "train_and_val": 0.39 + 0.02 * seed}},
                "imbalance": {"kind": "longtail", "ratio": 10}}
        fake_run(tmp_path / "s" / f"ce{seed}", loss="ce", seed=seed,
                 test={"accuracy": 0.34, "macro_f1": 0.2}, data=data,
                 memorisation={"flipped": 40, "best": {"memorised": 0.2 + 0.1 * seed,
                                                       "true": 0.5},
                               "last": {"memorised": 0.9, "true": 0.05}},
                 warnings=[{"kind": "near_chance", "message": "accuracy 0.34 ~ chance 0.33"}])
        fake_run(tmp_path / "s" / f"gce{seed}", loss="gce", seed=seed,
                 test={"accuracy": 0.8, "macro_f1": 0.8}, data=data,
                 selection={"metric": "val_accuracy", "tie_break": "val_nll",
                            "labels": "clean", "privileged": True})
    rows = {r["loss"]: r for r in csv.DictReader(
        cli("compare", "s", "--format", "csv").stdout.splitlines())}
    ce, gce = rows["ce"], rows["gce"]
    assert (ce["noise_kind"], ce["noise_rate"], ce["imbalance_kind"], ce["imbalance_ratio"]) == (
        "symmetric", "0.4", "longtail", "10")
    assert float(ce["noise_realised_rate"]) == pytest.approx(0.40)
    assert float(ce["memorised"]) == pytest.approx(0.25)
    assert ce["warnings"] == "near_chance (2/2)" and gce["warnings"] == ""
    assert gce["selection"] == "clean (privileged)" and ce["selection"] == "noisy"
    md = cli("compare", "s", "--format", "markdown").stdout
    assert "symmetric 0.4 (realised 0.400); longtail ratio 10" in md
    assert "⚠ near_chance (2/2)" in md and "clean labels (privileged)" in md
    assert "privileged information" in md
    last = {r["loss"]: r for r in csv.DictReader(
        cli("compare", "s", "--format", "csv", "--at", "best").stdout.splitlines())}
    assert float(last["ce"]["memorised"]) == pytest.approx(0.25)


def test_rows_ignore_only_keys_that_cannot_change_results(tmp_path, cli):
    for seed in range(2):
        # print_config, the logger, plots: same configuration, one row
        fake_run(tmp_path / "s" / f"a{seed}", loss="ce", seed=seed, test={"accuracy": 0.9},
                 config={"print_config": True, "logger._target_": "lossbench.results.tracking.Null",
                         "trainer.plots": True, "trainer.device": "cpu"})
        # (other seeds: with the same seeds these would be copies of a's runs, counted once)
        fake_run(tmp_path / "s" / f"b{seed}", loss="ce", seed=seed + 2, test={"accuracy": 0.9},
                 config={"print_config": False, "logger._target_": "lossbench.results.tracking.MLflow",
                         "logger.uri": "file:./mlruns", "trainer.plots": False,
                         "trainer.device": "cpu"})
        # the device can change results: its own row
        fake_run(tmp_path / "s" / f"c{seed}", loss="ce", seed=seed, test={"accuracy": 0.8},
                 config={"print_config": True, "trainer.device": "cuda"})
    rows = list(csv.DictReader(cli("compare", "s", "--format", "csv").stdout.splitlines()))
    assert sorted((r["trainer.device"], r["n_runs"]) for r in rows) == [("cpu", "4"),
                                                                       ("cuda", "2")]


def rate_sweep(root: Path) -> None:
    for rate in (0.0, 0.2, 0.4):
        for loss, slope in (("ce", 0.8), ("gce", 0.3)):
            for seed in range(3):
                acc = 0.95 - slope * rate + 0.01 * seed
                fake_run(root / f"{loss}-{rate}-{seed}", loss=loss, seed=seed, noise=rate,
                         test={"accuracy": acc, "macro_f1": acc}, pairing=pairing(seed))


def test_a_noise_rate_sweep_compares_as_loss_by_rate_with_a_rate_curve(tmp_path, cli):
    import matplotlib.image

    rate_sweep(tmp_path / "s")
    proc = cli("compare", "s", "--baseline", "ce", "--format", "markdown")
    assert proc.returncode == 0, proc.stderr
    assert "Test accuracy (mean ± std) against dataset.noise.rate:" in proc.stdout
    table = proc.stdout.split("against dataset.noise.rate:")[1]
    assert "| loss | rate 0 | rate 0.2 | rate 0.4 |" in table
    assert "| ce | 0.9600 ± 0.0100 | 0.8000 ± 0.0100 | 0.6400 ± 0.0100 |" in table
    assert "| gce | 0.9600 ± 0.0100 | 0.9000 ± 0.0100 | 0.8400 ± 0.0100 |" in table
    # one family per rate: gce against ce at 0.2 and 0.4 (each alone in its family)
    rows = list(csv.DictReader((tmp_path / "s" / "comparison.csv").read_text().splitlines()))
    assert [r["dataset.noise.rate"] for r in rows] == ["0", "0", "0.2", "0.2", "0.4", "0.4"]
    gce = {r["dataset.noise.rate"]: r for r in rows if r["loss"] == "gce"}
    assert gce["0.4"]["mark"] == "better" and gce["0.4"]["test"] == "paired t"
    assert gce["0"]["mark"] == "not separated (n = 3)"
    png = tmp_path / "s" / "rates.png"
    assert_png(png)
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[1] > pixels.shape[0] * 1.2  # one landscape panel: a single dataset


def test_latex_booktabs_table_bolds_the_best_and_names_the_test(tmp_path, cli):
    paired_sweep(tmp_path / "s", {"ce": CE, "gce": GCE})
    proc = cli("compare", "s", "--baseline", "ce", "--format", "latex")
    assert proc.returncode == 0, proc.stderr
    tex = proc.stdout
    assert tex == (tmp_path / "s" / "comparison.tex").read_text()
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrr}"):
        assert command in tex
    mean, std = np.mean(GCE), np.std(GCE, ddof=1)
    assert rf"gce & \textbf{{{mean:.3f}}} $\pm$ {std:.3f}" in tex
    assert rf"ce & {np.mean(CE):.3f} $\pm$ {np.std(CE, ddof=1):.3f}" in tex
    assert "paired $t$-test" in tex and "Holm" in tex and r"macro\_f1" in tex
    if shutil.which("pdflatex"):
        doc = ("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + tex
               + "\\end{document}\n")
        (tmp_path / "t.tex").write_text(doc)
        built = subprocess.run(["pdflatex", "-interaction=nonstopmode", "t.tex"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert built.returncode == 0, built.stdout[-2000:]


def test_a_fixed_seed_with_swept_training_seeds_still_pairs(tmp_path, cli):
    # seed=0 for every run, train_seed 0..3 varies initial weights and batch order: 4 pairs
    for loss, accs in (("ce", CE[:4]), ("gce", GCE[:4])):
        for train_seed, acc in enumerate(accs):
            record = {"data_seed": 0, "train_seed": train_seed,
                      "init_hash": f"i{train_seed}", "order_hash": f"o{train_seed}"}
            fake_run(tmp_path / "s" / f"{loss}{train_seed}", loss=loss, seed=0,
                     test={"accuracy": acc, "macro_f1": acc}, pairing=record,
                     config={"train_seed": train_seed})
    rows = {r["loss"]: r for r in csv.DictReader(
        cli("compare", "s", "--baseline", "ce", "--format", "csv").stdout.splitlines())}
    assert rows["ce"]["n_runs"] == "4"  # train_seed, like seed, is what is averaged over
    assert rows["gce"]["test"] == "paired t" and rows["gce"]["n_compared"] == "4"
    assert float(rows["gce"]["p_value"]) == pytest.approx(
        stats.ttest_rel(GCE[:4], CE[:4]).pvalue)


# --- copies of a run count once ----------------------------------------------------------


def test_a_run_found_twice_counts_once_and_copies_that_disagree_are_refused(tmp_path, cli):
    paired_sweep(tmp_path / "reg", {"ce": CE[:3], "gce": GCE[:3]})
    shutil.copytree(tmp_path / "reg", tmp_path / "copy")
    # another sweep holding one identical run beside a run of another seed
    fake_run(tmp_path / "other" / "0", loss="ce", seed=0, test={"accuracy": CE[0],
             "macro_f1": CE[0]}, pairing=pairing(0))
    fake_run(tmp_path / "other" / "1", loss="ce", seed=7, test={"accuracy": 0.8,
             "macro_f1": 0.8}, pairing=pairing(7))
    alone = cli("compare", "reg", "--format", "csv", "--no-plots")
    proc = cli("compare", "reg", "copy", "other", "--format", "csv", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    rows = {r["loss"]: r for r in csv.DictReader(proc.stdout.splitlines())}
    assert rows["gce"]["n_runs"] == "3" and rows["ce"]["n_runs"] == "4"  # + seed 7
    lone = {r["loss"]: r for r in csv.DictReader(alone.stdout.splitlines())}
    assert rows["gce"]["accuracy_ci95_low"] == lone["gce"]["accuracy_ci95_low"]
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 7  # the 6 copied runs and other/0
    assert all(w.startswith("lossbench: warning: ") and w.endswith("counted once")
               for w in warnings)
    assert f"{(tmp_path / 'other' / '0').resolve()} is a copy of " \
           f"{(tmp_path / 'reg' / 'ce0').resolve()}" in proc.stderr

    # a copy whose result differs: which to count is the user's call
    record = read_metrics(tmp_path / "copy" / "gce1")
    record["test"]["accuracy"] += 0.01
    (tmp_path / "copy" / "gce1" / "metrics.json").write_text(json.dumps(record))
    refused = cli("compare", "reg", "copy", "--out", "out")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"lossbench: error: {(tmp_path / 'reg' / 'gce1').resolve()} and "
        f"{(tmp_path / 'copy' / 'gce1').resolve()} are the same run (same config and seed 1) "
        "with different results; compare one of them, or tell them apart by a config key"]
    assert not (tmp_path / "out").exists()


# --- statistics that agree with their verdict --------------------------------------------


def test_the_interval_of_a_paired_difference_is_the_paired_t_tests_own(tmp_path, cli):
    """At 3 pairs a percentile bootstrap of Δ excluded 0 beside "not separated"; the t interval
    of the differences excludes 0 exactly when the paired test's p is below 0.05."""
    cases = {"small": [0.01, 0.02, 0.05], "clear": [0.03, 0.031, 0.032, 0.029],
             "none": [0.01, -0.02, 0.015, 0.0, -0.005]}
    for name, diffs in cases.items():
        ce = [0.8 + 0.01 * i for i in range(len(diffs))]
        paired_sweep(tmp_path / name, {"ce": ce, "gce": [c + d for c, d in zip(ce, diffs)]})
        proc = cli("compare", name, "--baseline", "ce", "--format", "csv", "--no-plots")
        assert proc.returncode == 0, proc.stderr
        gce = [r for r in csv.DictReader(proc.stdout.splitlines()) if r["loss"] == "gce"][0]
        d = np.array([g - c for c, g in zip(ce, [c + x for c, x in zip(ce, diffs)])])
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        low, high = float(gce["diff_ci95_low"]), float(gce["diff_ci95_high"])
        assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half))
        assert gce["diff_ci"] == "t of the paired differences"
        assert (low > 0 or high < 0) == (float(gce["p_value"]) < 0.05), name
    small = cli("compare", "small", "--baseline", "ce", "--format", "markdown", "--no-plots")
    assert "not separated (n = 3)" in small.stdout
    assert "95% CI of Δ: Student's t of the paired differences" in small.stdout
    assert "bootstrap" not in small.stdout


def test_a_configuration_alone_in_its_family_is_not_called_best(tmp_path, cli):
    for seed in range(3):
        fake_run(tmp_path / "one" / str(seed), loss="ce", seed=seed,
                 test={"accuracy": 0.9 + 0.01 * seed})
    rows = list(csv.DictReader(cli("compare", "one", "--format", "csv").stdout.splitlines()))
    assert [r["mark"] for r in rows] == [""]
    # gce ran only at rate 0.2: at 0 ce has no rival, at 0.2 the two are compared
    for seed in range(3):
        for loss, rate, acc in (("ce", 0.0, 0.9), ("ce", 0.2, 0.7), ("gce", 0.2, 0.85)):
            fake_run(tmp_path / "rates" / f"{loss}{rate}-{seed}", loss=loss, seed=seed,
                     noise=rate, test={"accuracy": acc + 0.001 * seed}, pairing=pairing(seed))
    rows = list(csv.DictReader(cli("compare", "rates", "--format", "csv").stdout.splitlines()))
    marks = {(r["loss"], r["dataset.noise.rate"]): r["mark"] for r in rows}
    assert marks == {("ce", "0"): "", ("gce", "0.2"): "best", ("ce", "0.2"): "worse than best"}


def test_a_warning_is_flagged_only_in_the_table_of_its_epoch(tmp_path, cli):
    for seed in range(2):
        for loss in ("ce", "gce"):
            fake_run(tmp_path / "s" / f"{loss}{seed}", loss=loss, seed=seed,
                     test={"accuracy": 0.9, "macro_f1": 0.9}, **at_fields(0.9, 0.34),
                     warnings=[{"kind": "near_chance", "at": "last", "message": "0.34"}]
                     if loss == "ce" else [])
    best = {r["loss"]: r for r in csv.DictReader(
        cli("compare", "s", "--format", "csv", "--no-plots").stdout.splitlines())}
    assert best["ce"]["warnings"] == "" and "⚠" not in cli(
        "compare", "s", "--format", "markdown", "--no-plots").stdout
    last = {r["loss"]: r for r in csv.DictReader(cli(
        "compare", "s", "--format", "csv", "--at", "last", "--no-plots").stdout.splitlines())}
    assert last["ce"]["warnings"] == "near_chance (2/2)" and last["gce"]["warnings"] == ""


def test_a_row_that_pools_noise_rates_names_every_rate_not_the_first(tmp_path, cli):
    for rate in (0.0, 0.2, 0.4):
        for seed in range(2):
            data = {"noise": {"kind": "symmetric", "rate": rate,
                              "realised_rate": {"train_and_val": rate + 0.01}}}
            for loss in ("ce", "gce"):
                fake_run(tmp_path / "s" / f"{loss}-{rate}-{seed}", loss=loss, seed=seed,
                         noise=rate, data=data, test={"accuracy": 0.9 - rate})
    md = cli("compare", "s", "--group-by", "loss", "--format", "markdown", "--no-plots").stdout
    assert "pooled: symmetric 0 / symmetric 0.2 / symmetric 0.4" in md
    assert "realised" not in md
    rows = list(csv.DictReader(cli("compare", "s", "--group-by", "loss", "--format", "csv",
                                   "--no-plots").stdout.splitlines()))
    assert {(r["noise_kind"], r["noise_realised_rate"]) for r in rows} == {("pooled", "nan")}
    # one rate per row: its own rate and realised rate, as before
    split = cli("compare", "s", "--format", "markdown", "--no-plots").stdout
    assert "symmetric 0.2 (realised 0.210)" in split and "pooled" not in split


# --- a loss put in an option's place is named by its class -----------------------------------


OWN_LOSS = '''
from lossbench.losses import CrossEntropyLoss


class MyLoss(CrossEntropyLoss):
    """Cross-entropy under another name: a loss from outside the package."""
'''


def test_a_loss_target_given_on_the_command_line_is_named_by_its_class(tmp_path, cli):
    (tmp_path / "my_pkg.py").write_text(OWN_LOSS)
    env = {"PYTHONPATH": os.pathsep.join(
        p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)}
    tiny = ("dataset=iris", "trainer=smoke", "model=linear", "trainer.plots=false",
            "print_config=false")
    own = cli("train", "loss._target_=my_pkg.MyLoss", *tiny, "hydra.run.dir=runs/own", env=env)
    assert own.returncode == 0, own.stderr
    assert "lossbench loss=MyLoss dataset=iris" in own.stdout  # the header
    assert read_metrics(tmp_path / "runs" / "own")["choices"]["loss"] == "MyLoss"
    ce = cli("train", *tiny, "hydra.run.dir=runs/ce", env=env)
    assert ce.returncode == 0, ce.stderr
    rows = list(csv.DictReader(cli("compare", "runs", "--format", "csv", "--no-plots")
                               .stdout.splitlines()))
    assert sorted(r["loss"] for r in rows) == ["MyLoss", "ce"]


# --- calibration compared like with like -------------------------------------------------


def test_class_probabilities_are_recorded_and_calibration_is_not_ranked_across_kinds(tmp_path,
                                                                                     cli):
    tiny = ("dataset=iris", "trainer=smoke", "model=mlp", "trainer.plots=false",
            "print_config=false")
    for loss in ("ce", "triplet"):
        proc = cli("train", f"loss={loss}", *tiny, f"hydra.run.dir=runs/{loss}")
        assert proc.returncode == 0, proc.stderr
    ce, triplet = (read_metrics(tmp_path / "runs" / loss) for loss in ("ce", "triplet"))
    assert ce["class_scores"] == "softmax" and triplet["class_scores"] == "knn_votes"
    assert "class probabilities: vote shares of the 5 nearest training embeddings" in (
        tmp_path / "runs" / "triplet" / "report.txt").read_text()
    assert "class probabilities: softmax of the logits" in (
        tmp_path / "runs" / "ce" / "report.txt").read_text()
    for metric in ("ece", "nll", "brier"):
        proc = cli("compare", "runs", "--metric", metric, "--out", "out")
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"lossbench: error: --metric {metric}: the runs of iris have class probabilities of "
            "two kinds (kNN vote shares: triplet; model probabilities: ce), whose calibration "
            "is not comparable; compare each kind apart, or by accuracy"]
        assert not (tmp_path / "out").exists()
    by_accuracy = cli("compare", "runs", "--format", "markdown", "--no-plots")
    assert by_accuracy.returncode == 0, by_accuracy.stderr
    assert ("iris: nll, brier and ece of kNN vote shares (triplet) are not comparable with "
            "those of model probabilities (ce).") in by_accuracy.stdout
    alone = cli("compare", "runs/ce", "--metric", "ece", "--format", "csv", "--no-plots")
    assert alone.returncode == 0, alone.stderr


def test_latex_carries_the_seeds_needed_for_mde(tmp_path, cli):
    paired_sweep(tmp_path / "s", {"ce": CE, "gce": GCE})
    rows = {r["loss"]: r for r in csv.DictReader(cli(
        "compare", "s", "--baseline", "ce", "--mde", "0.01", "--format", "csv").stdout
        .splitlines())}
    latex = cli("compare", "s", "--baseline", "ce", "--mde", "0.01", "--format", "latex",
                "--no-plots").stdout
    assert r"loss & accuracy & macro\_f1 & n for $\Delta=0.01$ \\" in latex
    assert r"\begin{tabular}{lrrr}" in latex
    gce = next(line for line in latex.splitlines() if line.startswith("gce &"))
    assert gce.endswith(f"& {rows['gce']['n_needed']} \\\\")
    assert "seeds needed to detect that difference" in latex
    plain = cli("compare", "s", "--baseline", "ce", "--format", "latex", "--no-plots").stdout
    assert "n for" not in plain
