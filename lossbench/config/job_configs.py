"""A sweep's job configs, most of them made without composing.

Hydra composes a job's config from scratch for its overrides (about 0.1 s: the defaults tree,
every config file merged), and a sweep on the basic sweeper composes each job three times:
lossbench's checks before the first job (`experiment/sweep_checks.py`), the sweeper's own check
of the batch, and the launcher. A 100-job study spent about 30 s there. Two changes, each
giving the config Hydra's `load_sweep_config` gives:

- *Templates.* Jobs whose overrides differ only in the values of plain settings (`seed=3`,
  `dataset.noise.rate=0.4`: not a config group, no `+`, `++` or `~`, not under `hydra.`, a
  number, string, boolean or null, and no other override sets the same key, one above it or
  one inside it, since Hydra applies them in order) share one template: the first of them is composed by Hydra,
  and each other one is a copy of it with its settings applied by Hydra's own override code
  (`ConfigLoaderImpl._apply_overrides_to_config`) and its override list and
  `hydra.job.override_dirname` made as Hydra makes them. Jobs that choose other config groups
  (`loss=gce`) get a template of their own. The first job made from a template is composed in
  full as well and compared with it: any difference turns templates off for that template's
  jobs.
- *Given again.* While a sweep's jobs run in this process (the basic and stacked launchers),
  the config loader answers `load_sweep_config` for that sweep's config the same way
  (`keep_for_sweep`), so that Hydra's sweeper and the launcher compose no job the checks made;
  `let_go` ends that when the sweep ends. Only the templates are kept, not every job's config
  (about 0.14 MB each: a grid of 10,000 jobs would hold 1.4 GB); a job is made again from its
  template each time it is asked for (about 20 ms, as long as copying a kept one).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Launchers that compose and run every job in this process, where the templates are used.
IN_PROCESS_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                        "hydra_plugins.lossbench_launcher.stacked_launcher.StackedLauncher")

_VALUE_TYPES = (bool, int, float, str, type(None))


class JobConfigs:
    """The configs of one sweep's jobs (`sweep`: the sweep's config as Hydra composed it);
    `compose(job)` gives a new config object each time, Hydra's `load_sweep_config`'s."""

    def __init__(self, loader: Any, sweep: DictConfig) -> None:
        self.loader = loader
        self.sweep = sweep
        self.full = loader.load_sweep_config  # Hydra's own, before `keep_for_sweep`
        # template key -> [its config, whether a copy of it was checked against Hydra's yet]
        self.templates: dict[tuple[Any, ...], list[Any]] = {}
        self.refused: set[tuple[Any, ...]] = set()  # templates whose copies differed
        self.composed = 0  # how many jobs Hydra composed in full (tests count them)
        self.repos: dict[tuple[str, ...], Any] = {}

    def compose(self, job: Sequence[str]) -> DictConfig:
        return self._make(list(job))

    def _compose_fully(self, job: list[str]) -> DictConfig:
        self.composed += 1
        return self.full(self.sweep, job)

    def _make(self, job: list[str]) -> DictConfig:
        split = self._split(job)
        if split is None:
            return self._compose_fully(job)
        template_key, settings, parsed = split
        if template_key in self.refused:
            return self._compose_fully(job)
        entry = self.templates.get(template_key)
        if entry is None:
            cfg = self._compose_fully(job)
            self.templates[template_key] = [copy.deepcopy(cfg), False]
            return cfg
        try:
            cfg = self._from_template(entry[0], settings, parsed)
        except Exception:  # Hydra composing it says what is wrong, in its own words
            return self._compose_fully(job)
        if not entry[1]:
            hydra_made = self._compose_fully(job)
            entry[1] = True
            if not same_config(cfg, hydra_made):
                self.refused.add(template_key)
                return hydra_made
        return cfg

    def _parsed(self, job: list[str]) -> tuple[list[Any], Any]:
        """The job's overrides parsed (the sweep's own `hydra.` ones first) and the config
        repository Hydra composes from (its search path: the same for the same `hydra.`
        overrides; making it reads the primary config, so it is made once for those)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        hydra_overrides = OmegaConf.to_container(self.sweep.hydra.overrides.hydra)
        assert isinstance(hydra_overrides, list)
        overrides = [*hydra_overrides, *job]
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        repo_key = tuple(o.input_line for o in parsed if o.is_hydra_override())
        repo = self.repos.get(repo_key)
        if repo is None:
            _, repo = self.loader._parse_overrides_and_create_caching_repo(
                self.sweep.hydra.job.config_name, overrides)
            self.repos[repo_key] = repo
        return parsed, repo

    def _split(self, job: list[str]) -> tuple[tuple[Any, ...], list[Any], list[Any]] | None:
        """The job's template key (every override but the values of plain settings), its
        plain settings and all its overrides parsed; None where a template cannot stand for
        it."""
        from hydra.core.override_parser.types import OverrideType

        try:
            parsed, repo = self._parsed(job)
        except Exception:
            return None
        key: list[Any] = []
        settings = []
        values_set = []  # keys every override that sets a value sets (not group choices)
        for override in parsed:
            group = (repo.group_exists(override.key_or_group)
                     and not isinstance(override.value(), dict))  # as Hydra's defaults list
            plain = (override.type == OverrideType.CHANGE and override.package is None
                     and not override.is_hydra_override()
                     and not override.is_sweep_override()
                     and isinstance(override.value(), _VALUE_TYPES) and not group)
            if plain:
                key.append(("setting", override.key_or_group))
                settings.append(override)
            else:
                key.append(("as is", override.input_line))
            if not group:
                values_set.append(override.key_or_group)
        # Hydra applies the value overrides in their order: where another one sets the same
        # key, a key above it or one inside it (`++k=v`, `parent={...}`), the order decides,
        # and the template, whose settings are applied last, would not keep it
        for setting in settings:
            name = setting.key_or_group
            if sum(other == name or other.startswith(name + ".") or name.startswith(other + ".")
                   for other in values_set) > 1:
                return None
        return tuple(key), settings, parsed

    def _from_template(self, template: DictConfig, settings: list[Any],
                       parsed: list[Any]) -> DictConfig:
        """The template's config with this job's settings, as `_load_configuration_impl` would
        have made it."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra._internal.config_loader_impl import get_overrides_dirname

        cfg = copy.deepcopy(template)
        ConfigLoaderImpl._apply_overrides_to_config(settings, cfg)
        task = [o for o in parsed if not o.is_hydra_override()]
        cfg.hydra.overrides.task = [o.input_line for o in task]
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=task,
            kv_sep=cfg.hydra.job.config.override_dirname.kv_sep,
            item_sep=cfg.hydra.job.config.override_dirname.item_sep,
            exclude_keys=cfg.hydra.job.config.override_dirname.exclude_keys)
        OmegaConf.copy_cache(from_config=self.sweep, to_config=cfg)
        return cfg


def same_config(a: DictConfig, b: DictConfig) -> bool:
    """Whether two composed configs are the same: every value and interpolation as written,
    and the struct and read-only flags of every node."""
    if OmegaConf.to_yaml(a) != OmegaConf.to_yaml(b):
        return False
    return _flags(a) == _flags(b)


def _flags(cfg: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    from omegaconf import ListConfig

    found = [(path, cfg._get_flag("struct"), cfg._get_flag("readonly"))]
    if isinstance(cfg, DictConfig):
        items = [(str(k), cfg._get_node(k)) for k in cfg.keys()]
    elif isinstance(cfg, ListConfig):
        items = [(str(i), cfg._get_node(i)) for i in range(len(cfg))]
    else:
        return found
    for name, node in items:
        if isinstance(node, (DictConfig, ListConfig)) and not node._is_none() \
                and not node._is_missing() and not node._is_interpolation():
            found.extend(_flags(node, f"{path}.{name}"))
    return found


_current: JobConfigs | None = None


def for_sweep(sweep: DictConfig) -> JobConfigs:
    """This sweep's job configs (made on first use; a sweep of another config starts anew)."""
    global _current
    from hydra.core.global_hydra import GlobalHydra

    if _current is None or _current.sweep is not sweep:
        let_go()
        _current = JobConfigs(GlobalHydra.instance().config_loader(), sweep)
    return _current


def keep_for_sweep(sweep: DictConfig) -> None:
    """Until `let_go`, Hydra's config loader makes this sweep's jobs from their templates, when
    its launcher runs them in this process (a launcher that sends jobs to other processes
    composes them there, with the loader as Hydra made it)."""
    target = str((sweep.hydra.get("launcher") or {}).get("_target_", ""))
    if target not in IN_PROCESS_LAUNCHERS:
        return
    configs = for_sweep(sweep)

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        if master_config is configs.sweep:
            return configs.compose(sweep_overrides)
        return configs.full(master_config, sweep_overrides)

    configs.loader.load_sweep_config = load_sweep_config


def let_go() -> None:
    """The sweep is over (or never started): its configs go, and the loader is Hydra's again."""
    global _current
    if _current is not None:
        _current.loader.__dict__.pop("load_sweep_config", None)
        _current = None
