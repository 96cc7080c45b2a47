"""Model shapes, and how the model's output size follows from the data and the loss."""

from __future__ import annotations

import pytest
import torch

from lossbench.data import Split, Splits
from lossbench.losses import BCEWithLogitsLoss, ContrastiveLoss, CrossEntropyLoss, MSELoss
from lossbench.models import CNN, MLP, Linear, resnet18
from lossbench.experiment.run import output_size


@pytest.mark.parametrize("shape", [(4,), (1, 8, 8), (3, 16)])
def test_linear_and_mlp_flatten_any_sample_shape(shape):
    x = torch.randn(5, *shape)
    assert Linear(shape, 3)(x).shape == (5, 3)
    assert MLP(shape, 3, hidden=[7], batch_norm=True, dropout=0.1)(x).shape == (5, 3)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 28, 28), (2, 50), (30,)])
def test_cnn_adapts_to_images_sequences_and_vectors(shape):
    model = CNN(shape, 4)
    assert model(torch.randn(3, *shape)).shape == (3, 4)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    expected = torch.nn.Conv2d if len(shape) == 3 else torch.nn.Conv1d
    assert convs and all(isinstance(c, expected) for c in convs)


def test_resnet18_uses_the_small_image_stem_for_32px():
    model = resnet18((3, 32, 32), 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    big = resnet18((1, 128, 128), 5)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.in_channels == 1


def test_mlp_rejects_bad_dropout():
    with pytest.raises(ValueError, match="dropout"):
        MLP((4,), 2, dropout=1.5)


def _splits(task: str, k: int) -> Splits:
    y = torch.zeros(4, dtype=torch.long)
    part = Split(y=y, x=torch.zeros(4, 3))
    return Splits(train=part, val=part, test=part, task=task, name="t", num_classes=k,
                  class_names=None, sample_shape=(3,))


@pytest.mark.parametrize("loss, task, k, expected", [
    (CrossEntropyLoss(), "multiclass", 10, 10),
    (CrossEntropyLoss(), "binary", 2, 2),
    (BCEWithLogitsLoss(), "binary", 2, 1),
    (BCEWithLogitsLoss(), "multiclass", 10, 10),
    (MSELoss(), "regression", 0, 1),
    (MSELoss(), "multiclass", 5, 5),
    (ContrastiveLoss(), "multiclass", 10, 24),
])
def test_output_size_follows_data_and_loss(loss, task, k, expected):
    assert output_size(loss.head, _splits(task, k), embedding_dim=24) == expected
