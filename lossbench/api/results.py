"""What the Python API returns: `Run`, `Runs` and `Comparison`, plain objects over the files of
run directories, which render as tables in Jupyter."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossbench.errors import LossbenchError


def load(path: str | os.PathLike) -> Run:
    """The `Run` recorded in a run directory (any run of lossbench, from the CLI or Python)."""
    from lossbench.results.record import UnreadableRecord, read_metrics

    run_dir = Path(path)
    if not run_dir.is_dir():
        raise LossbenchError(f"{run_dir} is not a directory")
    try:
        metrics = read_metrics(run_dir)
    except (UnreadableRecord, OSError) as err:
        raise LossbenchError(str(err)) from None
    except ValueError as err:  # a record of a newer lossbench
        raise LossbenchError(str(err)) from None
    if metrics is None:
        jobs = _job_dirs(run_dir)
        hint = (f"; it is a sweep folder of {len(jobs)} runs: lossbench.Runs.of({str(run_dir)!r})"
                if jobs else "")
        raise LossbenchError(f"{run_dir} holds no metrics.json: not a finished, failed or "
                             f"interrupted run{hint}")
    return Run(run_dir.resolve(), metrics)  # still right after the caller changes directory


def _job_dirs(folder: Path) -> list[Path]:
    """The run directories below a sweep folder (any depth), in a stable order."""
    from lossbench.results.record import metrics_path

    name = metrics_path(folder).name
    return sorted((p.parent for p in folder.rglob(name) if p.parent != folder), key=str)


@dataclass
class Run:
    """One run directory: its record (metrics.json) read, the rest read when asked for.

    dir: the run directory; status: "completed", "failed", "diverged" or "interrupted";
    test: best and last test metrics, as metrics.json's `test_at` holds them;
    metrics: the whole metrics.json; config, history, report, model: see their docstrings.
    """

    dir: Path
    metrics: dict[str, Any] = field(repr=False)
    _built: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "unknown"))

    @property
    def loss(self) -> str:
        return str((self.metrics.get("choices") or {}).get("loss", "?"))

    @property
    def test(self) -> dict[str, dict[str, Any]]:
        """{"best": metrics at the epoch selected on validation, "last": at the last epoch};
        numbers only (the classification report is `report`)."""
        at = self.metrics.get("test_at") or {}
        return {k: {m: v for m, v in (at.get(k) or {}).items() if isinstance(v, (int, float))}
                for k in ("best", "last") if k in at}

    @property
    def config(self):
        """The resolved config the run was trained with (an OmegaConf DictConfig)."""
        from lossbench.commands.eval import saved_config
        from lossbench.errors import UserError

        try:
            return saved_config(self.dir)
        except UserError as err:
            raise LossbenchError(str(err)) from None

    @property
    def history(self):
        """One row per epoch (train and validation metrics, lr, memorisation), a pandas
        DataFrame indexed by epoch."""
        import pandas as pd

        from lossbench.results.record import read_history

        frame = pd.DataFrame(read_history(self.dir))
        return frame.set_index("epoch") if "epoch" in frame else frame

    @property
    def report(self):
        """The test split's classification report (precision, recall, f1-score, support per
        class and averaged), a pandas DataFrame; None for regression."""
        import pandas as pd

        table = (self.metrics.get("test") or {}).get("classification_report")
        if not isinstance(table, dict):
            return None
        rows = {k: v for k, v in table.items() if isinstance(v, dict)}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        if "accuracy" in table:
            support = frame["support"].iloc[-1] if len(frame) else float("nan")
            frame.loc["accuracy"] = [float("nan"), float("nan"), table["accuracy"], support]
        return frame

    def _build(self):
        """(model with its kept weights loaded, loss, head, splits), built once, on the CPU."""
        if self._built is None:
            import torch

            from lossbench.commands.eval import saved_choices
            from lossbench.experiment import builders

            cfg = self.config
            builders.seed_everything(int(cfg.seed))  # the run's split, as eval rebuilds it
            splits = builders.load_data(cfg)
            device = torch.device("cpu")
            loss_fn, model, head, _ = builders.build_loss_and_model(
                cfg, splits, device, saved_choices(self.dir).get("loss", "?"))
            weights = self.dir / "model.pt"
            if not weights.is_file():
                raise LossbenchError(f"{self.dir} has no model.pt (status {self.status})")
            model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
            self._built = (model.eval(), loss_fn, head, splits)
        return self._built

    @property
    def model(self):
        """The kept weights (the selected epoch's, or the last with trainer.keep=last) in the
        model the run's config builds: a torch.nn.Module in eval mode, on the CPU."""
        return self._build()[0]

    def predict(self, x: Any):
        """Class scores (N, classes) for raw inputs x (N, ...) as the dataset gives them, scaled
        as the run's training data was; for regression the predictions in the target's units."""
        import numpy as np
        import torch

        from lossbench.engine.predict import class_scores

        model, loss_fn, head, splits = self._build()
        if head == "embedding":
            raise LossbenchError(f"loss {self.loss} learns embeddings: its class scores come "
                                 "from a nearest-neighbour vote (lossbench eval), not from x")
        x = np.asarray(x, dtype=np.float32)
        shape = tuple(splits.sample_shape)
        if x.ndim == len(shape):  # one sample
            x = x[None]
        if tuple(x.shape[1:]) != shape:
            if x.ndim < 2 or int(np.prod(x.shape[1:])) != int(np.prod(shape)):
                raise LossbenchError(f"predict takes samples of shape {shape} (the run's "
                                     f"dataset), not {tuple(x.shape[1:])}")
            x = x.reshape(len(x), *shape)  # flat rows of the same samples (digits' 64 pixels)
        mean, std = splits.input_scale
        x = (x - mean) / std
        with torch.no_grad():
            out = model(torch.from_numpy(x.astype(np.float32)))
            if splits.task == "regression":
                return (out.squeeze(-1) * splits.target_std + splits.target_mean).numpy()
            return class_scores(out, head, loss_fn).numpy()

    def _repr_html_(self) -> str:
        best = self.test.get("best", {})
        cells = "".join(f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{v}</td>"
                        for v in best.values())
        heads = "".join(f"<th>{k}</th>" for k in best)
        return (f"<p><b>{self.dir}</b>: loss={self.loss}, {self.status}, selected epoch "
                f"{self.metrics.get('best_epoch')}</p><table><tr>{heads}</tr>"
                f"<tr>{cells}</tr></table>")


class Runs(list):
    """The runs of a sweep (a list of `Run`), with the sweep folder as `dir`."""

    dir: Path | None = None

    @classmethod
    def of(cls, folder: str | os.PathLike) -> Runs:
        """Every run below a sweep folder."""
        found = cls(load(p) for p in _job_dirs(Path(folder)))
        found.dir = Path(folder)
        return found

    def to_pandas(self):
        """One row per run: its directory, loss, seed, status and best test metrics."""
        import pandas as pd

        return pd.DataFrame([{"dir": str(r.dir), "loss": r.loss, "seed": r.metrics.get("seed"),
                              "status": r.status, **r.test.get("best", {})} for r in self])

    def _repr_html_(self) -> str:
        return self.to_pandas()._repr_html_()


class Picture:
    """A PNG that Jupyter shows inline; `save(path)` writes it."""

    def __init__(self, name: str, png: bytes):
        self.name, self.png = name, png

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str | os.PathLike) -> Path:
        Path(path).write_bytes(self.png)
        return Path(path)

    def __repr__(self) -> str:
        return f"<Picture {self.name}, {len(self.png)} bytes of PNG>"


