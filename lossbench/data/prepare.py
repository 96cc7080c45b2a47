"""From a dataset config to `Splits` of tensors: split → imbalance → noise → scale → augment."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lossbench.data.augment import AugmentedImages, augmentation_wanted, check_augment
from lossbench.data.files import ImageFiles
from lossbench.data.raw import RawData
from lossbench.data.split import Split, Splits, split_dataset

# Keys of a dataset config that lossbench applies to every dataset (`prepare_data`'s arguments);
# the other keys go to the dataset's `_target_`. A loader parameter of one of these names would
# never receive its value (hence moons' `noise_std`): `dataset_arguments` refuses it.
PREP_KEYS = ("split", "noise", "imbalance", "resample", "scale", "augment")

# Images read from disk (`ImageFiles`) get their per-channel statistics from at most this many
# training images, drawn at random: one pass over a large folder would cost a whole epoch.
STATS_SAMPLE = 5000


def _feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std from the training split: per feature for vectors, per channel otherwise."""
    if x.ndim == 2:  # (N, F)
        axes: tuple[int, ...] = (0,)
    else:  # (N, C, ...) sequences or images: one statistic per channel
        axes = (0, *range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    std[std < 1e-12] = 1.0  # constant features stay constant instead of dividing by zero
    return mean[0], std[0]


def _image_file_stats(files: ImageFiles, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel mean and std, (C, 1, 1) float32 each, of training images read from disk,
    from all of them or a seeded sample of STATS_SAMPLE; and how many images were read."""
    n = len(files)
    chosen = (np.arange(n) if n <= STATS_SAMPLE else
              np.sort(np.random.default_rng([seed, 31337]).choice(n, STATS_SAMPLE, replace=False)))
    channels = files.shape[1]
    total, squares, pixels = np.zeros(channels), np.zeros(channels), 0
    for i in chosen:
        img = files[int(i)].astype(np.float64)  # (C, H, W)
        total += img.sum(axis=(1, 2))
        squares += (img * img).sum(axis=(1, 2))
        pixels += img.shape[1] * img.shape[2]
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean * mean, 0.0))
    std[std < 1e-12] = 1.0
    shape = (channels, 1, 1)
    return (mean.reshape(shape).astype(np.float32), std.reshape(shape).astype(np.float32),
            len(chosen))


class ScaledImages:
    """The images of an `ImageFiles`, each decoded when asked for and standardised with the
    training statistics: `images[i]` is a (C, H, W) float32 tensor."""

    def __init__(self, files: ImageFiles, mean: np.ndarray | float, std: np.ndarray | float):
        self.files, self.mean, self.std = files, mean, std

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = (self.files[i].astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(x.astype(np.float32))


def dataset_arguments(data_cfg: Any) -> dict[str, Any]:
    """The dataset config without PREP_KEYS, resolved (`${seed}` lives at the root): what its
    `_target_` is called with, `_target_` included.

    The target's signature is checked first, so that a mistake is a UserError naming the key
    instead of a loader that silently keeps a default: a parameter named like a preparation
    key, or a config key the loader does not take."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(
        data_cfg) else dict(data_cfg)
    arguments = {k: v for k, v in resolved.items() if k not in PREP_KEYS}
    check_loader_signature(arguments)
    return arguments


def check_loader_signature(arguments: dict[str, Any]) -> None:
    """Raise UserError when the `_target_` of `arguments` has a parameter named like a
    preparation key, or does not take one of the other keys. A target that cannot be found or
    whose signature cannot be read is left to Hydra, which reports it when it builds it."""
    import difflib
    import inspect

    from hydra.utils import get_object

    from lossbench.errors import UserError

    target = arguments.get("_target_")
    try:
        params = inspect.signature(get_object(str(target))).parameters
    except Exception:  # ImportError, a non-callable, a builtin without a signature
        return
    for name in params:
        if name in PREP_KEYS:
            raise UserError(
                f"dataset {target}: its parameter '{name}' has the name of lossbench's "
                f"dataset.{name}, which is applied to every dataset and never reaches the "
                f"loader; rename the parameter (as moons calls its noise noise_std)")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # **kwargs: the loader takes any key
    takes = [name for name, p in params.items() if p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in arguments:
        if key.startswith("_") or key in takes:  # Hydra's own keys: _target_, _partial_, ...
            continue
        close = difflib.get_close_matches(key, takes, n=1)
        fix = f"did you mean dataset.{close[0]}?" if close else (
            f"it takes {', '.join(takes)}" if takes else "it takes no arguments")
        raise UserError(f"dataset {target} takes no argument '{key}' (dataset.{key}); {fix}")


def corrupt_training(parts: dict[str, tuple[Any, np.ndarray]], raw: RawData, noise: Any,
                     imbalance: Any, resample: str | None, seed: int
                     ) -> tuple[dict[str, tuple[Any, np.ndarray]], dict[str, np.ndarray],
                                dict[str, Any]]:
    """Imbalance (training split, by clean labels), then label noise (train and val), then
    re-sampling (train): the split parts afterwards, the clean labels of the splits noise
    touched, and what was done (`Splits.info`)."""
    info: dict[str, Any] = {}
    if imbalance is not None and imbalance.get("kind", "none") != "none":
        from lossbench.data.imbalance import apply_imbalance

        parts, info["imbalance"] = apply_imbalance(parts, raw, imbalance, seed)
    clean: dict[str, np.ndarray] = {}  # labels before noise, of the splits it touched
    if noise is not None and noise.get("kind", "none") != "none":
        from lossbench.data.noise import apply_label_noise

        noisy, info["noise"] = apply_label_noise(parts, raw, noise, seed)
        clean = {name: parts[name][1] for name in noisy if noisy[name] is not parts[name]}
        parts = noisy
    if resample not in (None, "none"):
        raw.require_classes(f"dataset.resample={resample}")
        from lossbench.data.resample import resample_indices

        keep, info["resample"] = resample_indices(parts["train"][1], str(resample),
                                                  raw.num_classes, seed)
        parts = {**parts, "train": (parts["train"][0][keep], parts["train"][1][keep])}
        if "train" in clean:  # the clean labels follow the samples drawn
            clean["train"] = clean["train"][keep]
    if raw.task != "regression":  # what the losses and the imbalance metrics are told
        info["train_class_counts"] = np.bincount(parts["train"][1].astype(np.int64),
                                                 minlength=raw.num_classes).tolist()
    return parts, clean, info


def prepare_data(raw: RawData, split: Any, noise: Any = None, imbalance: Any = None,
                 scale: bool = True, seed: int = 0, augment: Any = None,
                 resample: str | None = None) -> Splits:
    """Split `raw`, make the training classes imbalanced and the labels noisy as configured,
    scale, and convert to tensors.

    split: mapping with train/val/test fractions. noise / imbalance: mappings with `kind`
    (`none` leaves the data alone). Imbalance subsamples the training split by its clean labels;
    label noise then touches train and validation, never test. resample: `none`,
    `class_balanced` or `sqrt` (lossbench/data/resample.py), after noise. augment:
    crop_padding / hflip for image training data, which the training loop then reads through a DataLoader.
    """
    from lossbench.data.imbalance import check_imbalance_used
    from lossbench.data.noise import check_noise_used

    check_noise_used(noise)  # before the split: a setting that does nothing stops the run
    check_imbalance_used(imbalance)
    parts = split_dataset(raw, float(split["train"]), float(split["val"]), float(split["test"]),
                          seed=seed)
    parts, clean, info = corrupt_training(parts, raw, noise, imbalance, resample, seed)

    x_train = parts["train"][0]
    on_disk = isinstance(x_train, ImageFiles)  # read per sample through a DataLoader
    if on_disk:
        mean, std = 0.0, 1.0
        if scale:
            mean, std, info["normalisation_images"] = _image_file_stats(x_train, seed)
    else:
        x_train = x_train.astype(np.float32)
        mean, std = _feature_stats(x_train) if scale else (0.0, 1.0)
    target_mean, target_std = 0.0, 1.0
    if raw.task == "regression":
        y_train = parts["train"][1].astype(np.float64)
        target_mean, target_std = float(y_train.mean()), float(y_train.std() or 1.0)

    def targets(y: np.ndarray) -> torch.Tensor:
        if raw.task == "regression":
            return torch.from_numpy(((y.astype(np.float64) - target_mean) / target_std)
                                    .astype(np.float32))
        return torch.from_numpy(y.astype(np.int64))

    def to_split(x: np.ndarray | ImageFiles, y: np.ndarray) -> Split:
        if on_disk:  # no x: the split is read through its dataset, images as they are
            yt = targets(y)
            return Split(y=yt, dataset=AugmentedImages(ScaledImages(x, mean, std), yt))
        xt = torch.from_numpy(((x.astype(np.float32) - mean) / std).astype(np.float32))
        return Split(x=xt, y=targets(y))

    train = to_split(*parts["train"])
    if "train" in clean:
        train.y_clean = targets(clean["train"])
    if augmentation_wanted(augment):
        # in memory, x stays for evaluation (e.g. kNN on clean training embeddings); training
        # reads the augmented view through a DataLoader
        check_augment(augment, tuple(raw.x.shape[1:]), raw.name)
        images = train.dataset.x if on_disk else train.x
        train.dataset = AugmentedImages(images, train.y, augment.get("crop_padding") or 0,
                                        augment.get("hflip", False))
        info["augment"] = {"crop_padding": int(augment.get("crop_padding") or 0),
                           "hflip": bool(augment.get("hflip", False))}
    if on_disk:
        info["in_memory"] = False
    if scale and len(x_train.shape) > 2:  # per-channel statistics of images and sequences
        info["normalisation"] = {"mean": [round(float(v), 6) for v in np.ravel(mean)],
                                 "std": [round(float(v), 6) for v in np.ravel(std)]}

    val = to_split(*parts["val"])
    if "val" in clean:
        val.y_clean = targets(clean["val"])
    return Splits(
        train=train, val=val,
        test=to_split(*parts["test"]), task=raw.task, name=raw.name,
        num_classes=raw.num_classes, class_names=raw.class_names,
        sample_shape=tuple(raw.x.shape[1:]), target_mean=target_mean, target_std=target_std,
        info=info, input_scale=(mean, std))
