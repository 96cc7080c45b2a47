"""`lossbench study` and `compare --tune`: settings chosen on tuning seeds only, equal budgets,
edge warnings, a killed study that resumes with no trial lost or repeated, and the aggregate
statistics against hand computations."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import lossbench_cmd, read_metrics, run_dirs
from lossbench.results.comparison.records import Run
from lossbench.errors import UserError
from lossbench.experiment.study import SEARCH_DIR, Param, search_space
from lossbench.experiment.study_report import bootstrap_mean_rank_ci, mean_ranks, ranks
from lossbench.results.tuning import select_on_tuning_seeds, validation_score

TINY = ("trainer=smoke", "model=linear", "trainer.plots=false", "print_config=false")


# --------------------------------------------------------------------------------------------
# selection on tuning seeds


def test_validation_score_is_higher_for_better_runs_whatever_the_mode():
    assert validation_score({"status": "completed", "best_val": 0.9, "mode": "max"}) == 0.9
    assert validation_score({"status": "completed", "best_val": 0.3, "mode": "min"}) == -0.3
    assert validation_score({"status": "failed", "best_val": 0.9, "mode": "max"}) == -math.inf
    assert validation_score({"status": "completed", "best_val": float("nan")}) == -math.inf


def test_validation_score_breaks_accuracy_ties_by_the_selected_epochs_val_nll(tmp_path):
    """The rule that picked each run's epoch (accuracy, ties to lower val NLL) ranks runs too."""
    def run(name: str, accuracy: float, nll: float, labels: str = "noisy") -> Path:
        run_dir = tmp_path / name
        run_dir.mkdir()
        column = "val_nll_clean" if labels == "clean" else "val_nll"
        (run_dir / "history.csv").write_text(f"epoch,val_accuracy,{column}\n1,0.1,9.0\n"
                                             f"2,{accuracy},{nll}\n3,0.1,0.01\n")
        return run_dir

    def metrics(accuracy: float, labels: str = "noisy") -> dict:
        return {"status": "completed", "best_val": accuracy, "mode": "max", "best_epoch": 2,
                "selection": {"metric": "val_accuracy", "mode": "max", "tie_break": "val_nll",
                              "labels": labels}}

    sharp, flat = run("sharp", 0.9, 0.3), run("flat", 0.9, 0.8)
    assert validation_score(metrics(0.9), sharp) > validation_score(metrics(0.9), flat)
    assert validation_score(metrics(0.9), sharp) == pytest.approx(0.9, abs=1e-6)
    # any difference in accuracy decides, whatever the NLL
    worse = run("worse", 0.899, 0.0)
    assert validation_score(metrics(0.899), worse) < validation_score(metrics(0.9), flat)
    # selection on clean labels: the clean column breaks its ties
    clean = run("clean", 0.9, 0.1, labels="clean")
    assert validation_score(metrics(0.9, "clean"), clean) > validation_score(metrics(0.9), sharp)
    # no history (or no tie-break in the rule): the metric alone
    assert validation_score(metrics(0.9), tmp_path / "missing") == 0.9
    assert validation_score(metrics(0.9) | {"selection": {"tie_break": None}}, flat) == 0.9


def fake_run(loss: str, lr: float, seed: int, val: float, test: float) -> Run:
    metrics = {"status": "completed", "task": "multiclass", "dataset": "wine", "seed": seed,
               "best_val": val, "mode": "max", "test": {"accuracy": test}}
    config = {"seed": seed, "optimizer.lr": lr}
    return Run(path=Path(f"/runs/{loss}/{lr}/{seed}"), status="completed", metrics=metrics,
               config=config, choices={"loss": loss}, overrides={})


