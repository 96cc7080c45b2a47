"""The hand-written run that `benchmarks/run.py` (part "whole") times against `lossbench train`:
the default experiment (digits, standardised, 60/20/20 split, MLP 64-128-64-10, Adam lr 1e-3,
batch 128, cross-entropy) in plain PyTorch, validating (loss, accuracy) after every epoch and
testing once at the end, with torch's default threads as a user's script would have.

    python benchmarks/hand_loop.py --epochs 120
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(args.seed).permutation(len(y))
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    tr, va, te = np.split(order, [n_train, n_train + n_val])
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-8
    x = torch.tensor((x - mean) / std, dtype=torch.float32)
    y = torch.tensor(y)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt, xv, yv = x[tr], y[tr], x[va], y[va]
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(len(yt))
        for i in range(0, len(yt), 128):
            idx = perm[i:i + 128]
            loss = loss_fn(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            out = model(xv)
            float(loss_fn(out, yv)), float((out.argmax(1) == yv).float().mean())
    with torch.inference_mode():
        accuracy = float((model(x[te]).argmax(1) == y[te]).float().mean())
    print(f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
