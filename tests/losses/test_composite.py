"""The mixed loss: a weighted sum of other losses composed in config, fixed or learned weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_properties import assert_finite_with_grad, assert_rejects

from lossbench.losses import (ContrastiveLoss, CrossEntropyLoss, FocalLoss, HuberLoss, L1Loss,
                              MAELoss, MixedLoss, MSELoss, SupConLoss)


def sample(b=12, d=6, classes=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.randint(0, classes, (b,), generator=g)


def shared_embedding(weighting="fixed", weights=None):
    torch.manual_seed(0)
    return MixedLoss({"ce": CrossEntropyLoss(), "contrastive": ContrastiveLoss(0.7)},
                     weights=weights, weighting=weighting, embedding_dim=6, num_classes=3).double()


def test_shared_embedding_sums_ce_on_its_classifier_and_contrastive_on_the_embedding():
    loss = shared_embedding(weights={"ce": 0.3, "contrastive": 2.0})
    assert loss.head == "embedding" and loss.tasks == ("multiclass", "binary")
    e, y = sample()
    logits = e @ loss.classifier.weight.T + loss.classifier.bias  # (B, K)
    ce = CrossEntropyLoss()(logits, y)
    con = ContrastiveLoss(0.7)(e, y)
    torch.testing.assert_close(loss(e, y), 0.3 * ce + 2.0 * con)
    torch.testing.assert_close(loss.terms["ce"], ce)
    torch.testing.assert_close(loss.terms["contrastive"], con)
    torch.testing.assert_close(loss.scores(e), torch.softmax(logits, dim=-1))


def test_classifier_and_log_variances_are_parameters_the_optimizer_sees():
    loss = shared_embedding("uncertainty")
    names = {name for name, _ in loss.named_parameters()}
    assert names == {"classifier.weight", "classifier.bias", "log_vars"}
    e, y = sample()
    loss(e, y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


def test_setup_sizes_the_classifier_from_the_data():
    loss = MixedLoss({"ce": CrossEntropyLoss(), "supcon": SupConLoss()}, embedding_dim=5)
    assert loss.classifier is None
    loss.setup("multiclass", 7)
    assert (loss.classifier.in_features, loss.classifier.out_features) == (5, 7)
    with pytest.raises(RuntimeError, match="setup"):
        MixedLoss({"ce": CrossEntropyLoss(), "supcon": SupConLoss()}, embedding_dim=5)(
            torch.randn(4, 5), torch.tensor([0, 1, 0, 1]))


def test_uncertainty_weighting_follows_kendall():
    loss = shared_embedding("uncertainty", weights={"ce": 1.0, "contrastive": 0.5})
    with torch.no_grad():
        loss.log_vars.copy_(torch.tensor([0.4, -1.1]))
    e, y = sample(seed=1)
    value = loss(e, y)
    ce, con = loss.terms["ce"], loss.terms["contrastive"]
    expected = torch.exp(torch.tensor(-0.4)) * ce + 0.4 + torch.exp(torch.tensor(1.1)) * 0.5 * con - 1.1
    torch.testing.assert_close(value, expected.to(value.dtype))
    report = loss.report()
    assert report["log_var_ce"] == pytest.approx(0.4) and report["log_var_contrastive"] == pytest.approx(-1.1)
    assert report["weight_contrastive"] == pytest.approx(float(torch.exp(torch.tensor(1.1))))
    assert shared_embedding().report() == {}


def test_logits_terms_mix_without_a_classifier():
    loss = MixedLoss({"ce": CrossEntropyLoss(), "mae": MAELoss()}, weights={"mae": 3.0})
    assert loss.head == "logits" and loss.classifier is None
    x, y = sample(d=3, seed=2)
    torch.testing.assert_close(loss(x, y), CrossEntropyLoss()(x, y) + 3.0 * MAELoss()(x, y))
    torch.testing.assert_close(loss.scores(x), torch.softmax(x, dim=-1))


def test_regression_terms_mix():
    loss = MixedLoss({"mse": MSELoss(), "l1": L1Loss()})
    assert loss.tasks == ("regression",)
    pred, y = torch.randn(9), torch.randn(9)
    torch.testing.assert_close(loss(pred, y), MSELoss()(pred, y) + L1Loss()(pred, y))


def test_gradcheck_float64():
    loss = shared_embedding("uncertainty")
    e, y = sample(b=6, d=6, classes=2, seed=3)
    e.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, y), (e,), eps=1e-6, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.sampled_from([-1e4, -1.0, 0.0, 2.0, 1e4]), min_size=24, max_size=24),
       y=st.lists(st.integers(0, 2), min_size=4, max_size=4))
def test_finite_and_non_negative_at_extreme_embeddings(values, y):
    loss = shared_embedding().float()
    value = assert_finite_with_grad(loss, torch.tensor(values).reshape(4, 6), torch.tensor(y))
    assert value >= 0


@pytest.mark.parametrize("kwargs,name", [
    ({"losses": {}}, "losses"),
    ({"losses": {"ce": CrossEntropyLoss()}, "weights": {"ce": -1.0}}, "weights.ce"),
    ({"losses": {"ce": CrossEntropyLoss()}, "weights": {"typo": 1.0}}, "weights"),
    ({"losses": {"ce": CrossEntropyLoss()}, "weighting": "learned"}, "weighting"),
    ({"losses": {"ce": CrossEntropyLoss(), "huber": HuberLoss()}}, "common task"),
    ({"losses": {"ce": CrossEntropyLoss(), "focal": FocalLoss()}}, "head"),
    ({"losses": {"ce": CrossEntropyLoss(), "con": ContrastiveLoss()}}, "embedding_dim"),
    ({"losses": {"ce": CrossEntropyLoss(), "con": ContrastiveLoss()}, "embedding_dim": 0}, "embedding_dim"),
    ({"losses": {"ce": "CrossEntropyLoss"}}, "losses.ce"),
])
def test_invalid_compositions_raise_value_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MixedLoss(**kwargs)


def test_invalid_weighting_names_the_parameter():
    assert_rejects(lambda weighting: MixedLoss({"ce": CrossEntropyLoss()}, weighting=weighting),
                   weighting="sum")


@pytest.mark.parametrize("overrides,names,head", [
    ([], ["ce", "contrastive"], "embedding"),
    (["loss.losses.contrastive._target_=lossbench.losses.SupConLoss", "~loss.losses.contrastive.margin"],
     ["ce", "contrastive"], "embedding"),
    (["~loss.losses.contrastive", "~loss.weights.contrastive",
      "+loss.losses.mae._target_=lossbench.losses.MAELoss"], ["ce", "mae"], "logits"),
])
def test_the_compositions_shown_in_mixed_yaml_build(compose_cfg, overrides, names, head):
    from hydra.utils import instantiate

    loss = instantiate(compose_cfg("loss=mixed", *overrides).loss)
    assert sorted(loss.losses) == names and loss.head == head
    assert loss.embedding_dim == 32  # ${embedding_dim} of the root config


def _loss_parameters_worker(out_dir: str) -> None:
    """One rank: a few training steps on its own data; writes the mixed loss's parameters."""
    import json
    from pathlib import Path

    from lossbench.engine import distributed
    from lossbench.engine.loop import train_epoch

    dist = distributed.init_from_env(torch.device("cpu"))
    torch.manual_seed(0)  # same initial model and loss on every rank
    model = torch.nn.Linear(4, 6)
    loss = MixedLoss({"ce": CrossEntropyLoss(), "contrastive": ContrastiveLoss()},
                     weighting="uncertainty", embedding_dim=6, num_classes=3)
    opt = torch.optim.SGD(list(model.parameters()) + list(loss.parameters()), lr=0.5)
    g = torch.Generator().manual_seed(100 + dist.rank)  # different data on every rank
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g))
               for _ in range(3)]
    train_epoch(model, loss, opt, batches)
    values = {name: p.detach().reshape(-1).tolist() for name, p in loss.named_parameters()}
    Path(out_dir, f"rank{dist.rank}.json").write_text(json.dumps(values))


