"""The user's own data: CSV tables, .npz arrays and image folders, in process and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lossbench.data import prepare_data
from lossbench.errors import UserError
from lossbench.data.files import ImageFiles, csv, imagefolder, npz

SPLIT = OmegaConf.create({"train": 0.6, "val": 0.2, "test": 0.2})


def write_csv(path, rows, header="a,b,label", delimiter=","):
    text = header.replace(",", delimiter) + "\n" + "\n".join(
        delimiter.join(str(v) for v in row) for row in rows) + "\n"
    path.write_text(text)
    return path


def two_class_rows(n=30):
    rng = np.random.default_rng(0)
    return [(round(float(rng.normal()), 4), round(float(rng.normal()), 4),
             "cat" if i % 2 else "dog") for i in range(n)]


def test_csv_text_target_becomes_class_names(tmp_path):
    rows = two_class_rows()
    raw = csv(str(write_csv(tmp_path / "pets.csv", rows)), target="label")
    assert raw.task == "binary" and raw.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(raw.y, [0 if r[2] == "cat" else 1 for r in rows])
    np.testing.assert_allclose(raw.x, [[r[0], r[1]] for r in rows], rtol=1e-6)
    assert raw.name == "pets.csv"


def test_csv_features_delimiter_and_inferred_regression(tmp_path):
    rows = [(i, i * 0.5, i * 1.25 + 0.1) for i in range(20)]
    path = write_csv(tmp_path / "t.csv", rows, header="a,b,price", delimiter=";")
    raw = csv(str(path), target="price", features=["b"], delimiter=";")
    assert raw.task == "regression" and raw.x.shape == (20, 1)
    np.testing.assert_allclose(raw.x[:, 0], [r[1] for r in rows])
    np.testing.assert_allclose(raw.y, [r[2] for r in rows], rtol=1e-6)


def test_csv_integer_target_is_inferred_as_classes_unless_told(tmp_path):
    rows = [(i, -i, i % 3) for i in range(30)]
    path = write_csv(tmp_path / "k.csv", rows)
    assert csv(str(path), target="label").task == "multiclass"
    assert csv(str(path), target="label").class_names == ["0", "1", "2"]
    assert csv(str(path), target="label", task="regression").task == "regression"


def test_npz_keeps_sample_shape_and_its_own_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2, 5, 5)).astype(np.float32)
    y = np.arange(40) % 4
    x_test = rng.normal(size=(8, 2, 5, 5)).astype(np.float32)
    y_test = np.arange(8) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    raw = npz(str(tmp_path / "d.npz"))
    assert raw.task == "multiclass" and raw.x.shape == (40, 2, 5, 5)
    splits = prepare_data(raw, SPLIT, scale=False)
    np.testing.assert_allclose(splits.test.x.numpy(), x_test)  # the fixed test split, untouched
    np.testing.assert_array_equal(splits.test.y.numpy(), y_test)
    assert len(splits.train) + len(splits.val) == 40 and splits.sample_shape == (2, 5, 5)


def test_npz_string_labels_and_sequences(tmp_path):
    x = np.zeros((12, 3, 7), dtype=np.float32)  # (N, C, L) sequences
    y = np.array(["up", "down", "flat"] * 4)
    np.savez(tmp_path / "s.npz", x=x, y=y)
    raw = npz(str(tmp_path / "s.npz"))
    assert raw.class_names == ["down", "flat", "up"] and raw.x.shape == (12, 3, 7)
    assert raw.y.tolist() == [2, 0, 1] * 4


def write_images(root, classes, per_class, size=(10, 12), mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (*size, 3) if mode == "RGB" else size
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                root / c / f"{i}.png")


def test_imagefolder_reads_classes_from_subfolders_and_a_test_folder(tmp_path):
    write_images(tmp_path / "train", ["ant", "bee", "cow"], 6)
    write_images(tmp_path / "test", ["bee", "ant"], 2)
    raw = imagefolder(str(tmp_path / "train"), test_path=str(tmp_path / "test"),
                      image_size=[8, 9])
    assert raw.class_names == ["ant", "bee", "cow"]
    assert raw.x.shape == (18, 3, 8, 9) and raw.x.dtype == np.uint8
    assert np.bincount(raw.y).tolist() == [6, 6, 6]
    assert raw.x_test.shape == (4, 3, 8, 9) and sorted(raw.y_test.tolist()) == [0, 0, 1, 1]


def test_imagefolder_keeps_pixels_at_their_size(tmp_path):
    from PIL import Image

    write_images(tmp_path / "g", ["a", "b"], 3, size=(4, 5), mode="L")
    raw = imagefolder(str(tmp_path / "g"), image_size=[4, 5], mode="L")
    first = np.asarray(Image.open(tmp_path / "g" / "a" / "0.png"))
    np.testing.assert_array_equal(raw.x[0, 0], first)


def test_an_image_folder_read_from_disk_gives_the_images_held_in_memory(tmp_path):
    write_images(tmp_path / "train", ["ant", "bee", "cow"], 7, size=(9, 7))
    write_images(tmp_path / "test", ["ant", "cow"], 2, size=(9, 7))
    args = dict(path=str(tmp_path / "train"), test_path=str(tmp_path / "test"),
                image_size=[6, 5])
    held, read = imagefolder(**args), imagefolder(**args, in_memory=False)
    assert isinstance(read.x, ImageFiles) and isinstance(read.x_test, ImageFiles)
    assert read.x.shape == held.x.shape == (21, 3, 6, 5) and len(read.x_test) == 4
    subset = read.x[np.array([3, 0])]  # indexing by an array reads nothing, keeps the order
    assert isinstance(subset, ImageFiles) and subset.files.tolist() == [read.x.files[3],
                                                                         read.x.files[0]]
    np.testing.assert_array_equal(subset[0], held.x[3])
    noise = OmegaConf.create({"kind": "symmetric", "rate": 0.3})
    on_disk = prepare_data(read, SPLIT, noise=noise, seed=4)
    in_memory = prepare_data(held, SPLIT, noise=noise, seed=4)
    assert on_disk.info["in_memory"] is False
    assert on_disk.info["normalisation_images"] == len(on_disk.train) == 16  # every one
    assert on_disk.info["noise"] == in_memory.info["noise"]
    np.testing.assert_allclose(on_disk.info["normalisation"]["mean"],
                               in_memory.info["normalisation"]["mean"], rtol=1e-5)
    np.testing.assert_allclose(on_disk.info["normalisation"]["std"],
                               in_memory.info["normalisation"]["std"], rtol=1e-5)
    for name in ("train", "val", "test"):
        disk, memory = getattr(on_disk, name), getattr(in_memory, name)
        assert disk.x is None and torch.equal(disk.y, memory.y)
        images = torch.stack([disk.dataset[(i, 0)][0] for i in range(len(disk))])
        torch.testing.assert_close(images, memory.x, rtol=0, atol=1e-5)
    # augmented for training, as they are for evaluation (a plain index, e.g. kNN embeddings)
    augment = OmegaConf.create({"crop_padding": 2, "hflip": True})
    train = prepare_data(read, SPLIT, augment=augment, seed=4).train
    clean = torch.stack([train.dataset[i][0] for i in range(len(train))])
    torch.testing.assert_close(clean, in_memory.train.x, rtol=0, atol=1e-5)
    crops = torch.stack([train.dataset[(i, 0)][0] for i in range(len(train))])
    assert not torch.allclose(crops, clean)


def test_image_statistics_from_disk_come_from_a_sample_of_a_large_folder(tmp_path,
                                                                         monkeypatch):
    from lossbench.data import prepare

    write_images(tmp_path / "pics", ["a", "b"], 10, size=(4, 4))
    monkeypatch.setattr(prepare, "STATS_SAMPLE", 5)
    raw = imagefolder(str(tmp_path / "pics"), image_size=[4, 4], in_memory=False)
    splits = prepare_data(raw, SPLIT, seed=1)
    assert splits.info["normalisation_images"] == 5  # of 12 training images
    held = prepare_data(imagefolder(str(tmp_path / "pics"), image_size=[4, 4]), SPLIT, seed=1)
    np.testing.assert_allclose(splits.info["normalisation"]["mean"],
                               held.info["normalisation"]["mean"], rtol=0.2)


def test_cli_trains_on_an_image_folder_read_from_disk_by_workers(cli, tmp_path):
    write_images(tmp_path / "train", ["x", "y", "z"], 12)
    write_images(tmp_path / "test", ["x", "y", "z"], 3)
    common = ("dataset=imagefolder", "dataset.path=train", "dataset.test_path=test",
              "dataset.image_size=[8,8]", "dataset.scale=false", "model=cnn", "trainer.epochs=3",
              "trainer.early_stopping=false", "trainer.batch_size=8", "trainer.plots=false",
              "print_config=false")
    cli("train", *common, "hydra.run.dir=held", check=True)
    cli("train", *common, "dataset.in_memory=false", "trainer.num_workers=2",
        "hydra.run.dir=read", check=True)
    held, read = (json.loads((tmp_path / d / "metrics.json").read_text())
                  for d in ("held", "read"))
    assert read["data"]["in_memory"] is False and "in_memory" not in held["data"]
    assert read["split_sizes"] == held["split_sizes"] and read["split_sizes"]["test"] == 9
    # every epoch reads the same pixels in the same order (unscaled, so not even the rounding
    # of the statistics differs): the same training, to the last bit
    losses = [[row.split(",")[1:3] for row in
               (tmp_path / d / "history.csv").read_text().splitlines()[1:]]
              for d in ("held", "read")]
    assert len(losses[0]) == 3 and losses[1] == losses[0]
    assert read["test"] == held["test"]


class FailsAtTwo(torch.utils.data.Dataset):
    """Samples 0..3 of shape (2, 3), of which sample 2 cannot be read."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2:
            raise UserError("image file pics/2.png cannot be read (truncated)")
        return torch.zeros(2, 3), torch.tensor(i)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sample_unreadable_in_the_middle_of_an_epoch_is_one_line(workers):
    from lossbench.engine.predict import loader_batches

    loader = torch.utils.data.DataLoader(FailsAtTwo(), batch_size=1, num_workers=workers)
    batches = loader_batches(loader, torch.device("cpu"))
    assert next(batches)[1].tolist() == [0]
    with pytest.raises(UserError) as err:
        list(batches)
    assert str(err.value) == "image file pics/2.png cannot be read (truncated)"


