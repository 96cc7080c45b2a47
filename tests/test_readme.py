"""Every command in README.md runs, in order, in one temporary directory, as a newcomer would
type them: docs that cannot rot.

- ```bash blocks run as bash scripts (`set -euo pipefail`) and must exit 0;
- a ```text block right after a bash block is a real excerpt of its output: each of its lines
  that holds no digit (table rules, headers, the config tree) must appear in that output, and
  every line must match an output line in its key words (`key_words`: the words, in order,
  less numbers and results such as verdicts), so that a sample whose columns, tests or notes
  changed fails while new numbers from a smoke run do not;
- ```console blocks hold `$ command` lines followed by the output they print (errors included):
  every line shown must appear in the real output (a line ending in "…" is cut short there);
- `run:` steps of ```yaml blocks (CI workflow examples) run like bash blocks;
- ```python blocks run as Python scripts (`python -`) and must exit 0.

Every command runs exactly as printed: the only thing that makes the whole README run in
minutes on a CPU is the environment variable the README itself names for smoke tests,
`LOSSBENCH_SMOKE=1` (every run at most 2 epochs of 2 batches). The two set-up commands at the
top are not run here; CI runs them itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SETUP_COMMANDS = [
    "python3 -m venv .venv && . .venv/bin/activate && pip install . && lossbench train",
    "python3 -m venv .venv && . .venv/bin/activate && pip install "
    "'.[test,sweep,study,tensorboard,mlflow,wandb,timm,hf,notebook]' && pytest -n 2",
]
SMOKE = {"LOSSBENCH_SMOKE": "1"}  # named in the README's "CI smoke runs"
PRELUDE = "set -euo pipefail\n"


# What a result decides rather than what the command prints: a smoke run's verdicts differ
# from the sample's real run, so any of them matches any other.
VERDICTS = re.compile(r"\bnot separated(?: \(n = [^)]*\))?|\bbetter\b|\bworse\b|\bbest\b"
                      r"|\bbaseline\b")


def key_words(line: str) -> list[str]:
    """A shown or printed line's words in order: numbers, punctuation and rules dropped, any
    verdict as VERDICT; a line cut short ("…") loses its last, cut word."""
    cut = "…" in line
    line = VERDICTS.sub(" VERDICT ", line.split("…")[0] if cut else line)
    words = re.findall(r"[A-Za-z][A-Za-z_]*", line)
    return words[:-1] if cut and words and not line.rstrip().endswith(tuple(" |│")) else words


def shown_in(line: str, output: str) -> bool:
    """Whether some line of `output` holds the key words of `line`, in the same order."""
    wanted = key_words(line)
    if not wanted:
        return True
    for printed in output.splitlines():
        words = iter(key_words(printed))
        if all(any(w == got for got in words) for w in wanted):
            return True
    return False


@dataclass
class Block:
    index: int
    lang: str
    body: str
    excerpt: str | None = None  # the ```text block that follows a bash block
    end: int = 0  # where the block (and the blank lines after it) ends in the README
    result: subprocess.CompletedProcess | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        first = next((ln for ln in self.body.splitlines() if ln.strip()), "")
        return f"{self.index}:{self.lang}:{first[:50]}"


FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n(\s*)", re.S | re.M)


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    for match in FENCE.finditer(text):
        lang, body, gap = match.group(1), match.group(2), match.group(3)
        if lang == "text" and blocks and blocks[-1].lang == "bash" and blocks[-1].excerpt is None \
                and blocks[-1].end == match.start():
            blocks[-1].excerpt = body
            continue
        blocks.append(Block(len(blocks), lang, body, end=match.end()))
    return blocks


def runnable(block: Block) -> str | None:
    """The script a block stands for, or None for blocks that are not commands."""
    if block.lang == "bash":
        lines = [ln for ln in block.body.splitlines() if ln.strip() not in SETUP_COMMANDS]
        return "\n".join(lines) if any(ln.strip() and not ln.startswith("#") for ln in lines) \
            else None
    if block.lang == "python":
        return f"python - <<'PYTHON_BLOCK'\n{block.body}PYTHON_BLOCK"
    if block.lang == "yaml":
        import yaml

        steps = yaml.safe_load(block.body)
        steps = steps if isinstance(steps, list) else (steps or {}).get("steps", [])
        runs = [s["run"] for s in steps if isinstance(s, dict) and "run" in s
                and "lossbench" in s["run"]]
        return "\n".join(runs) or None
    return None


def console_commands(block: Block) -> list[tuple[str, list[str]]]:
    """[(command, expected output lines)] of a ```console block."""
    pairs: list[tuple[str, list[str]]] = []
    for line in block.body.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs and line.strip():
            pairs[-1][1].append(line.rstrip())
    return pairs


def bash(script: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", PRELUDE + script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Run the README top to bottom once; each test below checks one block's result."""
    text = README.read_text(encoding="utf-8")
    blocks = readme_blocks(text)
    workdir = tmp_path_factory.mktemp("readme")
    bin_dir = Path(sys.executable).parent  # lossbench, python, torchrun of this environment
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "120", "PYTHONUNBUFFERED": "1",
           "LOSSBENCH_DATA": str(tmp_path_factory.mktemp("no_downloads")), **SMOKE}
    env.pop("LOSSBENCH_DEBUG", None)
    for block in blocks:
        if block.lang == "console":
            outputs = []
            for command, _ in console_commands(block):
                outputs.append(bash(command, workdir, env))
            block.result = outputs
        elif (script := runnable(block)) is not None:
            block.result = bash(script, workdir, env)
    return text, blocks, workdir


def all_blocks():
    return readme_blocks(README.read_text(encoding="utf-8"))


def test_readme_starts_with_the_two_setup_commands():
    blocks = [b for b in all_blocks() if b.lang == "bash"]
    assert [b.body.strip() for b in blocks[:2]] == SETUP_COMMANDS


def test_every_image_and_file_link_in_the_readme_exists():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r'<img src="([^"]+)"', text) + re.findall(r"\]\(([^)#]+)\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "no local links found: the pattern no longer matches the README"
    missing = [link for link in local if not (README.parent / link).exists()]
    assert not missing, missing


def _failure(block: Block, proc: subprocess.CompletedProcess) -> str:
    return (f"README block {block.label} exited {proc.returncode}\n--- script\n{block.body}"
            f"\n--- stdout (tail)\n{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-4000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(all_blocks())), ids=[b.label for b in all_blocks()])
def test_readme_block_runs(readme_run, index):
    _, blocks, _ = readme_run
    block = blocks[index]
    if block.result is None:
        pytest.skip("not a command block (or the set-up commands CI runs itself)")
    if block.lang == "console":
        for (command, expected), proc in zip(console_commands(block), block.result):
            output = proc.stdout + proc.stderr
            for line in expected:
                shown = line.removesuffix("…").rstrip()  # "…": the line goes on, as printed
                assert shown in output, f"`{command}` did not print {line!r}; it printed:\n{output}"
            if any(line.startswith("lossbench: error:") for line in expected):
                assert proc.returncode == 2, f"`{command}` exited {proc.returncode}"
        return
    proc = block.result
    assert proc.returncode == 0, _failure(block, proc)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, _failure(block, proc)
    script = runnable(block)
    trains = [ln for ln in script.splitlines()
              if re.match(r"\s*(PYTHONPATH=\S+ )?lossbench train", ln)
              and not re.search(r" (-sc|--help|--cfg|--hydra-help)\b", ln)]
    if trains:
        assert proc.stdout.count("run directory:") >= len(trains), _failure(block, proc)
    if block.excerpt:
        for line in block.excerpt.splitlines():
            if line.strip() and not re.search(r"\d", line) and "…" not in line:
                assert line.rstrip() in proc.stdout, f"README excerpt line {line!r} is not in " \
                                                     f"the output of block {block.label}"
            assert shown_in(line, proc.stdout), (
                f"README excerpt line {line!r}: no output line of block {block.label} has its "
                f"key words {key_words(line)}; the output:\n{proc.stdout[-4000:]}")


@pytest.mark.slow
def test_the_tracker_locations_the_readme_names_are_where_runs_land(readme_run):
    text, _, workdir = readme_run
    store = re.search(r"mlflow ui --backend-store-uri (sqlite:///(\S+?))`", text)
    assert store, "the README no longer says how to open the MLflow store"
    assert (workdir / store.group(2)).is_file()
    logdir = re.search(r"tensorboard --logdir (\S+?)`", text).group(1)
    assert list((workdir / logdir).rglob("events.out.tfevents.*"))


