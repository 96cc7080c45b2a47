"""The run record: the files of a run directory, and what metrics.json says, written down once.

Every module that writes or reads metrics.json or history.csv goes through this one.

Files of a run directory
------------------------
- `metrics.json` (METRICS): the run's outcome, below. Written last, atomically: a run directory
  without it is a run that is still going or was killed.
- `history.csv` (HISTORY): one row per epoch, below.
- `report.txt` (REPORT): the test report as the console showed it.
- `model.pt` (MODEL): the state dict of the weights `trainer.keep` picked; `loss.pt` (LOSS_STATE):
  the loss's own learned parameters or layers, when it has any.
- `checkpoint.pt`: the state to continue a stopped run from (its name and format belong to
  lossbench.engine.checkpoint); removed once the run completes.
- `.hydra/config.yaml`, `.hydra/overrides.yaml`, `.hydra/hydra.yaml`: Hydra's record of the job.
- `*.png`: the plots; `train.log`, `console.txt`: what the run printed.

metrics.json, schema version 1
------------------------------
A JSON object. Every run's record has:

- `schema_version`: SCHEMA_VERSION of the lossbench that wrote it. Records written before the
  key existed are version 1; a reader refuses a version newer than its own (UserError).
- `status`: `completed`, `diverged` (NaN/inf loss), `interrupted` (Ctrl-C, SIGTERM, preemption:
  checkpoint.pt kept) or `failed` (an error in a sweep or study job, see `failure_record`).
- `choices`: the config-group choices ({"loss": "gce", "dataset": "wine", ...}).
- `seed`; `pairing`: {data_seed, train_seed, and, once the model is built, init_hash (digest of
  the initial weights) and order_hash (of the first epoch's sample order)}: two runs with equal
  pairing saw the same split, noise, initial weights and batches.
- `config`: the resolved task config without location keys (`resolved_config`): the run's
  identity, which a resumed sweep or study compares to skip a job.
- `wall_time_s`: seconds of training (a failed job: from its start to the failure).
- `files`: {file name: size in bytes} of the record's other files as they were when metrics.json
  was written (history.csv, model.pt, loss.pt; checkpoint.pt of a run that did not complete):
  a run is whole only while they are (`damaged_files`). Absent from records written before it.

A completed run adds:

- `task` (multiclass, binary, regression), `dataset` (its name), `num_outputs`,
  `split_sizes` {train, val, test}.
- `monitor`, `mode`: the validation metric that picks the epoch and its direction (min/max);
  `selection`: that rule in full {metric, mode, tie_break, labels, privileged, min_steps,
  patience, on_test}.
- `best_epoch`, `best_val` (the monitored value there), `epochs_run`, `stopped_early`,
  `last_epoch`, `budget` {epochs, epochs_run, steps_run, early_stopping}.
- `keep`: `best` or `last`, the weights model.pt holds; `test`: the test metrics of those
  weights (accuracy, macro_f1, nll, brier, ece, ... or rmse, mae, r2, ...) — the headline;
  `test_at` {best, last}: the test metrics of both.
- `memorisation`: with injected label noise, how many flipped training labels the model
  predicts as the noisy label / the true one at the best and the last epoch (else null).
- `warnings`: a list of {kind, message} (near_chance, constant_prediction, ...).
- `class_scores` (classification; else null): where the class probabilities that nll, brier and
  ece score come from: `softmax`, `sigmoid` (one logit), `ovr_sigmoid`, `loss` (the loss's own
  `scores`) or `knn_votes` (vote shares of the nearest training embeddings, for a
  metric-learning loss): lossbench.engine.predict.SCORE_SOURCES. Absent in older records.
- `data`: the split's corruption statistics (noise, imbalance, resampling), as the data layer
  records them.
- optional: `head` (a cosine classifier asked for by the loss), `loss_description`,
  `loss_params` (a loss's learned or derived parameters).

A diverged or interrupted run adds `stopped_at` {epoch, step, steps; diverged: loss, phase},
`message` (the line the user read), `task`, `dataset`, `monitor`, `mode`, `best_epoch`,
`best_val`, `epochs_run`, `checkpoint` (its file name, or null when none was written).

A failed job adds `error` (one line), `traceback`, and, when the failed attempt itself had
written a record (a diverged run in a sweep), that record's keys with its status moved to
`stopped`.

history.csv
-----------
A header and one row per epoch run: `epoch`, `train_loss` (and `train_loss_<term>` for each term
of a composite loss), the validation metrics (`val_loss`, and `val_accuracy`, `val_macro_f1`,
`val_nll` for classification or `val_rmse`, `val_mae`, `val_r2` for regression), with injected
label noise the same against the clean labels (`val_<metric>_clean`) and `flipped_memorised`,
`flipped_true`; then `steps` (optimizer steps so far), `lr` and `seconds` (the epoch's time).
A column a row lacks is empty.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lossbench.errors import UserError, error_line
from lossbench.results.files import write_csv_atomic, write_json_atomic

METRICS = "metrics.json"
HISTORY = "history.csv"
REPORT = "report.txt"
MODEL = "model.pt"
LOSS_STATE = "loss.pt"
CHECKPOINT = "checkpoint.pt"  # its format belongs to lossbench.engine.checkpoint

# 1: the layout the module docstring describes. Raise it when a key changes meaning or goes;
# a key added (optional for readers) does not need a new version.
SCHEMA_VERSION = 1

# Task-config keys that say where a run lives, not what it computes: never part of the identity.
LOCATION_KEYS = ("run_dir",)


class UnreadableRecord(ValueError):
    """metrics.json is there but is not a run record (not JSON, not an object, a version that
    is no number). A ValueError, as the JSON parser's own errors are, so that a reader which
    tolerates a broken file keeps doing so. `reason` is the message without the path."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class NewerRecord(UserError):
    """metrics.json was written by a newer lossbench, in a schema this one does not know."""


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS


def has_metrics(run_dir: str | Path) -> bool:
    """Whether run_dir holds a run record (a run that ended: completed, stopped or failed)."""
    return metrics_path(run_dir).is_file()


def recorded_files(run_dir: str | Path, status: Any) -> dict[str, int]:
    """{name: size} of the files a record of `status` vouches for, those run_dir holds now. A
    completed run's checkpoint is about to go: it is not one of them."""
    names = [HISTORY, MODEL, LOSS_STATE] + ([] if status == "completed" else [CHECKPOINT])
    sizes = {}
    for name in names:
        try:
            sizes[name] = (Path(run_dir) / name).stat().st_size
        except OSError:
            continue
    return sizes


def damaged_files(run_dir: str | Path, record: Mapping[str, Any]) -> list[str]:
    """The files the record names (`files`) that are gone or whose size changed since it was
    written: a zero-byte or truncated model.pt, a history.csv cut short. [] for a whole run,
    and for a record written before sizes were."""
    files = record.get("files")
    if not isinstance(files, Mapping):
        return []
    damaged = []
    for name, size in files.items():
        try:
            if (Path(run_dir) / str(name)).stat().st_size != size:
                damaged.append(str(name))
        except OSError:
            damaged.append(str(name))
    return damaged


def write_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> None:
    """Write metrics.json, stamped with SCHEMA_VERSION and the sizes of the files it vouches
    for (`files`), atomically: a reader (or a crash in the middle) sees the old file or the new
    one, never half of one."""
    record = {"schema_version": SCHEMA_VERSION,
              **{k: v for k, v in metrics.items() if k not in ("schema_version", "files")},
              "files": recorded_files(run_dir, metrics.get("status"))}
    write_json_atomic(metrics_path(run_dir), record)


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The run record of run_dir, None when it has none. A record without `schema_version` is
    version 1. Raises UnreadableRecord (a ValueError) for a file that is not a record, and
    NewerRecord (a UserError: one line, exit status 2) for one of a newer schema; other OSErrors
    (a permission, a folder by that name) pass through."""
    path = metrics_path(run_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise UnreadableRecord(path, str(err)) from None
    if not isinstance(record, dict):
        raise UnreadableRecord(path, "not a JSON object")
    version = record.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UnreadableRecord(path, f"schema_version {version!r} is not a version number")
    if version > SCHEMA_VERSION:
        raise NewerRecord(f"{path} is a run record of schema version {version}; this lossbench "
                          f"reads versions up to {SCHEMA_VERSION}: upgrade lossbench to read it")
    return record


def write_history(run_dir: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """history.csv, atomically: the columns in the order they first appear in the rows."""
    write_csv_atomic(Path(run_dir) / HISTORY, [dict(row) for row in rows])


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """history.csv's rows as numbers; a value that is empty or not a number is left out of its
    row. [] when the run has no history.csv (or it cannot be opened: curves are optional); a
    file that is not UTF-8 text raises UnicodeDecodeError (a ValueError)."""
    try:
        with open(Path(run_dir) / HISTORY, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    parsed = []
    for row in rows:
        values = {}
        for key, value in row.items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                continue
        parsed.append(values)
    return parsed


def resolved_config(cfg: Any) -> dict[str, Any]:
    """A run's identity: its task config, interpolations resolved, without location keys;
    JSON-shaped, so that the value read back from metrics.json (`config`) or a checkpoint
    compares equal to this for the same run."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    for key in LOCATION_KEYS:
        container.pop(key, None)
    return json.loads(json.dumps(container, default=str))


run_identity = resolved_config


def failure_record(cfg: Any, err: BaseException, choices: Mapping[str, str], wall_time_s: float,
                   earlier: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of a job that raised `err` (status failed). `earlier`: what the failed
    attempt itself recorded (a diverged run's epoch and status): kept, its status moved to
    `stopped`."""
    import traceback

    try:
        config: dict[str, Any] | None = resolved_config(cfg)
    except Exception:  # an unresolvable interpolation may be the very error being recorded
        config = None
    written: dict[str, Any] = {}
    if earlier is not None:
        written = dict(earlier)
        written = {"stopped": written.pop("status", None), **written}
    return {
        **written,
        "status": "failed",
        "error": error_line(err),
        "traceback": "".join(traceback.format_exception(err)),
        "choices": dict(choices),
        "seed": cfg.get("seed"),
        # the seeds are known even when the run failed before its weights were drawn
        "pairing": written.get("pairing") or {
            "data_seed": cfg.get("seed") if cfg.get("data_seed") is None else cfg.get("data_seed"),
            "train_seed": cfg.get("seed") if cfg.get("train_seed") is None
            else cfg.get("train_seed")},
        "wall_time_s": wall_time_s,
        "config": config,
    }


def flatten(tree: Any, prefix: str = "", lists: str = "json") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested mappings joined with dots.

    `lists`: "json" turns a list into its JSON text, so that every value is hashable (compare
    groups runs by their config values); "keep" leaves it a list (a tracker logs it whole). A
    tree that is no mapping is the one value under `prefix` without its dot."""
    if lists not in ("json", "keep"):
        raise ValueError(f"lists={lists!r}: json or keep")
    if isinstance(tree, Mapping):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}.", lists))
        return flat
    if isinstance(tree, list) and lists == "json":
        return {prefix[:-1]: json.dumps(tree)}
    return {prefix[:-1]: tree}