def test_settings_are_chosen_on_tuning_seeds_and_only_other_seeds_are_reported():
    runs = []
    # ce: lr 0.01 wins on validation for seeds 0, 1; lr 0.1 would win on seed 2 (and on test)
    for seed, (v_small, v_big) in enumerate([(0.9, 0.5), (0.8, 0.6), (0.1, 0.99)]):
        runs += [fake_run("ce", 0.01, seed, v_small, 0.7), fake_run("ce", 0.1, seed, v_big, 0.95)]
    for seed in range(3):
        runs += [fake_run("gce", 0.01, seed, 0.4, 0.6), fake_run("gce", 0.1, seed, 0.5, 0.65)]
    chosen, lines = select_on_tuning_seeds(runs, ["optimizer.lr"], {0, 1})
    picked = {(r.choices["loss"], r.config["optimizer.lr"]) for r in chosen}
    assert picked == {("ce", 0.01), ("gce", 0.1)}
    assert sorted(r.metrics["seed"] for r in chosen) == [2, 2]  # tuning seeds never reported
    assert any("ce: chose optimizer.lr=0.01 of 2" in line for line in lines)


def test_unequal_budgets_are_refused_unless_allowed():
    runs = [fake_run("ce", lr, seed, 0.5, 0.5) for lr in (0.01, 0.1, 1.0) for seed in (0, 1)]
    runs += [fake_run("gce", lr, seed, 0.5, 0.5) for lr in (0.01, 0.1) for seed in (0, 1)]
    with pytest.raises(UserError, match="unequal tuning budgets on wine.*ce 3, gce 2"):
        select_on_tuning_seeds(runs, ["optimizer.lr"], {0})
    chosen, _ = select_on_tuning_seeds(runs, ["optimizer.lr"], {0}, allow_unequal=True)
    assert {r.choices["loss"] for r in chosen} == {"ce", "gce"}


def test_a_choice_with_nothing_left_to_report_is_refused():
    runs = [fake_run(loss, 0.01, 0, 0.5, 0.5) for loss in ("ce", "gce")]
    with pytest.raises(UserError, match="no run outside the tuning seeds"):
        select_on_tuning_seeds(runs, ["optimizer.lr"], {0})


# --------------------------------------------------------------------------------------------
# search spaces and edges


