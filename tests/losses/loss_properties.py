"""Checks every loss family's tests share: reductions agree, extreme logits stay finite,
bad hyperparameters raise a ValueError naming them. (Imported by the test files beside it.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

# Logits as a user's model might produce them, saturated ones included.
EXTREME = st.sampled_from([-1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4])


@st.composite
def logits_and_classes(draw, min_classes: int = 2, max_classes: int = 5, max_rows: int = 6,
                       values=EXTREME):
    """(N, K) float32 logits drawn from `values` and (N,) class indices."""
    k = draw(st.integers(min_classes, max_classes))
    n = draw(st.integers(1, max_rows))
    flat = draw(st.lists(values, min_size=n * k, max_size=n * k))
    target = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    return torch.tensor(flat, dtype=torch.float32).reshape(n, k), torch.tensor(target)


def assert_finite_with_grad(loss_fn, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = input.clone().requires_grad_(True)
    value = loss_fn(x, target)
    value.sum().backward()
    assert torch.isfinite(value).all(), value
    assert torch.isfinite(x.grad).all(), x.grad
    return value.detach()


def assert_reductions_agree(make, input: torch.Tensor, target: torch.Tensor) -> None:
    """make(reduction) -> loss; 'none' summed / averaged equals 'sum' / 'mean'."""
    per_item = make("none")(input, target)
    assert per_item.dim() == 1
    torch.testing.assert_close(make("sum")(input, target), per_item.sum())
    torch.testing.assert_close(make("mean")(input, target), per_item.mean())


def assert_rejects(make, **bad) -> None:
    """make(**bad) raises a ValueError whose message names the (single) bad parameter."""
    (name,) = bad
    with pytest.raises(ValueError, match=name.split("[")[0]):
        make(**bad)


def gradcheck(loss_fn, input: torch.Tensor, target: torch.Tensor) -> bool:
    x = input.detach().double().requires_grad_(True)
    t = target.double() if target.is_floating_point() else target
    return torch.autograd.gradcheck(lambda z: loss_fn(z, t), (x,), eps=1e-6, atol=1e-5)
