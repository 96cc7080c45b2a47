"""`dataset=hf`: Hugging Face datasets made in the test (`Dataset.from_dict`, `save_to_disk`,
parquet), with a ClassLabel and an image feature: their splits, class names, images and numeric
columns reach the run; every mistake in the data is one line."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import read_metrics, run_dirs
from lossbench.data.hf import hf
from lossbench.errors import UserError

datasets = pytest.importorskip("datasets")

CLASSES = ["cat", "dog", "eel"]
RUN = ["model=cnn", "trainer=smoke", "trainer.batch_size=8", "trainer.plots=false"]


def images(n: int, size: int = 16, channels: int = 3, seed: int = 0) -> tuple[list, list[int]]:
    """n PIL images whose brightness tells their class, and the classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = [i % len(CLASSES) for i in range(n)]
    shape = (size, size, channels) if channels == 3 else (size, size)
    pictures = [Image.fromarray((rng.integers(0, 60, shape) + 80 * k).astype(np.uint8))
                for k in labels]
    return pictures, labels


def image_dataset(n: int, seed: int = 0, **kwargs):
    pictures, labels = images(n, seed=seed, **kwargs)
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({"img": pictures, "label": labels}, features=features)


@pytest.fixture
def hf_env(tmp_path):
    """datasets' cache inside the test's folder, and no Hub."""
    return {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}


def test_a_save_to_disk_folder_keeps_its_splits_and_class_names(cli, tmp_path, hf_env):
    datasets.DatasetDict(train=image_dataset(30), validation=image_dataset(12, seed=1),
                         test=image_dataset(9, seed=2)).save_to_disk(tmp_path / "pets")
    proc = cli("train", "dataset=hf", "dataset.path=pets", *RUN, env=hf_env)
    assert proc.returncode == 0, proc.stderr
    assert "pets (multiclass, 30/12/9 train/val/test)" in proc.stdout
    (run,) = run_dirs(tmp_path)
    metrics = read_metrics(run)
    assert metrics["split_sizes"] == {"train": 30, "val": 12, "test": 9}
    assert metrics["data"]["train_class_counts"] == [10, 10, 10]
    report = (run / "report.txt").read_text()
    assert all(name in report for name in CLASSES)  # the ClassLabel's names, not 0, 1, 2


def test_parquet_files_without_splits_get_lossbenchs_split_noise_and_imbalance(
        cli, tmp_path, hf_env):
    image_dataset(60).to_parquet(str(tmp_path / "pets.parquet"))
    proc = cli("train", "dataset=hf", "dataset.path=pets.parquet", *RUN,
               "dataset.noise.kind=symmetric", "dataset.noise.rate=0.25", env=hf_env)
    assert proc.returncode == 0, proc.stderr
    metrics = read_metrics(run_dirs(tmp_path)[0])
    assert metrics["split_sizes"] == {"train": 36, "val": 12, "test": 12}  # 0.6/0.2/0.2
    assert metrics["data"]["noise"]["realised_rate"]["train_and_val"] == pytest.approx(0.25, abs=0.03)


def test_a_train_and_validation_dataset_is_tested_on_its_validation_split(tmp_path):
    datasets.DatasetDict(train=image_dataset(30),
                         validation=image_dataset(9, seed=1)).save_to_disk(tmp_path / "d")
    raw = hf(str(tmp_path / "d"))
    assert raw.x_test.shape == (9, 3, 16, 16) and raw.x_val is None
    assert raw.class_names == CLASSES and raw.task == "multiclass"


def test_grey_images_and_a_mode_conversion_give_the_channels(tmp_path):
    pictures, labels = images(12, channels=1)
    datasets.Dataset.from_dict({"image": pictures, "label": labels}).save_to_disk(tmp_path / "g")
    grey = hf(str(tmp_path / "g"))
    assert grey.x.shape == (12, 1, 16, 16) and grey.x.dtype == np.uint8
    rgb = hf(str(tmp_path / "g"), mode="RGB")
    assert rgb.x.shape == (12, 3, 16, 16)
    np.testing.assert_array_equal(rgb.x[:, 0], grey.x[:, 0])
    assert grey.class_names == ["0", "1", "2"]  # integer labels: named by their values