@pytest.mark.parametrize("path", sorted(SEARCH_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_search_space_names_keys_the_loss_config_has(path, compose_cfg):
    loss = "ce" if path.stem == "shared" else path.stem
    cfg = compose_cfg(f"loss={loss}")
    for param in search_space(loss):
        assert OmegaConf.select(cfg, param.key) is not None, f"{param.key} not in loss={loss}"
        assert all(param.low <= g <= param.high for g in param.grid)


def test_every_shipped_loss_has_a_search_space():
    from lossbench.config.catalogue import group_options

    losses = sorted(group_options("loss"))
    assert len(losses) > 30
    missing = [loss for loss in losses if not (SEARCH_DIR / f"{loss}.yaml").is_file()]
    assert not missing, f"losses without a search space in {SEARCH_DIR}: {missing}"
    for loss in losses:  # the shared settings first, then the loss's own
        assert [p.key for p in search_space(loss)][:2] == ["optimizer.lr", "optimizer.weight_decay"]


def test_a_users_search_space_folder_is_read_before_the_shipped_one(tmp_path):
    (tmp_path / "gce.yaml").write_text("loss.q: {low: 0.5, high: 0.6}\n")
    (tmp_path / "shared.yaml").write_text("optimizer.lr: {low: 0.001, high: 0.01, log: true}\n")
    (tmp_path / "mine.yaml").write_text("{}\n")  # a loss of the user's own: shared alone
    assert [(p.key, p.low, p.high) for p in search_space("gce", tmp_path)] == [
        ("optimizer.lr", 0.001, 0.01), ("loss.q", 0.5, 0.6)]
    assert [p.key for p in search_space("sce", tmp_path)] == ["optimizer.lr", "loss.alpha",
                                                               "loss.beta"]
    assert [p.key for p in search_space("mine", tmp_path)] == ["optimizer.lr"]


def test_values_at_the_edge_of_the_search_space_are_flagged():
    lr = Param("optimizer.lr", 1e-4, 1e-1, log=True, grid=[1e-3, 1e-2, 1e-1])
    assert lr.at_edge(1.2e-4, "tpe") and lr.at_edge(0.09, "tpe")
    assert not lr.at_edge(3e-3, "tpe")
    # on the log scale 1e-2 is two thirds of the way, not the near the top as linearly
    assert not lr.at_edge(1e-2, "random")
    q = Param("loss.q", 0.1, 1.0)
    assert q.at_edge(0.97, "tpe") and not q.at_edge(0.5, "tpe")
    assert lr.at_edge(1e-1, "grid") and not lr.at_edge(1e-2, "grid")


def test_grid_points_are_the_whole_product_in_a_seeded_order():
    from lossbench.experiment.study import StudySettings, grid_points

    space = search_space("sce")  # lr 2 × weight decay 1 × alpha 2 × beta 1 grid values
    points = grid_points(StudySettings(sampler="grid"), space, index=0)
    assert len(points) == 4 and len({json.dumps(p, sort_keys=True) for p in points}) == 4
    assert {p["optimizer.lr"] for p in points} == {1e-3, 1e-2}
    assert {p["loss.alpha"] for p in points} == {0.1, 1.0}
    assert points == grid_points(StudySettings(sampler="grid"), space, index=0)


# --------------------------------------------------------------------------------------------
# the aggregate over datasets, by hand


def test_ranks_share_ties():
    assert ranks({"a": 0.9, "b": 0.8, "c": 0.9}, higher_is_better=True) == {
        "a": 1.5, "c": 1.5, "b": 3.0}
    assert ranks({"a": 0.1, "b": 0.3}, higher_is_better=False) == {"a": 1.0, "b": 2.0}


def test_mean_rank_over_conditions_matches_a_hand_computation():
    table = {"wine": {"ce": [0.9, 0.7], "gce": [0.6, 0.8], "mae": [0.1, 0.3]},   # 0.8 0.7 0.2
             "iris": {"ce": [0.5, 0.5], "gce": [0.9, 0.9], "mae": [0.4, 0.6]},   # 0.5 0.9 0.5
             "moons": {"ce": [0.2], "gce": [0.1], "mae": [0.3]}}                  # 0.2 0.1 0.3
    # ranks: wine ce 1 gce 2 mae 3; iris gce 1, ce/mae 2.5; moons mae 1 ce 2 gce 3
    assert mean_ranks(table, higher_is_better=True) == pytest.approx(
        {"ce": (1 + 2.5 + 2) / 3, "gce": (2 + 1 + 3) / 3, "mae": (3 + 2.5 + 1) / 3})


def test_bootstrap_ci_of_the_mean_rank_matches_the_resampling_distribution():
    # one loss better on every seed of every dataset: rank 1 in every resample
    table = {"a": {"x": [0.9, 0.95], "y": [0.1, 0.2]}, "b": {"x": [0.7, 0.8], "y": [0.3, 0.4]}}
    assert bootstrap_mean_rank_ci(table, True, reps=200) == {"x": (1.0, 1.0), "y": (2.0, 2.0)}
    # x = [1, 0] resamples to mean 1, 0.5, 0 with p 1/4, 1/2, 1/4 against y's constant 0.5:
    # rank 1, 1.5 (tie), 2, so the 95% percentile interval is [1, 2] for both
    table = {"only": {"x": [1.0, 0.0], "y": [0.5, 0.5]}}
    assert bootstrap_mean_rank_ci(table, True, reps=2000, seed=1) == {
        "x": (1.0, 2.0), "y": (1.0, 2.0)}
    # with two datasets the mean rank moves in steps of 1/4: its extremes come within the CI
    table = {"d1": {"x": [1.0, 0.0], "y": [0.5, 0.5]}, "d2": {"x": [1.0, 1.0], "y": [0.0, 0.0]}}
    low, high = bootstrap_mean_rank_ci(table, True, reps=2000, seed=1)["x"]
    assert (low, high) == (1.0, 1.5)


# --------------------------------------------------------------------------------------------
# the command


def test_study_mistakes_are_one_line_and_write_nothing(cli, tmp_path):
    for args, message in [
        (("losses=ce,nope",), "no search space for loss nope"),
        (("loss=ce",), "set loss through losses, not loss="),
        (("seeds.tune=2", "seeds.report_from=1"), "would report tuning seeds"),
        (("trials=two",), "trials"),
        (("losses=ce", "model=nope"), "model"),
        (("losses=ce,gce", "sampler=grid", "trials=3"), "fewer points (ce 2, gce 6)"),
        # every loss against every dataset, as `lossbench train` checks one: before any trial
        (("losses=ce,huber", "datasets=iris,wine"),
         "study: loss=huber does not fit the multiclass task of dataset iris; losses that do: "),
        (("losses=ce,gcee",), "no such loss (did you mean gce?)"),
        (("losses=ce", "search_spaces=nowhere"), "search_spaces=nowhere: no such folder"),
    ]:
        proc = cli("study", *args, "dir=s")
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "s").exists()


def test_without_optuna_the_study_says_which_extra_to_install(cli, tmp_path):
    import os

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "optuna.py").write_text("raise ImportError('optuna is not installed')\n")
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    proc = cli("study", "losses=ce", "dir=s", env={"PYTHONPATH": path})
    assert proc.returncode == 2
    assert proc.stderr == "lossbench: error: study: needs optuna: pip install 'lossbench[study]'\n"
    assert not (tmp_path / "s").exists()


