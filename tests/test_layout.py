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
