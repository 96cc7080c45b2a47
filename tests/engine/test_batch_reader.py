"""One batch reader for training, evaluation and the adversarial accuracy."""
from __future__ import annotations

import pytest
import torch

from lossbench.data import Split, Splits
from lossbench.engine import batches
from lossbench.engine.batches import eval_batches, read_batches
from lossbench.engine.predict import predict, robust_accuracy


class RowsDataset(torch.utils.data.Dataset):
    """The same samples as in-memory tensors, read one at a time (as on-disk images are)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def split(through: str) -> Split:
    x = torch.arange(23 * 3, dtype=torch.float32).reshape(23, 3)
    y = torch.arange(23) % 3
    return Split(x=x, y=y) if through == "tensors" else Split(y=y, dataset=RowsDataset(x, y))


def test_a_range_is_read_as_views_in_order():
    s = split("tensors")
    got = list(read_batches(s, range(5, 23), 8))
    assert [len(yb) for _, yb in got] == [8, 8, 2]
    assert torch.equal(torch.cat([xb for xb, _ in got]), s.x[5:])
    assert got[0][0].data_ptr() == s.x[5].data_ptr()  # a slice, not a copy


@pytest.mark.parametrize("gather_bytes", [1, 12 * 8 * 2, 2**30])
def test_an_index_tensor_is_read_in_its_order_whatever_the_chunk(monkeypatch, gather_bytes):
    monkeypatch.setattr(batches, "GATHER_BYTES", gather_bytes)
    s = split("tensors")
    rows = torch.randperm(23, generator=torch.Generator().manual_seed(1))
    got = list(read_batches(s, rows, 4))
    assert [len(yb) for _, yb in got] == [4] * 5 + [3]
    assert torch.equal(torch.cat([xb for xb, _ in got]), s.x[rows])
    assert torch.equal(torch.cat([yb for _, yb in got]), s.y[rows])


@pytest.mark.parametrize("through", ["tensors", "a DataLoader"])
def test_evaluation_reads_the_split_in_order_up_to_max_batches(through):
    s = split(through)
    whole = [yb for _, yb in eval_batches(s, 5, torch.device("cpu"))]
    assert torch.equal(torch.cat(whole), s.y) and [len(b) for b in whole] == [5, 5, 5, 5, 3]
    cut = [yb for _, yb in eval_batches(s, 5, torch.device("cpu"), max_batches=2)]
    assert torch.equal(torch.cat(cut), s.y[:10])


class IdentityAttack(torch.nn.Module):
    """A loss whose attack leaves the inputs as they are: its robust accuracy is the accuracy."""

    def forward(self, out, y):
        return torch.nn.functional.cross_entropy(out, y)

    def attack(self, model, x, y):
        self.seen = getattr(self, "seen", 0) + len(y)
        return x


@pytest.mark.parametrize("through", ["tensors", "a DataLoader"])
def test_robust_accuracy_under_no_attack_is_the_accuracy_of_predict(through):
    torch.manual_seed(0)
    part = split(through)
    splits = Splits(train=part, val=part, test=part, task="multiclass", name="toy",
                    num_classes=3, class_names=["0", "1", "2"], sample_shape=(3,))
    model = torch.nn.Linear(3, 3)
    loss = IdentityAttack()
    pred = predict(model, splits, "test", "logits", 4, torch.device("cpu"), loss)
    accuracy = float((pred.y_pred == pred.y_true).mean())
    assert robust_accuracy(model, splits, "test", "logits", 4, torch.device("cpu"),
                           loss) == pytest.approx(accuracy, abs=1e-12)
    assert loss.seen == 23
    loss.seen = 0
    robust_accuracy(model, splits, "test", "logits", 4, torch.device("cpu"), loss, max_batches=3)
    assert loss.seen == 12
