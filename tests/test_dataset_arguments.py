"""A dataset config's keys go either to lossbench's preparation (PREP_KEYS) or to its loader;
a loader that would silently miss one of them is refused before any data is read."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

import lossbench
from lossbench.data.prepare import PREP_KEYS, dataset_arguments, prepare_data
from lossbench.errors import UserError

DATASETS = sorted(p.stem for p in (Path(lossbench.__file__).parent / "conf" / "dataset").glob(
    "*.yaml"))


def test_prep_keys_are_what_prepare_data_takes():
    params = set(inspect.signature(prepare_data).parameters) - {"raw", "seed"}
    assert params == set(PREP_KEYS)


@pytest.mark.parametrize("name", DATASETS)
def test_every_shipped_dataset_config_fits_its_loader(name):
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"dataset={name}"])
    arguments = dataset_arguments(cfg.dataset)
    assert arguments["_target_"] == cfg.dataset._target_
    assert not set(arguments) & set(PREP_KEYS)
    assert set(arguments) | set(PREP_KEYS) >= set(cfg.dataset) - {"_target_"}


def test_a_loader_key_it_does_not_take_is_a_user_error():
    with pytest.raises(UserError, match=r"takes no argument 'n_sample' \(dataset\.n_sample\); "
                                        r"did you mean dataset\.n_samples\?"):
        dataset_arguments({"_target_": "lossbench.data.sklearn_datasets.moons", "n_sample": 5,
                           "noise": {"kind": "none"}})


def _assert_one_line_exit_2(proc, *parts):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("lossbench: error: "), proc.stderr
    text = "\n".join(lines)
    for part in parts:
        assert part in text, text
    return lines


def test_a_loader_with_a_noise_parameter_is_refused_by_the_cli(cli, tmp_path):
    (tmp_path / "my_data.py").write_text(
        "from lossbench.data.sklearn_datasets import iris\n\n\n"
        "def noisy_iris(noise=0.1):\n    return iris()\n")
    run = tmp_path / "run"
    proc = cli("train", "dataset=iris", "dataset._target_=my_data.noisy_iris", "model=linear",
               "trainer=smoke", "print_config=false", f"hydra.run.dir={run}")
    lines = _assert_one_line_exit_2(proc, "my_data.noisy_iris", "parameter 'noise'",
                                    "dataset.noise", "rename")
    assert len(lines) == 1
    assert not run.exists()


def test_a_misspelt_dataset_key_names_the_right_one(cli, tmp_path):
    run = tmp_path / "run"
    common = ("dataset=moons", "model=linear", "trainer=smoke", "print_config=false",
              f"hydra.run.dir={run}")
    # an existing key misspelt: Hydra refuses to override it, the hint names the loader's key
    lines = _assert_one_line_exit_2(cli("train", *common, "dataset.n_sample=5"),
                                    "'dataset.n_sample'", "did you mean dataset.n_samples?")
    assert len(lines) <= 2
    # added with +: the loader's signature refuses it, in one line
    lines = _assert_one_line_exit_2(cli("train", *common, "+dataset.n_sample=5"),
                                    "sklearn_datasets.moons takes no argument 'n_sample'",
                                    "did you mean dataset.n_samples?")
    assert len(lines) == 1
    assert not run.exists()
