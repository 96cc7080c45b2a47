"""Image benchmarks read from tiny files in their real on-disk formats (MNIST's IDX, CIFAR's
pickled batches), FakeData, and training-time augmentation."""

from __future__ import annotations

import json
import pickle
import struct
from collections import Counter

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lossbench.data import prepare_data
from lossbench.data.augment import AugmentedImages
from lossbench.data.vision import cifar10, cifar100, fake_images, fashion_mnist, mnist
from lossbench.errors import UserError

SPLIT = OmegaConf.create({"train": 0.6, "val": 0.2, "test": 0.2})
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def write_idx(path, array: np.ndarray) -> None:
    """IDX: magic (0, 0, 0x08 = unsigned byte, ndim), big-endian int32 sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, folder="MNIST", n_train=40, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    data = {"train": (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10),
            "t10k": (rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10)}
    for prefix, (images, labels) in data.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return data


def write_cifar(root, hundred=False, per_class=5, seed=0):
    """CIFAR's python batches: pickled dicts with byte-string keys, rows of 3072 bytes (R, G, B
    planes of 32 × 32)."""
    rng = np.random.default_rng(seed)
    k = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = b"fine_labels" if hundred else b"labels"
    files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    n = k * per_class // len(files)
    written = []
    for f in files:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 label_key: [int(v) for v in rng.permutation(np.arange(n) % k)],
                 b"batch_label": f.encode()}
        (folder / f).write_bytes(pickle.dumps(batch))
        written.append(batch)
    test = {b"data": rng.integers(0, 256, (k, 3072), dtype=np.uint8),
            label_key: list(range(k))}
    (folder / ("test" if hundred else "test_batch")).write_bytes(pickle.dumps(test))
    names = [f"class{c}".encode() for c in range(k)] if hundred else [
        n.encode() for n in CIFAR10_NAMES]
    meta = {b"fine_label_names" if hundred else b"label_names": names}
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta))
    return written, test


def test_mnist_reads_idx_files_and_keeps_the_official_test_split(tmp_path):
    data = write_mnist(tmp_path)
    raw = mnist(root=str(tmp_path), download=False)
    assert raw.x.shape == (40, 1, 28, 28) and raw.x_test.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(raw.x[:, 0], data["train"][0])
    np.testing.assert_array_equal(raw.y, data["train"][1])
    np.testing.assert_array_equal(raw.y_test, data["t10k"][1])
    assert raw.class_names == [str(d) for d in range(10)]
    splits = prepare_data(raw, SPLIT)
    assert len(splits.test) == 10 and len(splits.train) + len(splits.val) == 40


def test_mnist_unpacks_the_published_gzip_files(tmp_path):
    import gzip

    data = write_mnist(tmp_path)
    for f in (tmp_path / "MNIST" / "raw").iterdir():
        (f.parent / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    raw = mnist(root=str(tmp_path), download=False)
    np.testing.assert_array_equal(raw.x_test[:, 0], data["t10k"][0])


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    write_mnist(tmp_path, folder="FashionMNIST", seed=1)
    raw = fashion_mnist(root=str(tmp_path), download=False)
    assert raw.class_names[0] == "T-shirt/top" and raw.x.shape == (40, 1, 28, 28)


def test_cifar10_reads_pickled_batches_in_channel_plane_order(tmp_path):
    batches, test = write_cifar(tmp_path)
    raw = cifar10(root=str(tmp_path), download=False)
    assert raw.class_names == CIFAR10_NAMES
    assert raw.x.shape == (50, 3, 32, 32) and raw.x_test.shape == (10, 3, 32, 32)
    first = batches[0][b"data"][0]
    np.testing.assert_array_equal(raw.x[0, 1, 0, :], first[1024:1024 + 32])  # green, top row
    np.testing.assert_array_equal(raw.y[:10], batches[0][b"labels"])
    np.testing.assert_array_equal(raw.y_test, test[b"labels"])


def test_cifar100_uses_the_fine_labels(tmp_path):
    batches, _ = write_cifar(tmp_path, hundred=True, per_class=3)
    raw = cifar100(root=str(tmp_path), download=False)
    assert raw.num_classes == 100 and raw.class_names[99] == "class99"
    np.testing.assert_array_equal(raw.y, batches[0][b"fine_labels"])


def test_root_defaults_to_the_lossbench_data_variable(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setenv("LOSSBENCH_DATA", str(tmp_path))
    assert mnist(download=False).x.shape == (40, 1, 28, 28)


def test_missing_files_without_download_name_dataset_folder_and_fix(tmp_path):
    with pytest.raises(UserError) as err:
        cifar10(root=str(tmp_path / "nowhere"), download=False)
    message = str(err.value)
    assert "cifar10" in message and str(tmp_path / "nowhere") in message
    assert "dataset.root" in message and "\n" not in message


def test_cli_mnist_from_idx_files_tests_on_the_official_split(cli, tmp_path):
    write_mnist(tmp_path / "data")
    run = tmp_path / "run"
    cli("train", "dataset=mnist", "dataset.download=false", "model=linear", "trainer=smoke",
        "trainer.max_batches=null", f"hydra.run.dir={run}",
        env={"LOSSBENCH_DATA": str(tmp_path / "data")}, check=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split_sizes"]["test"] == 10
    assert metrics["split_sizes"]["train"] + metrics["split_sizes"]["val"] == 40
    assert metrics["data"]["normalisation"]["mean"][0] == pytest.approx(127.5, abs=10)


def test_cli_cifar10_trains_with_augmentation_and_asymmetric_noise(cli, tmp_path):
    write_cifar(tmp_path)
    run = tmp_path / "run"
    cli("train", "dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false",
        "model=cnn", "model.channels=[4]", "trainer=smoke", "dataset.noise.kind=asymmetric",
        "dataset.noise.preset=cifar10", "dataset.noise.rate=0.5", f"hydra.run.dir={run}",
        check=True)
    data = json.loads((run / "metrics.json").read_text())["data"]
    assert data["augment"] == {"crop_padding": 4, "hflip": True}
    counts = np.array(data["noise"]["transition_counts"]["train"])
    cat, dog = CIFAR10_NAMES.index("cat"), CIFAR10_NAMES.index("dog")
    assert counts[cat, dog] == round(0.5 * counts[cat].sum())


@pytest.mark.parametrize("download", ["false", "true"])
def test_cli_missing_dataset_is_one_line_and_exit_2(cli, tmp_path, download):
    # no network here: a download attempt fails, and must say so just as clearly
    empty = tmp_path / "empty"
    run = tmp_path / "run"
    proc = cli("train", "dataset=mnist", f"dataset.download={download}", "trainer=smoke",
               f"hydra.run.dir={run}", env={"LOSSBENCH_DATA": str(empty)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "dataset mnist" in lines[0] and str(empty) in lines[0] and "dataset.root" in lines[0]
    assert not run.exists()


def test_fake_images_have_the_configured_shape_and_classes():
    raw = fake_images(n_samples=20, n_test=6, image_size=[1, 9, 7], num_classes=3)
    assert raw.x.shape == (20, 1, 9, 7) and raw.x_test.shape == (6, 1, 9, 7)
    assert raw.x.dtype == np.uint8 and set(raw.y) <= {0, 1, 2} and raw.num_classes == 3
    again = fake_images(n_samples=20, n_test=6, image_size=[1, 9, 7], num_classes=3)
    np.testing.assert_array_equal(raw.x, again.x)
    assert not np.array_equal(raw.x[:6], raw.x_test)


def test_cli_fake_images_smoke_run_of_an_image_model(cli, tmp_path):
    run = tmp_path / "run"
    # augmented images through a DataLoader with a worker process, kept across both epochs
    cli("train", "dataset=fake_images", "dataset.n_samples=40", "dataset.n_test=10",
        "dataset.num_classes=4", "model=cnn", "trainer=smoke", "trainer.num_workers=1",
        "dataset.augment.crop_padding=2", "dataset.augment.hflip=true", f"hydra.run.dir={run}",
        check=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_outputs"] == 4 and metrics["split_sizes"]["test"] == 10
    assert metrics["data"]["augment"] == {"crop_padding": 2, "hflip": True}
    assert (run / "history.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_augmentation_crops_from_the_padded_image_and_flips():
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(1, 2, 5, 6) + 1
    data = AugmentedImages(x, torch.tensor([0]), crop_padding=2, hflip=True)
    padded = torch.nn.functional.pad(x[0], (2, 2, 2, 2))
    windows = [padded[:, t:t + 5, s:s + 6] for t in range(5) for s in range(5)]
    seen_flip = seen_shift = False
    assert torch.equal(data[0][0], x[0])  # a plain index (evaluation): the image as it is
    for seed in range(60):
        img, label = data[(0, seed)]  # how training reads it
        assert img.shape == (2, 5, 6) and label == 0
        plain = any(torch.equal(img, w) for w in windows)
        flipped = any(torch.equal(img.flip(-1), w) for w in windows)
        assert plain or flipped
        seen_flip |= flipped and not plain
        seen_shift |= not torch.equal(img, x[0]) and not torch.equal(img.flip(-1), x[0])
    assert seen_flip and seen_shift


def test_augmented_training_split_goes_through_a_dataloader_and_evaluation_stays_clean():
    from lossbench.engine.batches import train_batches

    raw = fake_images(n_samples=30, n_test=5, image_size=[3, 8, 8], num_classes=3)
    splits = prepare_data(raw, SPLIT, augment=OmegaConf.create({"crop_padding": 2,
                                                                "hflip": True}))
    train = splits.train
    assert isinstance(train.dataset, AugmentedImages) and splits.val.dataset is None
    n, batches = train_batches(train, 8, torch.Generator().manual_seed(0))
    got = list(batches)
    assert n == len(got) == 3 and isinstance(train.loader, torch.utils.data.DataLoader)
    assert sum(len(y) for _, y in got) == len(train)
    xs = torch.cat([x for x, _ in got])
    # augmented batches are not rows of the clean tensor that evaluation reads
    assert sum(any(torch.equal(a, b) for b in train.x) for a in xs) < len(xs)
    loader = train.loader
    train_batches(train, 8, torch.Generator().manual_seed(1))
    assert train.loader is loader  # built once per run: workers can persist across epochs


def test_data_without_augmentation_keeps_the_tensor_path_and_vectors_refuse_it():
    raw = fake_images(n_samples=30, n_test=5, image_size=[3, 8, 8], num_classes=3)
    assert prepare_data(raw, SPLIT).train.dataset is None
    from lossbench.data.sklearn_datasets import wine

    with pytest.raises(UserError, match=r"not \(C, H, W\)"):
        prepare_data(wine(), SPLIT, augment=OmegaConf.create({"crop_padding": 0, "hflip": True}))


def test_augmented_batches_are_reproducible_from_the_seed():
    from lossbench.engine.batches import train_batches

    raw = fake_images(n_samples=20, n_test=4, image_size=[3, 8, 8], num_classes=2)
    augment = OmegaConf.create({"crop_padding": 3, "hflip": True})

    def epoch(seed):
        torch.manual_seed(seed)  # what seed_everything does for the run
        splits = prepare_data(raw, SPLIT, augment=augment)
        return torch.cat([x for x, _ in train_batches(splits.train, 4,
                                                      torch.Generator().manual_seed(seed))[1]])

    assert torch.equal(epoch(5), epoch(5))
    assert not torch.equal(epoch(5), epoch(6))


def test_augmented_batches_are_the_same_whoever_reads_them():
    """The crops and flips follow from the loop's generator alone: read in the main process, by
    two worker processes, or again after torch's global seed moved, an epoch is the same."""
    from lossbench.engine.batches import train_batches

    raw = fake_images(n_samples=40, n_test=4, image_size=[3, 8, 8], num_classes=2)
    augment = OmegaConf.create({"crop_padding": 3, "hflip": True})

    def epochs(workers, global_seed):
        torch.manual_seed(global_seed)
        splits = prepare_data(raw, SPLIT, augment=augment)
        g = torch.Generator().manual_seed(7)
        return [torch.cat([x for x, _ in train_batches(splits.train, 4, g,
                                                       loader_kwargs={"num_workers": workers})[1]])
                for _ in range(2)]

    main = epochs(0, 0)
    assert not torch.equal(main[0], main[1])  # a new epoch draws new crops and flips
    for other in (epochs(2, 0), epochs(0, 123)):
        assert all(torch.equal(a, b) for a, b in zip(main, other))


def test_sample_draws_are_spread_over_crops_and_flips():
    from lossbench.data.augment import sample_draws

    draws = [sample_draws(11, i) for i in range(2000)]
    assert len(set(draws)) == 2000 and sample_draws(11, 5) == draws[5] != sample_draws(12, 5)
    tops = Counter(d % 7 for d in draws)  # crop_padding 3: 7 offsets
    flips = sum((d >> 32) & 1 for d in draws)
    assert set(tops) == set(range(7)) and min(tops.values()) > 2000 / 7 * 0.8
    assert 900 < flips < 1100