@dataclass
class Comparison:
    """What `lossbench compare` prints: `str()` is its text table, `to_pandas()` one row per
    configuration (comparison.csv's columns), and in Jupyter an HTML table."""

    blocks: list = field(repr=False)
    failed: list = field(repr=False)
    notes: Any = field(repr=False)

    def to_pandas(self):
        import pandas as pd

        from lossbench.results.comparison.tables import csv_rows

        return pd.DataFrame(csv_rows(self.blocks, self.notes.at))

    def __str__(self) -> str:
        from lossbench.results.comparison.tables import print_table

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            print_table(self.blocks, self.failed, self.notes)
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        if not self.blocks:
            return "<p>no completed runs to compare</p>"
        return self.to_pandas().to_html(index=False, float_format=lambda v: f"{v:.4f}")

    def plot(self) -> list[Picture]:
        """comparison.png, curves.png and (over noise rates) rates.png, shown inline."""
        from lossbench.results.comparison import plots

        if not self.blocks:
            return []
        pictures = [Picture("comparison.png", plots.comparison_plot(self.blocks)),
                    Picture("curves.png", plots.curves_plot(self.blocks))]
        if any(b.rate_key for b in self.blocks):
            pictures.append(Picture("rates.png", plots.rates_plot(self.blocks, self.notes.at)))
        return pictures