def test_a_sample_matches_its_output_in_key_words_not_in_numbers():
    shown = "| better | gce | symmetric 0.4 (realised 0.400) | 0.9452 ± 0.0070 | Welch | 0.035 |"
    now = "| not separated | gce | symmetric 0.4 (realised 0.391) | 0.6181 ± 0.0900 | paired | 0.219 |"
    assert not shown_in(shown, now)  # the test named in the sample is not the one printed
    assert shown_in(shown, now.replace("paired", "Welch"))  # other numbers, other verdict
    assert shown_in(now.replace("not separated", "not separated (n = 3)"), "| worse | gce |"
                    " symmetric 0.4 (realised 0.4) | paired |")  # "(n = 3)" is the verdict's
    assert not shown_in("| loss | n | mean ± CI |", "| loss | mean ± CI | n |")  # column order
    assert shown_in("lossbench: all 9 jobs completed (9 skipped: already…",
                    "lossbench: all 6 jobs completed (6 skipped: already completed) in x")


def test_the_readme_is_run_as_printed_shrunk_only_by_what_it_names():
    """The README test edits no command: no shell function or alias wraps `lossbench`, and every
    environment variable it adds is one the README itself tells a user about."""
    text = README.read_text(encoding="utf-8")
    assert "lossbench" not in PRELUDE
    for name, value in SMOKE.items():
        assert f"{name}={value}" in text, f"the README does not name {name}={value}"


def test_lossbench_smoke_shrinks_a_command_as_written(cli, tmp_path):
    proc = cli("train", "dataset=iris", "scheduler=cosine", "trainer.plots=false",
               env={"LOSSBENCH_SMOKE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "LOSSBENCH_SMOKE: at most 2 epochs of 2 batches" in proc.stdout
    (record,) = tmp_path.rglob("metrics.json")
    budget = json.loads(record.read_text())["budget"]
    assert budget["epochs"] == budget["epochs_run"] == 2  # from epochs: auto, 50 or more
    assert budget["steps_run"] <= 4
