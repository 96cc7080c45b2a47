"""The trainer's defaults live in conf/trainer/default.yaml alone; the typed schema
(config/schema.py TrainerConfig) declares the same keys, each with a type and no value."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import read_metrics, run_dirs
from hydra import compose, initialize_config_module
from omegaconf import MISSING, OmegaConf

import lossbench
from lossbench.config.schema import TrainerConfig, register_schemas
from lossbench.engine.selection import MIN_VAL_SAMPLES_FOR_ACCURACY, resolve_monitor

DEFAULT_YAML = Path(lossbench.__file__).parent / "conf" / "trainer" / "default.yaml"


def test_every_trainer_key_has_a_type_in_the_schema_and_a_value_only_in_the_yaml():
    values = yaml.safe_load(DEFAULT_YAML.read_text())
    declared = {f.name: f.default for f in dataclasses.fields(TrainerConfig)}
    assert list(declared) == list(values)  # same keys, in the order default.yaml documents them
    assert all(default is MISSING for default in declared.values()), declared


def test_the_composed_trainer_holds_the_yaml_values_with_the_schema_types():
    register_schemas()
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        trainer = compose(config_name="config").trainer
    assert OmegaConf.missing_keys(trainer) == set()
    values = yaml.safe_load(DEFAULT_YAML.read_text())
    typed = OmegaConf.merge(OmegaConf.structured(TrainerConfig), values)
    assert OmegaConf.to_container(trainer) == OmegaConf.to_container(typed)
    for key, value in values.items():  # every value, as the YAML writes it
        assert trainer[key] == value or str(trainer[key]) == str(value), key
    assert trainer.precision == "32" and isinstance(trainer.checkpoint_interval_s, float)


def test_auto_monitors_the_nll_where_the_validation_split_is_too_small_for_accuracy():
    small = MIN_VAL_SAMPLES_FOR_ACCURACY - 1  # one sample: more than half a point of accuracy
    for task in ("binary", "multiclass"):
        assert resolve_monitor(task, n_val=small) == ("val_nll", "min")
        assert resolve_monitor(task, n_val=MIN_VAL_SAMPLES_FOR_ACCURACY) == ("val_accuracy", "max")
    assert resolve_monitor("regression", n_val=small) == ("val_rmse", "min")
    assert resolve_monitor("multiclass", "val_accuracy", n_val=small) == ("val_accuracy", "max")


def test_a_small_dataset_run_selects_on_the_nll_and_a_larger_one_on_accuracy(cli, tmp_path):
    proc = cli("train", "dataset=wine", "trainer.epochs=3", "print_config=false",
               "trainer.plots=false", "hydra.run.dir=wine", check=True)
    wine = read_metrics(tmp_path / "wine")
    assert wine["selection"]["metric"] == "val_nll" and wine["selection"]["tie_break"] is None
    assert wine["monitor"] == "val_nll" and wine["split_sizes"]["val"] < 200
    assert "selection: best val_nll (min)" in proc.stdout
    cli("train", "dataset=digits", "trainer=smoke", "print_config=false", "trainer.plots=false",
        "hydra.run.dir=digits", check=True)
    digits = read_metrics(tmp_path / "digits")
    assert digits["selection"]["metric"] == "val_accuracy" and digits["split_sizes"]["val"] >= 200


@pytest.mark.slow
def test_the_small_data_defaults_give_a_calibrated_model(cli, tmp_path):
    """docs/protocol.md: with the defaults, 3 seeds each, the selected model is calibrated
    (mean test ECE <= 0.10) and as accurate as under accuracy selection (wine 0.991, iris 0.967,
    breast_cancer 0.977, measured before the change)."""
    cli("train", "-m", "dataset=wine,iris,breast_cancer", "seed=0,1,2", "trainer.plots=false",
        "print_config=false", "hydra.sweep.dir=sweep", check=True, timeout=900)
    per_dataset: dict[str, list[dict]] = {}
    for run in run_dirs(tmp_path / "sweep"):
        metrics = read_metrics(run)
        per_dataset.setdefault(metrics["dataset"], []).append(metrics["test"])
    assert sorted(per_dataset) == ["breast_cancer", "iris", "wine"], json.dumps(per_dataset)[:200]
    floor = {"wine": 0.99, "iris": 0.96, "breast_cancer": 0.97}
    for dataset, tests in per_dataset.items():
        assert len(tests) == 3
        assert statistics.mean(t["ece"] for t in tests) <= 0.10, dataset
        assert statistics.mean(t["accuracy"] for t in tests) >= floor[dataset], dataset
