"""Training-time augmentation of image tensors: random crop after padding, horizontal flip.

Applied to the training split only, per sample, inside a `Dataset` so that a `DataLoader` can
run it in worker processes. Samples arrive already normalised by the training statistics, so the
zero padding is padding with the mean image colour.

Where the crop lands and whether the image flips is a function of the epoch's seed and the
sample's index alone (`sample_draws`): the training loop draws one seed per epoch from the
generator its checkpoints hold and asks a dataset that `augments` for `dataset[(index, seed)]`.
The same run therefore sees the same augmented images whatever reads them (the main process or
any number of worker processes, persistent or not, on any rank) and a resumed run sees what it
would have seen.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lossbench.errors import UserError


_MASK64 = 2**64 - 1


def sample_draws(seed: int, index: int) -> int:
    """64 random bits for sample `index` in the epoch drawn as `seed` (splitmix64 of the pair):
    independent draws for different samples or epochs, the same draw for the same pair."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class AugmentedImages(Dataset):
    """(x, y) pairs of (C, H, W) images, cropped and flipped at random for training.

    x: (N, C, H, W) tensor, or anything whose `x[i]` is a (C, H, W) tensor (images decoded
    from disk when asked for). crop_padding: p > 0 pads each side by p pixels and crops a random
    H × W window back out. hflip: mirror left-right with probability 1/2.
    `dataset[(index, seed)]`, how the training loop reads it, takes the crop and flip from
    `sample_draws(seed, index)`; `dataset[index]`, how evaluation reads a split, is the image as
    it is. With neither crop nor flip, every image passes through unchanged.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, crop_padding: int = 0,
                 hflip: bool = False):
        self.x, self.y = x, y  # (N, C, H, W), (N,)
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def augments(self) -> bool:
        """Whether training reads it as `(index, seed)` (else by plain index, as evaluation)."""
        return self.crop_padding > 0 or self.hflip

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = self.x[i]  # (C, H, W)
        p = self.crop_padding
        if seed is None or not self.augments:
            return img, self.y[i]
        bits = sample_draws(seed, i)
        if p > 0:
            h, w = img.shape[-2:]
            padded = F.pad(img, (p, p, p, p))  # (C, H + 2p, W + 2p)
            top, left = bits % (2 * p + 1), (bits >> 16) % (2 * p + 1)
            img = padded[:, top:top + h, left:left + w]
        if self.hflip and (bits >> 32) & 1:
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
