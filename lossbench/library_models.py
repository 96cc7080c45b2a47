"""Models by name from torchvision and timm, sized from the data and the loss like the built-ins.

`model=torchvision model.name=resnet50` calls `torchvision.models.get_model(name, weights=...,
num_classes=...)`, `model=timm model.name=convnext_atto` calls `timm.create_model(name,
pretrained=..., num_classes=..., in_chans=..., drop_rate=...)`: the libraries' own factories,
with their own weights and caches, and no table of architectures here. What lossbench adds is
what its data needs: the channel count of the images (grayscale), the CIFAR-style stem for small
images on the ResNet family (as the built-in resnet18), and a check, before training starts,
that the model takes one sample of the data and returns one score per output; every problem is
a one-line `UserError` naming the option that fixes it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lossbench.errors import UserError
from lossbench.models import SMALL_IMAGE_SIDE, replace_last_linear, small_image_stem

# torchvision's Inception-style models return auxiliary outputs while training unless told not
# to; a loss wants one tensor of scores.
AUX_LOGITS = ("googlenet", "inception_v3")


def _library(module: str, extra: str, option: str):
    """The library `module`, or a UserError naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{option} needs the {module} package: pip install "
                        f"'lossbench[{extra}]'") from None


def _image_shape(input_shape: Sequence[int], option: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise UserError(f"{option} needs (C, H, W) images, but the data's samples have shape "
                        f"{shape}; use model=mlp, model=cnn or an image dataset")
    return shape  # type: ignore[return-value]


def _unknown_name(name: str, names: Sequence[str], library: str) -> UserError:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(close)}?" if close else
            "lossbench list models PATTERN names them")
    return UserError(f"model.name={name} is not a {library} model; {hint}")


