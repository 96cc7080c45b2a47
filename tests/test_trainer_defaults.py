"""The trainer's defaults live in conf/trainer/default.yaml alone; the typed schema
(config/schema.py TrainerConfig) declares the same keys, each with a type and no value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from hydra import compose, initialize_config_module
from omegaconf import MISSING, OmegaConf

import lossbench
from lossbench.config.schema import TrainerConfig, register_schemas

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