def test_a_rank_with_no_samples_of_an_on_disk_split_evaluates_an_empty_batch(monkeypatch):
    """9 samples over 4 processes: the last rank has none, and still sends outputs of the
    same shape as the others to the gathers."""
    from lossbench.engine import distributed
    from lossbench.data import Split
    from lossbench.data.augment import AugmentedImages
    from lossbench.engine.predict import eval_batches

    y = torch.arange(9)
    split = Split(y=y, dataset=AugmentedImages(torch.ones(9, 1, 4, 5), y))
    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(3, 4, 3))
    (x, yb), = list(eval_batches(split, 4, torch.device("cpu")))
    assert x.shape == (0, 1, 4, 5) and yb.shape == (0,)
    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(1, 4, 1))
    assert [b[1].tolist() for b in eval_batches(split, 2, torch.device("cpu"))] == [[3, 4], [5]]


def test_two_processes_read_an_image_folder_from_disk_as_from_memory(cli, tmp_path):
    """trainer.devices=2 over gloo: each process reads its shard of every epoch and its slice
    of the evaluated splits from disk (9 test images: slices of 5 and 4), through a worker, and
    the run equals the one whose images are held in memory."""
    write_images(tmp_path / "train", ["x", "y", "z"], 10)
    write_images(tmp_path / "test", ["x", "y", "z"], 3)
    common = ("dataset=imagefolder", "dataset.path=train", "dataset.test_path=test",
              "dataset.image_size=[8,8]", "dataset.scale=false", "model=cnn", "trainer.epochs=2",
              "trainer.early_stopping=false", "trainer.batch_size=4", "trainer.devices=2",
              "trainer.plots=false", "print_config=false")
    cli("train", *common, "hydra.run.dir=held", check=True)
    cli("train", *common, "dataset.in_memory=false", "trainer.num_workers=1",
        "hydra.run.dir=read", check=True)
    held, read = (json.loads((tmp_path / d / "metrics.json").read_text())
                  for d in ("held", "read"))
    assert read["data"]["in_memory"] is False
    assert sum(read["test"]["confusion_matrix"][0]) == 3 and read["split_sizes"]["test"] == 9
    assert read["test"] == held["test"]


