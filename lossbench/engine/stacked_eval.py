"""Each replica's validation outputs from one stacked forward: what `engine.predict.model_outputs`
gives its separate run on the validation split (outputs, targets, mean loss) and on the training
samples whose labels the injected noise flipped (the memorisation curve), for all the replicas of
a stack at once.

Validating replica by replica runs R small forwards and toggles R modules between training and
evaluation every epoch; stacked, the replicas share the forward, and each replica's own course
(`engine.course`) turns its outputs into its history row as before (`Epochs.validate`'s
`outputs`). Replicas whose validation samples are not tensors (a DataLoader) validate on their own.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from lossbench.engine.stacked_loss import StackedLoss
from lossbench.engine.validation import scores_classes
from lossbench.losses.base import squeeze_output

__all__ = ["stacked_outputs"]


def _samples(xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """(N, ...) when every replica has the same samples, else (R, N, ...); and which."""
    first = xs[0]
    if all(x is first or torch.equal(x, first) for x in xs[1:]):
        return first, True
    return torch.stack(list(xs)), False


def _forward(model: Any, x: torch.Tensor, shared: bool, replicas: int, batch_size: int,
             n: int, at_once: int) -> list[torch.Tensor]:
    """The stacked outputs (R, B, ...) of x's first n samples, batch by batch, `at_once`
    replicas at a time (an evaluation batch is larger than a training one: the replicas' part
    of it is cut so that it holds no more samples than the stack's training step)."""
    outs = []
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size] if shared else x[:, start:start + batch_size]
        parts = []
        for first in range(0, replicas, at_once):
            rows = slice(first, min(first + at_once, replicas))
            width = rows.stop - rows.start
            part = xb.expand(width, *xb.shape) if shared else xb[rows]
            parts.append(model(part, rows if width < replicas else None))
        outs.append(torch.cat(parts) if len(parts) > 1 else parts[0])
    return outs


def stacked_outputs(model: Any, loss: StackedLoss, runs: Sequence[Any]
                    ) -> list[dict[str, Any]] | None:
    """For replica r (the stack's position r, `runs[r]` its `engine.loop.Epochs`): {"val":
    (outputs, targets, mean loss) as `model_outputs` returns them, "flipped": outputs on its
    flipped training samples (absent without any)}. None: validate each replica on its own."""
    vals = [run.splits.val for run in runs]
    if (any(v.x is None for v in vals) or len({len(v) for v in vals}) != 1
            or len({run.trainer.eval_batch_size for run in runs}) != 1):
        return None
    trainer, device, replicas = runs[0].trainer, runs[0].device, len(runs)
    batch_size, max_batches = trainer.eval_batch_size, trainer.get("max_batches")
    at_once = max(1, replicas * trainer.batch_size // batch_size)
    n = len(vals[0]) if max_batches is None else min(len(vals[0]), max_batches * batch_size)
    x, shared = _samples([v.x for v in vals])
    y = torch.stack([v.y for v in vals])  # (R, N)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outs = _forward(model, x, shared, replicas, batch_size, n, at_once)
            totals = [torch.zeros((), device=device) for _ in runs]
            for b, out in enumerate(outs):
                yb = y[:, b * batch_size:(b + 1) * batch_size]
                values = loss(out, yb)  # (R,): each replica's own loss, as model_outputs calls it
                for r in range(replicas):
                    totals[r] += values[r].float() * yb.shape[1]
            out = torch.cat(outs, 1) if outs else None
            results = [{"val": ((squeeze_output(out[r]).float() if out is not None
                                 else torch.empty((0,), device=device)),
                                y[r, :n], float(totals[r]) / max(n, 1))}
                       for r in range(replicas)]
            flipped = _flipped_outputs(model, runs, batch_size, at_once)
    finally:
        model.train(was_training)
    for r, out in flipped.items():
        results[r]["flipped"] = out
    return results


def _flipped_outputs(model: Any, runs: Sequence[Any], batch_size: int, at_once: int
                     ) -> dict[int, torch.Tensor]:
    """{r: outputs on replica r's flipped training samples, in their order} for the replicas
    that draw a memorisation curve: one stacked forward, each replica on its own samples
    (padded with its first one to the longest's length; the padding's outputs are dropped)."""
    rows: dict[int, torch.Tensor] = {}
    for r, run in enumerate(runs):
        train = run.splits.train
        if (run.flipped is None or train.x is None
                or not scores_classes(run.head, run.loss_fn)):
            continue
        rows[r] = (train.y != train.y_clean).nonzero().flatten()
    if not rows:
        return {}
    longest = max(len(idx) for idx in rows.values())
    first = next(iter(rows.values()))
    padded = [torch.cat([idx, idx[:1].expand(longest - len(idx))]) if idx is not None
              else first[:1].expand(longest) for idx in (rows.get(r) for r in range(len(runs)))]
    xs = [run.splits.train.x for run in runs]
    x, shared = (xs[0], True) if all(v is xs[0] for v in xs) else (None, False)
    # each replica's own samples, gathered from its own training set: (R, F, ...)
    x = x[torch.stack(padded)] if shared else torch.stack([v[i] for v, i in zip(xs, padded)])
    out = torch.cat(_forward(model, x, False, len(runs), batch_size, longest, at_once), 1)
    return {r: squeeze_output(out[r, :len(idx)]).float() for r, idx in rows.items()}
