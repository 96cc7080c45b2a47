"""The noisy-label study presets (conf/experiment): what they compose to, and the CPU preset
run in its smoke form as a user would, one sweep that the compare command reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import run_dirs


def composed(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def sweep_values(cfg) -> dict[str, list[str]]:
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    return {k: str(v).split(",") for k, v in params.items()}


def test_cpu_preset_sweeps_robust_losses_rates_and_seeds_on_digits():
    cfg = composed("experiment=noisy_labels")
    assert cfg.dataset._target_.endswith(".digits")
    assert cfg.dataset.noise.kind == "symmetric"
    assert cfg.trainer.early_stopping is False  # "last" is the end of the budget
    params = sweep_values(cfg)
    assert params["loss"] == ["ce", "gce", "sce", "nce_rce", "mae"]
    assert [float(r) for r in params["dataset.noise.rate"]] == [0.0, 0.2, 0.4, 0.6]
    assert len(params["seed"]) >= 5


def test_cpu_preset_takes_another_dataset_from_the_command_line():
    cfg = composed("experiment=noisy_labels", "dataset=wine")
    assert cfg.dataset._target_.endswith(".wine")
    assert cfg.dataset.noise.kind == "symmetric"


def test_gpu_preset_is_the_papers_cifar10_recipe():
    cfg = composed("experiment=noisy_labels_cifar10")
    assert cfg.dataset._target_.endswith(".cifar10")
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.01, 0.9, 1e-4)
    assert cfg.scheduler._target_.endswith("CosineAnnealingLR")
    assert cfg.scheduler.T_max == 120 == cfg.trainer.epochs
    assert (cfg.trainer.batch_size, cfg.trainer.grad_clip) == (128, 5.0)
    rates = [float(r) for r in sweep_values(cfg)["dataset.noise.rate"]]
    assert rates == [0.0, 0.2, 0.4, 0.6, 0.8]


@pytest.mark.slow
def test_cpu_preset_smoke_form_runs_and_compares(cli, tmp_path):
    sweep = tmp_path / "study"
    proc = cli("train", "-m", "experiment=noisy_labels", "loss=ce,mae", "dataset.noise.rate=0.0,0.4",
               "seed=0", "trainer.epochs=2", "trainer.max_batches=2", "print_config=false",
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    runs = run_dirs(sweep)
    assert len(runs) == 4
    seen = set()
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        noise = metrics["data"]["noise"]
        assert noise["kind"] == "symmetric"
        realised = noise["realised_rate"]["train"]
        assert (realised > 0.2) if noise["rate"] == 0.4 else (realised == 0.0)
        seen.add((metrics["choices"]["loss"], noise["rate"]))
    assert seen == {("ce", 0.0), ("ce", 0.4), ("mae", 0.0), ("mae", 0.4)}
    out = cli("compare", str(sweep))
    assert out.returncode == 0, out.stderr
    assert "mae" in out.stdout and "ce" in out.stdout


def test_the_preset_comment_and_the_readme_give_one_timing_and_a_shipped_launcher():
    import re

    # The repository's own files: under CI the package is installed, not linked, so the README
    # is found beside the tests and the configs inside the installed package.
    import lossbench

    root = Path(__file__).resolve().parents[1]
    conf = Path(lossbench.__file__).resolve().parent / "conf"
    comment = (conf / "experiment" / "noisy_labels.yaml").read_text()
    readme = (root / "README.md").read_text()
    section = readme.split("## Label noise: a published trend", 1)[1].split("\n## ", 1)[0]
    timing = re.compile(r"about (\d+)\s+(seconds|minutes) on (\d+) cores")
    assert timing.search(" ".join(comment.replace("#", " ").split())).groups() == \
        timing.search(" ".join(section.split())).groups()
    launchers = re.findall(r"hydra/launcher=(\w+)", comment + section)
    assert launchers and all(
        (conf / "hydra" / "launcher" / f"{name}.yaml").is_file() for name in launchers)