def test_cli_trains_on_a_csv_and_reports_its_class_names(cli, tmp_path):
    write_csv(tmp_path / "pets.csv", two_class_rows(40))
    run = tmp_path / "run"
    cli("train", "dataset=csv", "dataset.path=pets.csv", "dataset.target=label", "model=linear",
        "trainer=smoke", f"hydra.run.dir={run}", check=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "binary" and metrics["dataset"] == "pets.csv"
    assert {"cat", "dog"} <= set(metrics["test"]["classification_report"])
    assert metrics["split_sizes"] == {"train": 24, "val": 8, "test": 8}


def test_cli_trains_on_npz_images_and_an_image_folder(cli, tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "img.npz", x=rng.normal(size=(30, 1, 6, 6)).astype(np.float32),
             y=np.arange(30) % 3)
    run = tmp_path / "run_npz"
    cli("train", "dataset=npz", "dataset.path=img.npz", "model=cnn", "trainer=smoke",
        f"hydra.run.dir={run}", check=True)
    assert json.loads((run / "metrics.json").read_text())["num_outputs"] == 3

    write_images(tmp_path / "pics", ["x", "y"], 8)
    run = tmp_path / "run_folder"
    cli("train", "dataset=imagefolder", "dataset.path=pics", "dataset.image_size=[8,8]",
        "model=cnn", "trainer=smoke", "dataset.augment.hflip=true", f"hydra.run.dir={run}",
        check=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["augment"]["hflip"] is True
    assert metrics["split_sizes"]["train"] + metrics["split_sizes"]["val"] + \
        metrics["split_sizes"]["test"] == 16


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_csv_keeps_the_task_it_is_given(tmp_path, task):
    raw = csv(str(write_csv(tmp_path / "p.csv", two_class_rows())), target="label", task=task)
    assert raw.task == task and raw.num_classes == 2
