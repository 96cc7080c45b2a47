"""`lossbench list` (every option of a group, the task it fits, no torch import) and the config
tree a run prints first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lossbench

CONF = Path(lossbench.__file__).resolve().parent / "conf"


def options_on_disk(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def listed(stdout: str, header: str) -> dict[str, tuple[str, str]]:
    """{option: (tasks column, description)} from one group's block of `lossbench list`."""
    block = stdout.split(header, 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines()[1:]:
        if line.startswith("   "):  # a description wrapped onto the next line
            tasks, description = rows[name]
            rows[name] = (tasks, f"{description} {line.strip()}".strip())
            continue
        name, rest = line.strip().split(None, 1)
        tasks, _, description = rest.partition("  ")
        rows[name] = (tasks.strip(), description.strip())
    return rows


def list_at(columns: int) -> str:
    proc = subprocess.run([sys.executable, "-m", "lossbench", "list"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": str(columns)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def listing():
    proc = subprocess.run([sys.executable, "-m", "lossbench", "list"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("group, header", [("dataset", "datasets ("), ("model", "models ("),
                                           ("loss", "losses ("), ("optimizer", "optimizers (")])
def test_every_shipped_option_is_listed_once(listing, group, header):
    assert sorted(listed(listing, header)) == options_on_disk(group)
    assert listing.count(header) == 1


def test_listed_loss_tasks_are_the_loss_classes_own(listing):
    import yaml

    from lossbench.config.catalogue import import_target

    rows = listed(listing, "losses (")
    checked = 0
    for name, (tasks, _) in rows.items():
        node = yaml.safe_load((CONF / "loss" / f"{name}.yaml").read_text())
        if any(isinstance(v, dict) for v in node.values()):
            continue  # composite losses fit what their parts share
        cls = import_target(node["_target_"])
        assert tasks.split(", ") == [t for t in ("multiclass", "binary", "regression")
                                     if t in cls.tasks], name
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("name", ["iris", "digits", "breast_cancer", "diabetes", "moons", "wine"])
def test_listed_dataset_task_is_what_the_dataset_returns(listing, name):
    import yaml

    from lossbench.config.catalogue import import_target

    node = yaml.safe_load((CONF / "dataset" / f"{name}.yaml").read_text())
    kwargs = {k: v for k, v in node.items() if not k.startswith("_") and "${" not in str(v)}
    raw = import_target(node["_target_"])(**kwargs)
    tasks, description = listed(listing, "datasets (")[name]
    assert tasks == raw.task
    assert description  # a docstring's first sentence


def test_one_group_by_either_name_and_no_torch_import(tmp_path):
    code = ("import sys\nfrom lossbench.cli import main\n"
            "try:\n    main(['list', 'loss', 'optimizers'])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "heavy = [m for m in ('torch', 'sklearn', 'hydra', 'matplotlib') if m in sys.modules]\n"
            "print('imported:', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "imported: []" in proc.stdout
    assert "losses (lossbench train loss=<name>):" in proc.stdout
    assert "optimizers (lossbench train optimizer=<name>):" in proc.stdout
    assert "datasets (" not in proc.stdout


def test_an_unknown_group_is_one_line_and_exit_2(cli):
    proc = cli("list", "lossses")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "no group 'lossses'" in proc.stderr and "losses" in proc.stderr


def test_a_run_prints_its_resolved_config_as_a_tree_unless_told_not_to(cli, tmp_path):
    shown = cli("train", "dataset=iris", "trainer=smoke", "optimizer.lr=0.005",
                f"hydra.run.dir={tmp_path / 'a'}", check=True).stdout
    tree = shown.split("lossbench loss=", 1)[0]  # everything printed before training starts
    assert tree.startswith("config")
    for line in ("dataset (iris)", "loss (ce)", "trainer (smoke)", "lr: 0.005", "epochs: 2",
                 "seed: 0"):
        assert line in tree, line
    quiet = cli("train", "dataset=iris", "trainer=smoke", "print_config=false",
                f"hydra.run.dir={tmp_path / 'b'}", check=True).stdout
    assert quiet.startswith("lossbench loss=ce dataset=iris")


def test_bash_completion_completes_subcommands_and_train_overrides(tmp_path):
    import os

    script = """
eval "$(lossbench train -sc install=bash)"
complete -p lossbench
for line in "lossbench tr" "lossbench train loss=foc" "lossbench train dataset=iris optim" \
            "lossbench list da"; do
    COMP_LINE="$line"; COMP_POINT=${#line}; COMP_WORDS=($line)
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
    hydra_bash_completion
    echo "$line -> ${COMPREPLY[*]}"
done
"""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("-F hydra_bash_completion lossbench")
    assert "lossbench tr -> train" in lines
    assert "lossbench train loss=foc -> loss=focal" in lines
    assert "lossbench train dataset=iris optim -> optimizer. optimizer=" in lines
    assert "lossbench list da -> datasets" in lines


def test_a_sweep_prints_no_config_tree(cli, tmp_path):
    """Each job's config is in its .hydra/config.yaml; the console has one line per job."""
    out = cli("train", "-m", "dataset=iris", "trainer=smoke", "seed=0,1",
              f"hydra.sweep.dir={tmp_path / 'sweep'}", check=True).stdout
    assert "├── dataset (iris)" not in out
    assert out.count("] completed: test accuracy ") == 2
    # each job's folder is named by its overrides
    assert (tmp_path / "sweep" / "dataset=iris,seed=1,trainer=smoke" / ".hydra"
            / "config.yaml").is_file()


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_list_wraps_its_descriptions_to_the_terminal_and_cuts_none(columns, listing):
    from lossbench.commands.listing import GROUPS, group_lines

    shown = list_at(columns)
    assert max(len(line) for line in shown.splitlines()) <= columns
    assert "…" not in shown
    # every description whole, as the group's rows hold it (the first sentence, uncut)
    for name in ("datasets", "models", "losses", "launchers"):
        header = f"{name} (lossbench train {GROUPS[name]}=<name>):"
        got = listed(shown, header)
        for option, tasks, description in group_lines(name):
            assert got[option] == (tasks, description) or (
                columns < 80 and " ".join(got[option]) == f"{tasks} {description}".strip()), \
                option
    digits = listed(shown, "datasets (")["digits"][1]
    assert digits.endswith("kept as (1, 8, 8) images")  # was cut at 80 characters


@pytest.mark.parametrize("width", [80, 100])
def test_losses_table_wraps_and_never_cuts_a_cell(width):
    from rich.console import Console

    from lossbench.commands.listing import format_value, loss_rows, losses_table

    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    console.print(losses_table(None, width))
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for entry in loss_rows():
        assert entry.name in text
        for word in entry.reference.split():  # wrapped at its spaces, every word whole
            assert word in text, (entry.name, word)
        for key, value in entry.hyperparameters.items():
            if len(f"{key}={format_value(value)}") <= 16:  # the narrowest column holds these
                assert f"{key}={format_value(value)}" in text, (entry.name, key)
    assert "learn_alpha=true" in text  # was "learn_alpha=…" at 80 columns
