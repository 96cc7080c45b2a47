"""Run records as `compare` reads them: a run directory's metrics.json (through
lossbench.results.record, which documents its keys), .hydra/config.yaml, .hydra/overrides.yaml
(and .hydra/hydra.yaml for older runs). Every field written after the first runs (test_at,
budget, pairing, warnings, memorisation, selection) is optional."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lossbench.errors import UserError
from lossbench.results.record import (METRICS, UnreadableRecord, flatten, has_metrics,
                                      read_metrics)


def parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    """Hydra's override strings (`loss=ce`, `+loss.q=0.7`, `~x`) as {key: value}."""
    parsed = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        key = key.lstrip("+~")
        if sep and not key.startswith("hydra.") and not key.startswith("hydra/"):
            parsed[key] = value
    return parsed


@dataclass
class Run:
    path: Path
    status: str
    metrics: dict[str, Any]
    config: dict[str, Any]  # flattened, resolved where possible
    choices: dict[str, str]
    overrides: dict[str, str]
    error: str = ""

    @property
    def task(self) -> str | None:
        return self.metrics.get("task")

    @property
    def dataset(self) -> str:
        return str(self.metrics.get("dataset") or self.choices.get("dataset") or "?")

    @property
    def seed(self) -> Any:
        return self.metrics.get("seed", self.config.get("seed"))

    @property
    def replicate(self) -> str:
        """Which replicate of its configuration this run is: the seed, and the data and
        training seeds where they are set apart (data_seed held fixed, train_seed swept)."""
        record = self.section("pairing")
        # a run that failed before recording them used the config's (by default: the seed)
        seeds = [record.get(k, self.config.get(k)) for k in ("data_seed", "train_seed")]
        return json.dumps([self.seed] + [self.seed if s is None else s for s in seeds],
                          default=str)

    @property
    def lost(self) -> bool:
        """Failed or diverged: for its seed, a loss against any run that completed."""
        return self.status in ("failed", "diverged") and self.metrics.get("stopped") not in (
            "interrupted",)

    def value(self, key: str) -> Any:
        """What this run used for `key`: a config-group choice (loss=gce), else a config value."""
        if key in self.choices:
            return self.choices[key]
        if key in self.config:
            return self.config[key]
        return self.overrides.get(key)

    def test_metrics(self, at: str = "best") -> dict[str, Any] | None:
        """Test metrics at the selected (`best`) or the last epoch; runs recorded before both
        were kept have `test` only, which is the selected epoch's."""
        test_at = self.metrics.get("test_at")
        if isinstance(test_at, dict) and isinstance(test_at.get(at), dict):
            return test_at[at]
        return self.metrics.get("test") if at == "best" else None

    def test_metric(self, name: str, at: str = "best") -> float | None:
        value = (self.test_metrics(at) or {}).get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    @property
    def class_scores(self) -> str | None:
        """Where its class probabilities come from (softmax, knn_votes, ...); None if unknown."""
        value = self.metrics.get("class_scores")
        return value if isinstance(value, str) else None

    def section(self, name: str) -> dict[str, Any]:
        value = self.metrics.get(name)
        return value if isinstance(value, dict) else {}

    def pairing(self) -> tuple | None:
        """What must be equal for two runs of one seed to be a pair: the data seed (split and
        noise), the hash of the initial weights and of the first epoch's batch order."""
        record = self.section("pairing")
        keys = ("data_seed", "init_hash", "order_hash")
        if not all(k in record for k in keys):
            return None
        return tuple(json.dumps(record[k]) for k in keys)

    def warnings(self, at: str = "best") -> list[str]:
        """The kinds of the warnings about the test metrics at `at` (best: the selected epoch;
        last); a warning that names no epoch counts at both."""
        found = self.metrics.get("warnings")
        if not isinstance(found, list):
            return []
        return [str(w.get("kind", "warning")) if isinstance(w, dict) else str(w)
                for w in found if not isinstance(w, dict) or w.get("at", at) == at]


def _load_yaml(path: Path, resolve: bool = True) -> Any:
    from omegaconf import OmegaConf

    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(node, resolve=resolve)
    except Exception:  # e.g. ${hydra:...} or ${oc.env:...} outside the job that wrote it
        return OmegaConf.to_container(node, resolve=False)


def load_run(run_dir: Path) -> Run:
    try:  # a record of a newer schema is the user's to sort out: its UserError goes up
        metrics = read_metrics(run_dir)
        if metrics is None:
            raise FileNotFoundError(f"no {METRICS}")
    except (OSError, ValueError) as err:
        reason = err.reason if isinstance(err, UnreadableRecord) else err
        metrics = {"status": "unreadable", "error": f"{METRICS}: {reason}"}
    config = metrics.get("config")
    if not isinstance(config, dict):
        config = _load_yaml(run_dir / ".hydra" / "config.yaml") or {}
    overrides = _load_yaml(run_dir / ".hydra" / "overrides.yaml", resolve=False) or []
    choices = metrics.get("choices")
    if not isinstance(choices, dict):
        hydra_yaml = _load_yaml(run_dir / ".hydra" / "hydra.yaml", resolve=False) or {}
        choices = hydra_yaml.get("hydra", {}).get("runtime", {}).get("choices", {}) or {}
        choices = {k: v for k, v in choices.items() if not k.startswith("hydra") and v}
    return Run(path=run_dir, status=str(metrics.get("status", "unfinished")), metrics=metrics,
               config=flatten(config), choices={k: str(v) for k, v in choices.items()},
               overrides=parse_overrides(overrides), error=str(metrics.get("error", "")))


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run directory (one holding metrics.json) at or under each path, each once."""
    seen: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path} does not exist")
        if has_metrics(path):
            seen[path.resolve()] = None
            continue
        for found in sorted(path.rglob(METRICS), key=lambda p: _natural(p.parent)):
            seen[found.parent.resolve()] = None
    if not seen:
        raise UserError(f"no runs under {', '.join(map(str, paths))}: no {METRICS} found "
                        "(pass run directories or a multirun folder)")
    return [load_run(p) for p in seen]


def _natural(path: Path) -> tuple:
    """Sort sweep/2 before sweep/10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)