def test_an_array_column_is_read_as_images_channels_first(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)  # (N, H, W, C)
    features = datasets.Features({"pixels": datasets.Array3D((8, 8, 3), "uint8"),
                                  "label": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict({"pixels": x, "label": [0, 1] * 3}, features=features
                               ).save_to_disk(tmp_path / "a")
    raw = hf(str(tmp_path / "a"))
    np.testing.assert_array_equal(raw.x, x.transpose(0, 3, 1, 2))
    assert raw.task == "binary" and raw.class_names == ["a", "b"]


def test_numeric_columns_are_the_features_and_read_as_stored(tmp_path):
    rng = np.random.default_rng(0)
    table = {"a": rng.normal(size=20), "b": rng.normal(size=20).astype(np.float32),
             "note": ["x"] * 20, "label": [i % 2 for i in range(20)]}
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "t.parquet"))
    raw = hf(str(tmp_path / "t.parquet"))
    assert raw.x.shape == (20, 2) and raw.class_names == ["0", "1"]  # the text column: left out
    np.testing.assert_allclose(raw.x[:, 0], table["a"].astype(np.float32))
    only_b = hf(str(tmp_path / "t.parquet"), features=["b"])
    np.testing.assert_array_equal(only_b.x[:, 0], table["b"])
    floats = hf(str(tmp_path / "t.parquet"), label="a", features=["b"])
    assert floats.task == "regression"


@pytest.mark.parametrize("setup, args, message", [
    (None, ["dataset.path=missing_folder/"], "dataset.path=missing_folder/: no such file or folder"),
    ("images", ["dataset.label=fine_label"], "no column 'fine_label' for dataset.label; the "
                                             "columns are img, label"),
    ("text", ["dataset.label=label"], "column 'label' holds string values, not class indices"),
    ("mixed", [], "column 'img' holds images of different sizes or modes"),
])
def test_bad_data_is_one_line_and_exit_2(cli, tmp_path, hf_env, setup, args, message):
    if setup == "images":
        image_dataset(9).save_to_disk(tmp_path / "d")
    elif setup == "text":
        datasets.Dataset.from_dict({"x": [1.0, 2.0, 3.0], "label": ["a", "b", "a"]}
                                   ).save_to_disk(tmp_path / "d")
    elif setup == "mixed":
        small, _ = images(6, size=16)
        large, _ = images(6, size=20)
        datasets.Dataset.from_dict({"img": small + large, "label": [0, 1] * 6}
                                   ).save_to_disk(tmp_path / "d")
    proc = cli("train", "dataset=hf", "dataset.path=d", *args, *RUN, env=hf_env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("lossbench: error: ") and proc.stderr.count("\n") == 1
    assert message in proc.stderr
    assert run_dirs(tmp_path) == []


def test_a_hub_name_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match="dataset.path=someone/pets: no such file or folder here, "
                                        "and no Hub dataset it could load"):
        hf("someone/pets")


@pytest.mark.slow
def test_a_loss_sweep_on_an_hf_dataset_is_compared(cli, tmp_path, hf_env):
    datasets.DatasetDict(train=image_dataset(30), test=image_dataset(9, seed=2)
                         ).save_to_disk(tmp_path / "pets")
    proc = cli("train", "-m", "dataset=hf", "dataset.path=pets", "loss=ce,gce", "seed=0,1",
               *RUN, "hydra.sweep.dir=sweep", env=hf_env)
    assert proc.returncode == 0, proc.stderr
    assert len(run_dirs(tmp_path / "sweep")) == 4
    compared = cli("compare", "sweep", "--format", "csv")
    assert compared.returncode == 0, compared.stderr
    rows = compared.stdout.splitlines()
    assert any(r.startswith("ce,") or ",ce," in r for r in rows)
    assert any("gce" in r for r in rows)


def test_without_datasets_the_choice_names_the_extra_to_install(cli, tmp_path, hf_env):
    # datasets absent for real: a package of that name that cannot be imported shadows it
    import os

    stub = tmp_path / "no_datasets" / "datasets"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'datasets'\", "
                                      "name='datasets')\n")
    image_dataset(9).save_to_disk(tmp_path / "d")
    path = os.pathsep.join(filter(None, [str(stub.parent), os.environ.get("PYTHONPATH")]))
    proc = cli("train", "dataset=hf", "dataset.path=d", *RUN, env={**hf_env, "PYTHONPATH": path})
    assert proc.returncode == 2
    assert proc.stderr == ("lossbench: error: dataset=hf needs the datasets package: pip "
                           "install 'lossbench[hf]'\n")


def test_lossbench_list_says_an_hf_dataset_poses_any_task(cli):
    # the task comes from the label column, through the csv loader's encode_targets: the listing
    # follows functions imported from other lossbench modules as it does local ones
    proc = cli("list", "datasets")
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["hf"])
    assert row.split(None, 1)[1].startswith("any (from the data)")