def adapt_input_channels(model: nn.Module, channels: int) -> nn.Module:
    """Make the model's first 3-channel convolution take `channels` channels, in place.

    Trained weights are kept as far as they go: for one channel the three RGB filters are
    summed (a grey image is R = G = B), for other counts they are repeated and rescaled, as
    timm's `adapt_input_conv` does."""
    if channels == 3:
        return model
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            break
    else:
        raise UserError(f"{type(model).__name__} has no 3-channel input convolution to adapt to "
                        f"{channels}-channel images")
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        weight = conv.weight  # (O, 3, kH, kW)
        if channels == 1:
            new.weight.copy_(weight.sum(dim=1, keepdim=True))
        else:
            repeats = -(-channels // 3)
            new.weight.copy_(weight.repeat(1, repeats, 1, 1)[:, :channels] * (3 / channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    return model


def _has_resnet_stem(model: nn.Module) -> bool:
    """The ResNet family's layout, in torchvision and timm alike: `conv1` then `maxpool`."""
    return isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool")


def _fit_stem(model: nn.Module, shape: tuple[int, int, int], small_input_stem: bool | None,
              option: str) -> nn.Module:
    """The CIFAR-style stem (3×3 stride-1 conv, no max-pool) for small images on a ResNet."""
    resnet = _has_resnet_stem(model)
    if small_input_stem and not resnet:
        raise UserError(f"{option}.small_input_stem=true: {type(model).__name__} is not a "
                        "ResNet (no conv1 and maxpool to replace); leave it null")
    if small_input_stem is None:
        small_input_stem = resnet and max(shape[1:]) <= SMALL_IMAGE_SIDE
    return small_image_stem(model, shape[0]) if small_input_stem else model


def check_forward(model: nn.Module, shape: tuple[int, int, int], num_outputs: int,
                  option: str, size_hint: str) -> None:
    """Refuse, before any training, a model that cannot take one sample of the data or does
    not return one score per output: an image size it was not built for (a ViT made for
    224×224), a model that is not a classifier. One sample, in evaluation mode, no gradients;
    the model is left as it was."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
    except (RuntimeError, AssertionError, ValueError) as err:
        first = " ".join(str(err).strip().splitlines()[0].split()).rstrip(".") if str(err).strip() else ""
        raise UserError(f"{option}: {type(model).__name__} cannot take {shape[0]}×{shape[1]}×"
                        f"{shape[2]} images ({first}); {size_hint}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_outputs):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{option}: {type(model).__name__} is not a classifier: it returns "
                        f"{got} for one image, not {num_outputs} scores")


def _size_hint(model: nn.Module, shape: tuple[int, int, int], size_key: str,
               option: str) -> str:
    if _has_resnet_stem(model):
        return f"try {option}.small_input_stem=true, or larger images"
    return (f"models made for one image size take {option}.kwargs.{size_key}={shape[1]}, "
            "others need larger images")


def torchvision_model(input_shape: Sequence[int], num_outputs: int, name: str,
                      weights: str | None = None, small_input_stem: bool | None = None,
                      kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A torchvision image classifier by name (`torchvision.models.list_models()`).

    weights: null (random init) or a weight name of that model (DEFAULT, IMAGENET1K_V1, ...),
    downloaded into torch's hub cache ($TORCH_HOME) the usual way; their classifier is then
    replaced by one with `num_outputs` outputs. small_input_stem: null → the CIFAR-style stem
    for ResNets on images of at most 64 pixels a side. kwargs: passed to the model's builder
    (e.g. image_size=32 for a ViT).
    """
    option = "model=torchvision"
    import torchvision.models as tvm

    shape = _image_shape(input_shape, option)
    if not name:
        raise UserError(f"{option} needs model.name, e.g. model.name=resnet18 "
                        "(lossbench list models resnet)")
    classifiers = tvm.list_models(module=tvm)
    if name not in classifiers:
        if name in tvm.list_models():
            raise UserError(f"model.name={name} is a torchvision model but not an image "
                            "classifier (detection, segmentation, video or optical flow); "
                            "lossbench list models names the classifiers")
        raise _unknown_name(name, classifiers, "torchvision")
    kwargs = dict(kwargs or {})
    if name in AUX_LOGITS:
        kwargs.setdefault("aux_logits", False)
    if weights is not None:
        model = _pretrained_torchvision(tvm, name, str(weights), kwargs)
        try:  # the trained classifier knows ImageNet's 1000 classes: a new one for the data
            replace_last_linear(model, lambda last: nn.Linear(last.in_features, num_outputs))
        except ValueError as err:  # SqueezeNet's classifier is a convolution
            raise UserError(f"model.weights={weights}: {err}; use model.weights=null") from None
    else:
        try:
            model = tvm.get_model(name, weights=None, num_classes=num_outputs, **kwargs)
        except TypeError as err:
            raise UserError(f"model.kwargs for {name}: {err}") from None
    model = adapt_input_channels(model, shape[0])
    model = _fit_stem(model, shape, small_input_stem, "model")
    check_forward(model, shape, num_outputs, f"model.name={name}",
                  _size_hint(model, shape, "image_size", "model"))
    return model


def _pretrained_torchvision(tvm, name: str, weights: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model with its trained weights, or a UserError: an unknown weight name, or a file
    that could not be downloaded (offline), naming the file and where it was to go."""
    import os

    import torch.hub

    enum = tvm.get_model_weights(name)
    if weights not in enum.__members__:
        raise UserError(f"model.weights={weights} is not a weight of {name}; it has "
                        f"{', '.join(enum.__members__)} (or null for random init)")
    chosen = enum[weights]
    try:
        return tvm.get_model(name, weights=chosen, **kwargs)
    except OSError as err:  # URLError included: no network, and not in the cache
        target = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(chosen.url))
        reason = getattr(err, "reason", err)
        raise UserError(f"model.weights={weights}: cannot download {chosen.url} to {target} "
                        f"({reason}); put the file there, or use model.weights=null") from None


def timm_model(input_shape: Sequence[int], num_outputs: int, name: str,
               pretrained: bool = False, drop_rate: float = 0.0,
               small_input_stem: bool | None = None, kwargs: dict[str, Any] | None = None
               ) -> nn.Module:
    """A timm model by name (`timm.list_models()`), through `timm.create_model`.

    in_chans and num_classes come from the data and the loss; pretrained: timm's weights from
    the Hugging Face Hub (its cache and HF_HUB_OFFLINE rules); drop_rate: dropout before the
    classifier; small_input_stem: as for torchvision ResNets; kwargs: passed to the model
    (e.g. img_size=32 for a ViT).
    """
    option = "model=timm"
    timm = _library("timm", "timm", option)
    shape = _image_shape(input_shape, option)
    if not name:
        raise UserError(f"{option} needs model.name, e.g. model.name=resnet18 "
                        "(lossbench list models resnet)")
    if not timm.is_model(name.split(".")[0]):
        raise _unknown_name(name, timm.list_models(), "timm")
    try:
        model = timm.create_model(name, pretrained=bool(pretrained), num_classes=num_outputs,
                                  in_chans=shape[0], drop_rate=float(drop_rate),
                                  **dict(kwargs or {}))
    except TypeError as err:
        raise UserError(f"model.kwargs for {name}: {err}") from None
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        cfg = getattr(timm.models.get_pretrained_cfg(name.split(".")[0]), "hf_hub_id", None)
        first = " ".join(str(err).strip().split(". ")[0].split())
        raise UserError(f"model.pretrained=true: cannot fetch the weights of {name}"
                        f"{f' (Hub repo {cfg})' if cfg else ''}: {first}; connect once to "
                        "fill the cache, or use model.pretrained=false") from None
    model = _fit_stem(model, shape, small_input_stem, "model")
    check_forward(model, shape, num_outputs, f"model.name={name}",
                  _size_hint(model, shape, "img_size", "model"))
    return model