@pytest.mark.slow
def test_loss_parameters_stay_equal_across_processes(tmp_path):
    """Each rank's loss gradients are averaged like the model's (DistributedDataParallel does
    not see the loss), so the learned log-variances and classifier agree on every rank."""
    import json

    from lossbench.engine import distributed

    distributed.spawn(_loss_parameters_worker, 2, (str(tmp_path),))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["log_vars"] != [0.0, 0.0]  # they were trained


def test_training_keeps_the_classifier_of_the_best_epoch_with_the_model(compose_cfg):
    """The shared-embedding classifier is restored to the best epoch together with the model
    weights: predictions pair the best embedding with the classifier trained alongside it."""
    from rich.console import Console

    from lossbench.data import Split, Splits
    from lossbench.engine.progress import EpochProgress
    from lossbench.engine.loop import fit

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (60,), generator=g)
    x = torch.randn(60, 4, generator=g) + y.unsqueeze(1).float()
    part = Split(y=y, x=x)
    splits = Splits(train=part, val=part, test=part, task="multiclass", name="toy", num_classes=3,
                    class_names=["0", "1", "2"], sample_shape=(4,))
    # the best epoch by the largest validation loss: the first, while training goes on for 4
    trainer = compose_cfg("trainer=smoke", "trainer.epochs=4", "trainer.monitor=val_loss",
                          "trainer.mode=max", "trainer.max_batches=null").trainer
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 6)
    loss = MixedLoss({"ce": CrossEntropyLoss(), "contrastive": ContrastiveLoss()},
                     embedding_dim=6, num_classes=3)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(loss.parameters()), lr=0.05)
    per_epoch = {}
    on_epoch = lambda row: per_epoch.__setitem__(  # noqa: E731
        row["epoch"], {k: v.clone() for k, v in loss.state_dict().items()})
    with EpochProgress(Console(quiet=True), trainer.epochs, "val_loss", enabled=False) as progress:
        result = fit(model, loss, optimizer, None, splits, loss.head, trainer, torch.device("cpu"),
                     torch.Generator().manual_seed(0), progress, on_epoch=on_epoch)
    assert result.best_epoch == 1 and result.epochs_run == 4
    best, last = per_epoch[1], per_epoch[4]
    assert not torch.equal(best["classifier.weight"], last["classifier.weight"])
    for key, value in loss.state_dict().items():
        torch.testing.assert_close(value, best[key])
