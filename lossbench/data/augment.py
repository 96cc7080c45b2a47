"""Training-time augmentation of image tensors: random crop after padding, horizontal flip.

Applied to the training split only, per sample, inside a `Dataset` so that a `DataLoader` can
run it in worker processes. Samples arrive already normalised by the training statistics, so the
zero padding is padding with the mean image colour.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lossbench.errors import UserError


class AugmentedImages(Dataset):
    """(x, y) pairs of (C, H, W) images, randomly cropped and flipped on every access.

    crop_padding: p > 0 pads each side by p pixels and crops a random H × W window back out.
    hflip: mirror left-right with probability 1/2.
    Randomness comes from torch's generator, which a DataLoader seeds per worker from its own
    seeded generator, so a run is reproducible from its seed.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, crop_padding: int = 0,
                 hflip: bool = False):
        self.x, self.y = x, y  # (N, C, H, W), (N,)
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i]  # (C, H, W)
        p = self.crop_padding
        if p > 0:
            h, w = img.shape[-2:]
            padded = F.pad(img, (p, p, p, p))  # (C, H + 2p, W + 2p)
            top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
            img = padded[:, top:top + h, left:left + w]
        if self.hflip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, self.y[i]


def augmentation_wanted(cfg: Any) -> bool:
    return bool(cfg) and (int(cfg.get("crop_padding") or 0) > 0 or bool(cfg.get("hflip")))


def check_augment(cfg: Any, sample_shape: tuple[int, ...], name: str) -> None:
    if int(cfg.get("crop_padding") or 0) < 0:
        raise UserError(f"dataset.augment.crop_padding={cfg.get('crop_padding')} must be >= 0")
    if len(sample_shape) != 3:
        raise UserError(f"dataset.augment crops and flips images, but dataset {name} has samples "
                        f"of shape {tuple(sample_shape)}, not (C, H, W); set "
                        "dataset.augment.crop_padding=0 dataset.augment.hflip=false")
