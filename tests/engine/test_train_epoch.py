"""One training pass: backward, clipping and step through one code path, loss hooks by contract."""
from __future__ import annotations

import pytest
import torch

from lossbench.engine.loop import OptimizerStep, train_epoch


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(4)]


def trained(scaler, grad_clip):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    sums = train_epoch(model, torch.nn.CrossEntropyLoss(), optimizer, iter(data()),
                       grad_clip=grad_clip, scaler=scaler)
    return model, sums


@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_a_loss_scaler_changes_nothing_when_no_gradient_underflows(grad_clip):
    """The scaled path (scale by 2^k, unscale before clipping) and the plain one reach the very
    same weights: scaling by a power of two is exact in float32."""
    plain, plain_sums = trained(None, grad_clip)
    scaled, scaled_sums = trained(torch.amp.GradScaler("cpu", init_scale=2.0 ** 10), grad_clip)
    assert torch.equal(plain_sums, scaled_sums)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(a, b)


def test_clipping_bounds_the_gradient_norm_of_the_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    step = OptimizerStep(optimizer, torch.nn.CrossEntropyLoss(), grad_clip=0.01)
    x, y = data()[0]
    step(torch.nn.functional.cross_entropy(model(x) * 100, y))
    moved = torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), before)])
    assert moved.norm() <= 0.01 * (1 + 1e-5)  # lr 1: the step is the clipped gradient


class ModelLoss(torch.nn.Module):
    """A loss that needs the model (as adversarial training does) and reports two parts."""

    def __init__(self):
        super().__init__()
        self.terms, self.calls = {}, 0

    def forward(self, out, y):
        raise AssertionError("the loop must call model_loss, not forward")

    def model_loss(self, model, x, y):
        self.calls += 1
        a = torch.nn.functional.cross_entropy(model(x), y)
        b = torch.nn.functional.cross_entropy(model(x + 0.1), y)
        self.terms = {"clean": a.detach(), "shifted": b.detach()}
        return (a + b) / 2


def test_a_model_loss_hook_replaces_the_forward_and_its_terms_are_summed():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    loss = ModelLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    term_sums: dict[str, torch.Tensor] = {}
    losses: list[torch.Tensor] = []
    sums = train_epoch(model, loss, optimizer, iter(data()), term_sums=term_sums, losses=losses)
    assert loss.calls == 4 and sorted(term_sums) == ["clean", "shifted"]
    # each part summed × batch size; their mean is the loss
    total = (term_sums["clean"] + term_sums["shifted"]) / 2
    torch.testing.assert_close(total, sums[0])
    assert sums[1] == 32 and len(losses) == 4


def test_a_one_output_model_is_squeezed_for_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)  # (B, 1) -> (B,) for a one-value loss
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data()[0]
    y = y.float()
    want = torch.nn.functional.mse_loss(model(x).squeeze(-1), y).detach()  # (B,) against (B,)
    losses: list[torch.Tensor] = []
    train_epoch(model, torch.nn.MSELoss(), optimizer, iter([(x, y)]), losses=losses)
    torch.testing.assert_close(losses[0], want, rtol=0, atol=0)
