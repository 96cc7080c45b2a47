"""The package layout: layer folders, imports that go one way, and old module paths in saved
configs read as their current ones."""
import importlib
import subprocess
import sys

import pytest

from lossbench.config.moved import MOVED, current_targets, new_name


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_names_a_module_that_exists(old):
    importlib.import_module(MOVED[old])  # raises if a move target was renamed again


def test_old_paths_are_translated_and_nothing_else():
    assert new_name("lossbench.comparison.records") == "lossbench.results.comparison.records"
    assert new_name("lossbench.tracking.NoTracker") == "lossbench.results.tracking.NoTracker"
    assert new_name("lossbench.runs") is None  # a prefix match needs the dot
    assert new_name("lossbench.losses.CrossEntropyLoss") is None


def test_a_saved_config_naming_old_targets_is_read_with_the_current_ones():
    from omegaconf import OmegaConf

    saved = OmegaConf.create({
        "logger": {"_target_": "lossbench.tracking.NoTracker"},
        "loss": {"_target_": "lossbench.losses.CrossEntropyLoss", "label_smoothing": 0.0},
        "callbacks": [{"_target_": "lossbench.sweep.SweepSummary"}],
        "note": "lossbench.tracking is only a string here"})
    current_targets(saved)
    assert saved.logger._target_ == "lossbench.results.tracking.NoTracker"
    assert saved.loss._target_ == "lossbench.losses.CrossEntropyLoss"
    assert saved.callbacks[0]._target_ == "lossbench.experiment.sweep.SweepSummary"
    assert saved.note == "lossbench.tracking is only a string here"


def test_no_import_hook_and_no_old_module_path_imports():
    code = ("import sys, lossbench, importlib.util;"
            "print(type(sys.meta_path[0]).__module__,"
            " importlib.util.find_spec('lossbench.tracking'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] != "lossbench" and not out[0].startswith("lossbench.")
    assert out[1] == "None"


def test_importing_the_package_imports_no_submodule_and_no_torch():
    code = ("import sys, lossbench;"
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'lossbench.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def _imports(module_file):
    """The lossbench modules a file imports (at module level or inside functions)."""
    import ast

    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in ("lossbench", "hydra")}


def _package_files(*parts):
    from pathlib import Path

    import lossbench

    root = Path(lossbench.__file__).parent.joinpath(*parts)
    return [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))


LOWER_LAYERS = {  # a layer may not import these
    # the engine saves its checkpoint through the run record's atomic files, nothing else above
    "engine": ("lossbench.experiment", "lossbench.commands", "lossbench.results.report",
               "lossbench.results.plots", "lossbench.results.tracking",
               "lossbench.results.comparison", "lossbench.results.stats", "hydra"),
    # data may reduce class counts over processes (engine.distributed), nothing else above
    "data": ("lossbench.experiment", "lossbench.commands", "lossbench.engine.loop",
             "lossbench.engine.predict", "lossbench.results"),
    "losses": ("lossbench.experiment", "lossbench.commands", "lossbench.engine",
               "lossbench.results", "lossbench.data"),
    "results": ("lossbench.experiment", "lossbench.commands"),
    "experiment": ("lossbench.commands",),
    "config": ("lossbench.experiment", "lossbench.commands", "lossbench.engine",
               "lossbench.results"),
    "results/comparison": ("lossbench.experiment", "lossbench.engine", "lossbench.losses",
                           "lossbench.data", "torch"),
}


@pytest.mark.parametrize("layer", sorted(LOWER_LAYERS))
def test_a_layer_imports_nothing_from_the_layers_above_it(layer):
    bad = []
    for f in _package_files(*layer.split("/")):
        for name in _imports(f):
            if any(name == p or name.startswith(p + ".") for p in LOWER_LAYERS[layer]):
                bad.append(f"{f.name}: {name}")
    assert not bad, bad


def test_compare_command_imports_no_training_code():
    names = _imports(_package_files("commands", "compare.py")[0])
    assert not [n for n in names if n.startswith(("lossbench.engine", "lossbench.experiment",
                                                  "lossbench.losses", "lossbench.data"))], names


def test_no_module_is_over_about_400_lines():
    over = {f.name: n for f in _package_files() if (n := len(f.read_text().splitlines())) > 410}
    assert not over, over