def trials_in(study_dir: Path) -> dict[str, list[tuple[int, str]]]:
    import optuna

    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    out = {}
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        out[summary.study_name] = [(t.number, t.state.name) for t in study.get_trials()]
    return out


@pytest.mark.slow
def test_a_killed_study_resumes_with_no_trial_lost_or_repeated(cli, tmp_path):
    study_dir = tmp_path / "s"
    args = ("study", "losses=ce,gce,sce,mae", "datasets=wine,iris", "trials=2", "seeds.tune=1",
            "seeds.report=2", *TINY, f"dir={study_dir}")
    proc = subprocess.Popen([*lossbench_cmd(), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    finished = 0
    for line in proc.stdout:  # kill it once 5 of the 16 trials have a result
        finished += " trial " in line and "validation" in line
        if finished == 5:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    before = trials_in(study_dir)
    assert sum(len(t) for t in before.values()) < 16  # killed mid-way
    kept = {p: p.stat().st_mtime_ns for p in (study_dir / "tune").rglob("metrics.json")
            if read_metrics(p.parent)["status"] == "completed"}
    assert len(kept) >= 5

    resumed = cli("study", f"dir={study_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"study: resuming {study_dir}" in resumed.stdout
    after = trials_in(study_dir)
    # every (dataset, loss): exactly trials=2, numbered 0 and 1, all complete
    assert after == {f"{d}/{loss}": [(0, "COMPLETE"), (1, "COMPLETE")]
                     for d in ("wine", "iris") for loss in ("ce", "gce", "sce", "mae")}
    # what completed before the kill was not run again
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())
    tune_runs = run_dirs(study_dir / "tune")
    assert len(tune_runs) == 16 and all(read_metrics(r)["seed"] == 0 for r in tune_runs)

    report_runs = [read_metrics(r) for r in run_dirs(study_dir / "report")]
    assert len(report_runs) == 16
    assert {m["seed"] for m in report_runs} == {1000, 1001}  # never a tuning seed
    record = json.loads((study_dir / "study.json").read_text())
    budgets = {(d, loss): rec["trials"] for d, per in record["losses"].items()
               for loss, rec in per.items()}
    assert set(budgets.values()) == {2}
    # trainer=smoke: 2 epochs a run, 2 trials of 1 run each per loss
    assert {rec["epochs"] for per in record["losses"].values() for rec in per.values()} == {4}
    for dataset, per_loss in record["losses"].items():
        for loss, rec in per_loss.items():
            chosen = rec["history"][rec["chosen_trial"]]
            assert chosen["value"] == max(t["value"] for t in rec["history"])
            # the report runs used the chosen trial's values
            for m in report_runs:
                if m["dataset"] == dataset and m["choices"]["loss"] == loss:
                    assert m["config"]["optimizer"]["lr"] == pytest.approx(
                        rec["chosen"]["optimizer.lr"])
    # edge warnings: a chosen value in the outer 5% of its range (log10 scale for log ranges)
    text = (study_dir / "study.md").read_text()
    for dataset, per_loss in record["losses"].items():
        for loss, rec in per_loss.items():
            edges = []
            for key, value in rec["chosen"].items():
                space = rec["space"][key]
                scale = math.log10 if space["log"] else (lambda x: x)
                where = (scale(value) - scale(space["low"])) / (
                    scale(space["high"]) - scale(space["low"]))
                if not 0.05 < where < 0.95:
                    edges.append(key)
                    assert f"- {dataset} {loss}: {key}=" in text
            assert sorted(rec["at_edge"]) == sorted(edges)
    assert set(record["aggregate"]["mean_rank"]) == {"ce", "gce", "sce", "mae"}
    assert sum(record["aggregate"]["mean_rank"].values()) == pytest.approx(1 + 2 + 3 + 4)
    text = (study_dir / "study.md").read_text()
    assert "## Comparison on the report seeds" in text and "mean rank" in text
    for png in ("sensitivity_wine.png", "sensitivity_iris.png"):
        assert (study_dir / png).read_bytes()[:4] == b"\x89PNG"

    # a finished study's command again changes nothing and rewrites the same report
    again = cli("study", f"dir={study_dir}")
    assert again.returncode == 0 and trials_in(study_dir) == after
    assert len(run_dirs(study_dir / "report")) == 16


@pytest.mark.slow
def test_submitit_launcher_runs_each_run_as_a_job(cli, tmp_path):
    """submitit's local executor here (SLURM where sbatch exists): one job per run."""
    study_dir = tmp_path / "s"
    proc = cli("study", "losses=ce", "datasets=iris", "trials=1", "seeds.tune=1",
               "seeds.report=1", *TINY, "launcher=submitit", f"dir={study_dir}")
    assert proc.returncode == 0, proc.stderr
    runs = run_dirs(study_dir / "tune") + run_dirs(study_dir / "report")
    assert [read_metrics(r)["seed"] for r in runs] == [0, 1000]
    assert all(read_metrics(r)["status"] == "completed" for r in runs)
    assert len(list((study_dir / ".submitit").glob("*_result.pkl"))) == 2


def test_each_dataset_under_each_condition_is_a_stratum_whose_overrides_come_last():
    from lossbench.experiment.study import StudySettings, parse_args, run_overrides

    settings, given = parse_args(["datasets=wine,iris", "conditions.clean=dataset.noise.rate=0",
                                  "conditions.noisy=dataset.noise.kind=symmetric "
                                  "dataset.noise.rate=0.4", "dataset.noise.rate=0.1",
                                  "model=linear"])
    assert isinstance(settings, StudySettings) and "conditions.noisy" in given
    assert [name for name, _ in settings.strata()] == [
        "wine-clean", "wine-noisy", "iris-clean", "iris-noisy"]
    overrides = run_overrides(settings, settings.strata()[1], "gce", 3, {"loss.q": 0.5})
    assert overrides == ["loss=gce", "seed=3", "dataset.noise.rate=0.1", "model=linear",
                         "dataset=wine", "dataset.noise.kind=symmetric",
                         "dataset.noise.rate=0.4", "loss.q=0.5"]


@pytest.mark.slow
def test_conditions_are_tuned_and_compared_apart_and_aggregated(cli, tmp_path):
    study_dir = tmp_path / "s"
    proc = cli("study", "losses=ce,mae", "datasets=iris", "conditions.clean=dataset.noise.rate=0",
               "conditions.noisy=dataset.noise.kind=symmetric dataset.noise.rate=0.4",
               "trials=1", "seeds.tune=1", "seeds.report=2", *TINY, f"dir={study_dir}")
    assert proc.returncode == 0, proc.stderr
    for stratum, rate in (("iris-clean", 0.0), ("iris-noisy", 0.4)):
        runs = run_dirs(study_dir / "tune" / stratum) + run_dirs(study_dir / "report" / stratum)
        assert len(runs) == 2 * (1 + 2)
        assert {read_metrics(r)["config"]["dataset"]["noise"]["rate"] for r in runs} == {rate}
    record = json.loads((study_dir / "study.json").read_text())
    assert record["aggregate"]["conditions"] == ["iris-clean", "iris-noisy"]
    assert "### iris-noisy" in (study_dir / "study.md").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_a_study_and_says_how_to_resume_it(tmp_path):
    study_dir = tmp_path / "s"
    proc = subprocess.Popen([*lossbench_cmd(), "study", "losses=ce", "datasets=iris", "trials=4",
                             "seeds.tune=1", *TINY, f"dir={study_dir}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if " trial 1/4 " in line:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"study: stopped; lossbench study dir={study_dir} resumes it" in err
    assert "Traceback" not in err
    assert len(trials_in(study_dir)["iris/ce"]) < 4


@pytest.mark.slow
def test_kill_int_between_trials_stops_a_study_started_as_a_background_job(tmp_path):
    """A shell starts a background job with SIGINT ignored; `kill -INT` still means Ctrl-C to
    lossbench, also where no run is training: here as the second loss's tuning starts."""
    study_dir = tmp_path / "s"
    args = ["study", "losses=ce,mae", "datasets=iris", "trials=1", "seeds.tune=1", *TINY,
            f"dir={study_dir}"]
    code = (
        "import os, signal, sys, time\n"
        "import lossbench.experiment.study as study\n"
        "tune, calls = study.tune_loss, []\n"
        "def second_stops(*args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:  # between the two losses' tuning: no run is training\n"
        "        os.kill(os.getpid(), signal.SIGINT); time.sleep(2)\n"
        "    return tune(*args, **kwargs)\n"
        "study.tune_loss = second_stops\n"
        f"sys.argv = ['lossbench', *{list(args)!r}]\n"
        "from lossbench.cli import console_main\n"
        "console_main()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert f"study: stopped; lossbench study dir={study_dir} resumes it" in proc.stderr
    assert "iris/mae" not in trials_in(study_dir)


def test_resuming_with_other_settings_is_refused(cli, tmp_path):
    study_dir = tmp_path / "s"
    study_dir.mkdir()
    (study_dir / "study.yaml").write_text("losses: [ce]\ndatasets: [iris]\ntrials: 1\n")
    proc = cli("study", f"dir={study_dir}", "trials=3")
    assert proc.returncode == 2
    assert "was started with other settings (trials)" in proc.stderr


@pytest.mark.slow
def test_compare_tune_reports_only_the_other_seeds_of_each_loss_choice(cli, tmp_path):
    grid = tmp_path / "grid"
    cli("train", "-m", "loss=ce,gce", "optimizer.lr=0.001,0.05", "seed=0,1", *TINY,
        "dataset=iris", f"hydra.sweep.dir={grid}", check=True)
    proc = cli("compare", str(grid), "--tune", "optimizer.lr", "--tune-seeds", "0",
               "--format", "json", "--no-plots", check=True)
    rows = json.loads(proc.stdout)["configurations"]
    runs = [read_metrics(r) for r in run_dirs(grid)]
    for loss in ("ce", "gce"):
        on_seed0 = [m for m in runs if m["choices"]["loss"] == loss and m["seed"] == 0]
        # the better validation value in its direction (iris's small validation split: NLL)
        best_lr = max(on_seed0, key=lambda m: m["best_val"] * (-1 if m["mode"] == "min" else 1)
                      )["config"]["optimizer"]["lr"]
        row = [r for r in rows if r["loss"] == loss]
        assert len(row) == 1 and row[0]["n_runs"] == 1
        reported = read_metrics(Path(row[0]["runs"]))
        assert reported["seed"] == 1 and reported["config"]["optimizer"]["lr"] == best_lr
    assert "ce: chose optimizer.lr=" in proc.stderr

    extra = tmp_path / "extra"
    cli("train", "-m", "loss=ce", "optimizer.lr=0.01", "seed=0,1", *TINY, "dataset=iris",
        f"hydra.sweep.dir={extra}", check=True)
    refused = cli("compare", str(grid), str(extra), "--tune", "optimizer.lr", "--tune-seeds", "0")
    assert refused.returncode == 2
    assert "unequal tuning budgets on iris (configurations per loss: ce 3, gce 2)" in refused.stderr
    allowed = cli("compare", str(grid), str(extra), "--tune", "optimizer.lr", "--tune-seeds", "0",
                  "--allow-unequal-budget", "--no-plots", "--out", str(tmp_path))
    assert allowed.returncode == 0, allowed.stderr


def test_no_extra_pins_optuna_below_3_and_the_study_extra_needs_3():
    import tomllib

    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for name, requirements in extras.items():
        for text in requirements:
            req = Requirement(text)
            assert req.name != "hydra-optuna-sweeper", f"[{name}] would downgrade Optuna"
            if req.name == "optuna":
                assert not req.specifier.contains("2.10.1"), f"[{name}] allows optuna 2"
                assert req.specifier.contains("5.0.0"), f"[{name}] refuses a current optuna"
    assert any(Requirement(t).name == "optuna" for t in extras["study"])


def trial_params(study_dir: Path) -> dict[str, list[dict[str, float]]]:
    import optuna

    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    return {s.study_name: [t.params for t in optuna.load_study(
        study_name=s.study_name, storage=storage).get_trials()]
        for s in optuna.get_all_study_summaries(storage)}


@pytest.mark.slow
def test_a_study_killed_at_several_points_and_resumed_tries_what_an_uninterrupted_one_does(
        cli, tmp_path):
    """Rebuilt on resuming, a sampler seeded once would start its stream again and give the
    trials after a kill the values of the first ones: fewer distinct settings for that loss."""
    args = ("losses=ce", "datasets=iris", "trials=5", "seeds.tune=1", "seeds.report=1",
            "sampler=random", *TINY)
    whole = cli("study", *args, f"dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    expected = trial_params(tmp_path / "whole")
    assert len(expected["iris/ce"]) == 5

    study_dir = tmp_path / "killed"
    for kill_after in (1, 2, 1):  # trials with a result before each kill
        proc = subprocess.Popen([*lossbench_cmd(), "study", *args, f"dir={study_dir}"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        seen = 0
        for line in proc.stdout:
            seen += " trial " in line and "validation" in line
            if seen == kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        proc.stdout.close()
    assert len(trial_params(study_dir)["iris/ce"]) < 5  # still unfinished
    resumed = cli("study", f"dir={study_dir}")
    assert resumed.returncode == 0, resumed.stderr
    got = trial_params(study_dir)
    assert got == expected
    values = [p["optimizer.lr"] for p in got["iris/ce"]]
    assert len(set(values)) == len(values)  # no trial repeats another


@pytest.mark.slow
def test_a_study_with_a_loss_it_could_not_tune_reports_the_rest_and_exits_non_zero(cli, tmp_path):
    (tmp_path / "brokenloss.py").write_text(
        "import torch\n\n"
        "class Broken(torch.nn.Module):\n"
        "    def __init__(self, **kwargs):\n"
        "        super().__init__()\n\n"
        "    def forward(self, input, target):\n"
        "        raise RuntimeError('broken on purpose')\n")
    study_dir = tmp_path / "s"
    proc = cli("study", "losses=ce", "datasets=iris", "trials=1", "seeds.tune=1",
               "seeds.report=1", *TINY, "loss._target_=brokenloss.Broken", f"dir={study_dir}",
               env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1, proc.stderr
    assert "study: could not tune ce on iris: every trial failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (study_dir / "study.md").is_file()  # the report of what could be tuned is written
