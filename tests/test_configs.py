"""Every YAML under conf/ composes, and every component config instantiates what it names."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

import lossbench
from lossbench.data import RawData
from lossbench.data.prepare import dataset_arguments

CONF = Path(lossbench.__file__).parent / "conf"
GROUP_FILES = sorted(p.relative_to(CONF) for p in CONF.rglob("*.yaml") if p.parent != CONF)
# Datasets that must be instantiated here need no files and no download.
EMBEDDED_DATASETS = "lossbench.data.sklearn_datasets."


def _compose(group: str, option: str):
    hydra_group = group.startswith("hydra/")
    override = f"{group}={option}"
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[override],
                       return_hydra_config=hydra_group)


def _node(cfg, group: str):
    """The group's node, or None for `# @package _global_` files (experiments)."""
    node = cfg
    for part in group.split("/"):
        if part not in node:
            return None
        node = node[part]
    return node


def test_root_config_has_the_documented_defaults():
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    expected = {"dataset": "digits", "model": "mlp", "loss": "ce", "optimizer": "adam",
                "scheduler": "none", "trainer": "default"}
    assert {k: choices[k] for k in expected} == expected
    assert cfg.seed == 0
    assert OmegaConf.to_container(cfg.dataset.split) == {"train": 0.6, "val": 0.2, "test": 0.2}
    assert cfg.optimizer.lr == 0.001 and cfg.trainer.batch_size == 128


@pytest.mark.parametrize("path", GROUP_FILES, ids=str)
def test_group_file_composes_and_instantiates(path):
    group, option = str(path.parent), path.stem
    text = (CONF / path).read_text()
    assert text.lstrip().startswith("#"), "each config says how to run it in a header comment"
    cfg = _compose(group, option)
    node = _node(cfg, group)
    if node is None or group.startswith("hydra/"):
        return  # composing without an error is what is checked for these
    target = node.get("_target_") if hasattr(node, "get") else None
    if target:  # the registry is `_target_`: it must name something importable
        module, _, name = target.rpartition(".")
        assert hasattr(importlib.import_module(module), name), target
    if group == "dataset" and str(target).startswith(EMBEDDED_DATASETS):
        assert isinstance(instantiate(dataset_arguments(node)), RawData)
    elif group == "model":
        model = instantiate(node, input_shape=[1, 8, 8], num_outputs=3)
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    elif group == "loss":
        assert isinstance(instantiate(node), torch.nn.Module)
    elif group == "optimizer":
        opt = instantiate(node)(params=[torch.nn.Parameter(torch.zeros(3))])
        assert isinstance(opt, torch.optim.Optimizer)
    elif group == "scheduler" and target:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
        factory = instantiate(node)
        sched = factory(opt, total_steps=10) if option == "onecycle" else factory(opt)
        assert hasattr(sched, "step")
    elif group == "trainer":
        assert (node.epochs == "auto" or node.epochs >= 1) and node.batch_size >= 1
