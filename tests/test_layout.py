"""The package layout: layer folders, and the module paths of before them still importable."""
import importlib
import subprocess
import sys

import pytest

from lossbench._moved import MOVED, new_name


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_module_of_its_new_home(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_a_submodule_of_a_moved_package_is_not_loaded_twice():
    old = importlib.import_module("lossbench.comparison.records")
    assert old is importlib.import_module("lossbench.results.comparison.records")
    assert old.__name__ == "lossbench.results.comparison.records"
    assert new_name("lossbench.comparison.records") == "lossbench.results.comparison.records"
    assert new_name("lossbench.runs") is None  # a prefix match needs the dot


def test_a_saved_config_naming_an_old_target_still_instantiates(tmp_path):
    # a run directory written before the layer folders names its logger by the old path
    code = ("from hydra.utils import instantiate, get_class;"
            "t = instantiate({'_target_': 'lossbench.tracking.NoTracker'});"
            "print(type(t).__module__, get_class('lossbench.sweep.SweepSummary').__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout.split()
    assert out == ["lossbench.results.tracking", "lossbench.experiment.sweep"]


def test_importing_the_package_imports_no_moved_module_and_no_torch():
    code = ("import sys, lossbench;"
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'lossbench.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "['lossbench._moved']"


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
