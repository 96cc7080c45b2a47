"""A CI smoke run (`lossbench train trainer=smoke`) pays for little beyond its floor: the three
lines every PyTorch training script runs (import torch and sklearn.metrics, build one Adam).
benchmarks/smoke_floor.py times the two side by side; here, what each imports."""

from __future__ import annotations

import subprocess
import sys

# Libraries a smoke run has no use for: plots (matplotlib), tables and statistics (pandas,
# scipy.stats). scikit-learn may import some of them itself, and then the floor pays them too.
HEAVY = ("matplotlib", "pandas", "scipy.stats")
FLOOR = ("import torch, sklearn.metrics\n"
         "torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])\n")
SMOKE = ("from lossbench.cli import main\n"
         "sys.argv = ['lossbench', 'train', 'trainer=smoke', 'dataset=iris', 'hydra.run.dir=run']\n"
         "try:\n    main()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n")


def loaded(code: str, cwd) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    proc = subprocess.run([sys.executable, "-c", "import sys\n" + code
                           + "print(' '.join(sys.modules), file=sys.stderr)"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(proc.stderr.strip().splitlines()[-1].split())


def test_a_smoke_run_imports_no_heavy_library_its_floor_does_not(tmp_path):
    smoke, floor = loaded(SMOKE, tmp_path), loaded(FLOOR, tmp_path)
    assert (tmp_path / "run" / "metrics.json").is_file()  # the run did run
    assert "torch" in floor and "lossbench.experiment.workflow" in smoke
    extra = [name for name in HEAVY if name in smoke and name not in floor]
    assert not extra, f"a smoke run imports {extra}, which the floor script does not"
    assert "matplotlib" not in smoke
    assert not list((tmp_path / "run").glob("*.png"))  # trainer=smoke draws no plots
