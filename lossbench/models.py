"""Models. Each takes the sample shape and the number of outputs, which lossbench derives from
the data and the loss (never a number the user must keep in sync)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU,
               "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class Linear(nn.Module):
    """A linear map from flattened samples to the outputs (logistic/softmax/linear regression)."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, num_outputs)
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    """Fully connected network on flattened samples: [Linear → (BatchNorm) → act → Dropout]* → Linear."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int,
                 hidden: Sequence[int] = (128, 64), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, num_outputs)
        return self.net(x)


class CNN(nn.Module):
    """A small conv net: Conv-BN-ReLU blocks with pooling, global average pool, linear head.

    Adapts to the sample shape: (C, H, W) images use 2-D convolutions, (C, L) sequences 1-D ones,
    and plain vectors (F,) are treated as a one-channel sequence of length F.
    """

    def __init__(self, input_shape: Sequence[int], num_outputs: int,
                 channels: Sequence[int] = (32, 64), kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        shape = tuple(input_shape)
        self.unsqueeze = len(shape) == 1  # (F,) -> (1, F)
        if self.unsqueeze:
            shape = (1, *shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"CNN needs (C, L) sequences or (C, H, W) images, got {shape}")
        conv, bn, pool, gap = ((nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
                               if len(shape) == 3 else
                               (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d))
        layers: list[nn.Module] = []
        in_ch, size = shape[0], min(shape[1:])
        for out_ch in channels:
            layers += [conv(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                       bn(out_ch), nn.ReLU()]
            if size >= 4:  # pool while the feature map is still large enough to halve
                layers.append(pool(2))
                size //= 2
            in_ch = out_ch
        layers += [gap(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(in_ch, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, num_outputs)
        if self.unsqueeze:
            x = x.unsqueeze(1)
        return self.net(x)


# Images at most this many pixels a side get the CIFAR-style stem on ResNets (32×32 CIFAR).
SMALL_IMAGE_SIDE = 64


def small_image_stem(model: nn.Module, channels: int) -> nn.Module:
    """Replace a ResNet's ImageNet stem (7×7 stride-2 conv and max-pool, which would shrink a
    32×32 image to 8×8 before the first block) by the CIFAR-style 3×3 stride-1 conv and no
    pooling, in place: `conv1` and `maxpool`, as torchvision's and timm's ResNets name them."""
    model.conv1 = nn.Conv2d(channels, model.conv1.out_channels, kernel_size=3, stride=1,
                            padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def resnet18(input_shape: Sequence[int], num_outputs: int, small_input_stem: bool | None = None
             ) -> nn.Module:
    """torchvision's ResNet-18 with `num_outputs` classes.

    For small images (at most 64 pixels a side, such as 32×32 CIFAR) the ImageNet stem is
    replaced by the CIFAR-style one (`small_image_stem`). Any channel count is accepted.
    """
    from torchvision.models import resnet18 as tv_resnet18

    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs (C, H, W) images, got sample shape {tuple(input_shape)}")
    channels, height, width = input_shape
    model = tv_resnet18(weights=None, num_classes=num_outputs)
    if small_input_stem is None:
        small_input_stem = max(height, width) <= SMALL_IMAGE_SIDE
    if small_input_stem:
        small_image_stem(model, channels)
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


class CosineClassifier(nn.Module):
    r"""A linear classifier on unit vectors: z_k = cos(x, W_k) = x·W_k / (‖x‖ ‖W_k‖) ∈ [−1, 1].

    The last layer of a model whose loss asks for the ``cosine`` head (LDAM): with features and
    class vectors normalised, a class's score cannot grow with its norm, which the frequent
    classes would otherwise win (Cao et al. 2019's NormedLinear). No bias. Weight (K, D).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, K)
        return nn.functional.normalize(x, dim=-1) @ nn.functional.normalize(self.weight, dim=-1).T


def replace_last_linear(model: nn.Module, build: Callable[[nn.Linear], nn.Module]
                        ) -> nn.Module:
    """Replace the model's last `nn.Linear` (its classifier) by `build(that layer)`, on the
    same device, in place; returns the model."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer as its classifier")
    name, last = linears[-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], build(last).to(last.weight.device))
    return model


def with_cosine_head(model: nn.Module) -> nn.Module:
    """Replace the model's last `nn.Linear` (its classifier) by a `CosineClassifier` of the
    same size, in place; returns the model."""
    return replace_last_linear(
        model, lambda last: CosineClassifier(last.in_features, last.out_features))
