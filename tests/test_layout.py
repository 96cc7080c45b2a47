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
    # data imports nothing above it: the class counts summed over processes are the engine's
    "data": ("lossbench.experiment", "lossbench.commands", "lossbench.engine",
             "lossbench.results", "lossbench.config"),
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


# The floors of the package, top to bottom: an import points to the same floor or one below,
# never up (docs/architecture.md). A module not named here is on the floor of its package.
FLOORS = [
    # the faces a user meets: the command line and the Python API (the package's __init__
    # loads the API on first use)
    ("lossbench.__main__", "lossbench.cli", "lossbench.api", "lossbench"),
    ("lossbench.commands",),
    ("lossbench.experiment",),
    ("lossbench.engine",),
    ("lossbench.results",),
    ("lossbench.config", "lossbench.conf"),
    ("lossbench.data", "lossbench.losses"),
    ("lossbench.errors", "lossbench.tasks", "lossbench.models", "lossbench.library_models",
     "lossbench.console"),
]


def _modules() -> dict[str, object]:
    """{dotted module name: its file} of every module of the package."""
    import lossbench
    from pathlib import Path

    top = Path(lossbench.__file__).parent.parent
    files = {}
    for f in _package_files():
        name = ".".join(f.relative_to(top).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = f
    return files


def where(module: str, line: int) -> str:
    """lossbench/errors.py:102"""
    import lossbench
    from pathlib import Path

    top = Path(lossbench.__file__).parent.parent
    return f"{_modules()[module].relative_to(top)}:{line}"


def floor(module: str) -> int:
    """0 for the top floor; a module's floor is that of the longest prefix FLOORS names."""
    best, level = -1, None
    for i, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, level = len(name), i
    assert level is not None, f"{module} is on no floor: add it to FLOORS"
    return level


def import_edges() -> list[tuple[str, str, str, int]]:
    """(importer, imported module, the name as written, line) for every lossbench import of the
    package, at module level or inside functions (TYPE_CHECKING imports included)."""
    import ast

    modules = _modules()

    def home(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    edges = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "lossbench" and (target := home(name)) != module:
                    edges.append((module, target, name, node.lineno))
    return edges


def upward_imports(edges) -> list[str]:
    return [f"{where(a, line)} imports {name}: floor {floor(b)} is above {floor(a)} (FLOORS)"
            for a, b, name, line in edges if floor(b) < floor(a)]


def import_circles(edges) -> list[str]:
    """Each circle of modules that import each other, as the imports that close it."""
    graph: dict[str, dict[str, tuple[str, int]]] = {}
    for a, b, name, line in edges:
        graph.setdefault(a, {}).setdefault(b, (name, line))
    circles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            ring = path[path.index(node):] + [node]
            circles.append(" -> ".join(f"{where(x, graph[x][y][1])} imports {graph[x][y][0]}"
                                       for x, y in zip(ring, ring[1:])))
            return
        if node in done:
            return
        for nxt in graph.get(node, {}):
            visit(nxt, path + [node])
        done.add(node)

    for start in sorted(graph):
        visit(start, [])
    return circles


def test_every_import_points_to_its_own_floor_or_one_below():
    bad = upward_imports(import_edges())
    assert not bad, "\n".join(bad)


def test_no_modules_import_each_other_in_a_circle():
    bad = import_circles(import_edges())
    assert not bad, "\n".join(bad)


def test_the_import_rules_name_the_file_and_the_name_of_an_upward_import_and_a_circle():
    edges = import_edges()
    assert len(edges) > 150 and ("lossbench.engine.loop", "lossbench.losses.base") in {
        (a, b) for a, b, *_ in edges}
    up = ("lossbench.errors", "lossbench.config.schema", "lossbench.config.schema.check", 7)
    assert upward_imports([up]) == [
        "lossbench/errors.py:7 imports lossbench.config.schema.check: floor 5 is above 7 (FLOORS)"]
    rows, families = "lossbench.results.comparison.rows", "lossbench.results.comparison.families"
    circle = [(rows, families, f"{families}.Family", 3), (families, rows, f"{rows}.Row", 4)]
    assert upward_imports(circle) == []  # sideways, on one floor
    assert import_circles(circle) == [
        "lossbench/results/comparison/families.py:4 imports lossbench.results.comparison.rows.Row"
        " -> lossbench/results/comparison/rows.py:3 imports "
        "lossbench.results.comparison.families.Family"]
