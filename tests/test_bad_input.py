"""Bad input through the real CLI, each in its own subprocess: exit status 2, one or two lines
that name the mistake (no traceback), and nothing half-written left behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

# (overrides, what the message must say). Each runs as `lossbench train trainer=smoke <args>`.
CASES = [
    # caught by the typed schema while Hydra composes the config
    (["trainer.epohcs=3"], r"epohcs.*\n.*did you mean trainer\.epochs\?"),
    (["trainer.epochs=abc"], r"trainer\.epochs=abc must be auto or a whole number"),
    (["trainer.early_stopping=maybe"], r"'maybe' is not a valid bool"),
    (["+trainer.foo=1"], r"trainer\.foo is not a trainer setting"),
    (["dataset.split.trian=0.5"], r"'trian' not in 'SplitConfig'.*\n.*dataset\.split\.train\?"),
    (["dataset.split.train=abc"], r"dataset\.split\.train=abc.*converted to Float"),
    (["seed=abc"], r"seed=abc.*converted to Integer"),
    (["seedd=1"], r"'seedd'"),
    # a misspelt key is named from the known config, at the root or in a group
    (["optimzer.lr=0.1"], r"'optimzer\.lr'.*\n.*did you mean optimizer\.lr\?"),
    (["optimizer.lrr=0.1"], r"'optimizer\.lrr'.*\n.*did you mean optimizer\.lr\?"),
    # a key added with + that nothing reads is a mistake, not a no-op
    (["+optimzer.lr=0.1"], r"optimzer\.lr: nothing in lossbench reads this key; did you mean "
                           r"optimizer\.lr\?"),
    (["+foo=1"], r"foo: nothing in lossbench reads this key; root keys: seed, "),
    (["+scheduler.step_size=3"], r"scheduler\.step_size: scheduler=none reads no settings"),
    (["+logger.project=x"], r"logger\.project: logger=none reads no settings"),
    (["+dataset.noise.rat=0.1"], r"dataset\.noise\.rat: nothing in lossbench reads this key; "
                                 r"did you mean dataset\.noise\.rate\?"),
    (["+dataset.augment.vflip=true"], r"dataset\.augment\.vflip: nothing in lossbench reads"),
    (["loss=foo"], r"Could not find 'loss/foo'\navailable options in 'loss': .*\bce\b"),
    (["optimizer=adamm"], r"Could not find 'optimizer/adamm' \(did you mean adam\?\)\n"
                          r".*\badam, adamw\b"),
    (["trainer.epochs=[1,"], r"cannot parse the override"),
    # values of the right type that cannot work: checked before torch is imported
    (["trainer.epochs=0"], r"trainer\.epochs=0 must be at least 1"),
    (["trainer.batch_size=-1"], r"trainer\.batch_size=-1 must be at least 1"),
    (["trainer.eval_batch_size=0"], r"trainer\.eval_batch_size=0 must be at least 1"),
    (["trainer.patience=0"], r"trainer\.patience=0 must be at least 1"),
    (["trainer.max_batches=0"], r"trainer\.max_batches=0 must be at least 1"),
    (["trainer.grad_clip=-1"], r"trainer\.grad_clip=-1\.0 must be greater than 0"),
    (["trainer.mode=up"], r"trainer\.mode=up must be auto, min or max"),
    (["trainer.checkpoint_every=-1"], r"trainer\.checkpoint_every=-1 must be at least 0"),
    (["trainer.checkpoint_interval_s=-5"], r"trainer\.checkpoint_interval_s=-5\.0 must be a number"),
    (["trainer.num_workers=-2"], r"trainer\.num_workers=-2 must be auto or a count"),
    (["optimizer.lr=-1"], r"optimizer\.lr=-1(\.0)? must be at least 0"),
    (["optimizer=sgd", "optimizer.momentum=-0.5"], r"optimizer\.momentum=-0\.5 must be at least 0"),
    (["optimizer.lr=fast"], r"optimizer\.lr=fast must be a number"),
    (["dataset.split.train=0.9"], r"dataset\.split fractions sum to 1\.3.*at most 1"),
    (["dataset.split.val=0"], r"dataset\.split\.train and dataset\.split\.val must be greater"),
    (["dataset.split.test=1.5"], r"dataset\.split\.test=1\.5 must lie in \[0, 1\]"),
    (["dataset.split=0.5"], r"dataset\.split=0\.5 must be a mapping of train, val and test"),
    (["embedding_dim=0"], r"embedding_dim=0 must be at least 1"),
    # found once the data, the loss and the device are known, still before any training
    (["trainer.monitor=val_rmse"], r"trainer\.monitor=val_rmse is not produced by a multiclass"),
    (["trainer.device=tpu"], r"trainer\.device=tpu is not a device"),
    (["trainer.precision=8"], r"trainer\.precision=8 must be 32, bf16 or 16"),
    (["dataset=diabetes", "loss=ce"], r"loss=ce does not fit the regression task.*\bmse\b"),
    (["dataset=csv", "dataset.path=missing.csv"], r"missing\.csv: no such file"),
    (["optimizer._target_=torch.optim.Nope"],
     r"Error locating target 'torch\.optim\.Nope': Are you sure that 'Nope' is importable"),
    (["loss._target_=nowhere.Loss"], r"'nowhere\.Loss': Are you sure that module 'nowhere'"),
    (["+loss.foo=1"], r"CrossEntropyLoss'?: .*unexpected keyword argument 'foo'"),
    (["+optimizer.foo=1"], r"optimizer \(torch\.optim\.Adam\).*unexpected keyword argument 'foo'"),
    (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"],
     r"optimizer \(torch\.optim\.SGD\): Nesterov momentum requires a momentum"),
]
if not torch.cuda.is_available():
    CASES.append((["trainer.device=cuda"], r"CUDA is not available here"))


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def tree_under(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and every folder (None) under root: an empty folder left behind
    shows here, where files_under would miss it."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def assert_user_error(proc, pattern: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 2, lines
    assert lines[0].startswith("lossbench: error: "), lines
    assert re.search(pattern, "\n".join(lines)), lines


@pytest.mark.parametrize("args,pattern", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_config_exits_2_with_one_clear_message(cli, tmp_path, args, pattern):
    out = tmp_path / "run"
    proc = cli("train", "trainer=smoke", "print_config=false", *args, f"hydra.run.dir={out}")
    assert_user_error(proc, pattern)
    # no run directory, no temporary file, nothing else written anywhere under the cwd
    assert not out.exists(), files_under(out)
    assert tree_under(tmp_path) == {}


def test_unknown_trainer_option_lists_the_available_ones(cli, tmp_path):
    proc = cli("train", "trainer=nope", f"hydra.run.dir={tmp_path / 'run'}")
    assert_user_error(proc, r"Could not find 'trainer/nope'\navailable options in 'trainer': "
                            r".*\bdefault\b.*\bsmoke\b")
    assert tree_under(tmp_path) == {}


# Without hydra.run.dir the run directory is outputs/<date>/<time>, and Hydra makes outputs/ and
# outputs/<date>/ for it: a user error takes those away too, but only those.
USER_ERRORS = {
    "before torch": (["trainer.epochs=-1"], r"trainer\.epochs=-1 must be at least 1"),
    "once the run started": (["trainer.device=tpu"], r"trainer\.device=tpu is not a device"),
}


@pytest.mark.parametrize("kind", USER_ERRORS)
def test_user_error_in_an_empty_folder_leaves_it_empty(cli, tmp_path, kind):
    args, pattern = USER_ERRORS[kind]
    proc = cli("train", "trainer=smoke", "print_config=false", *args)
    assert_user_error(proc, pattern)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert tree_under(tmp_path) == {}  # no outputs/, not even an empty one


@pytest.mark.parametrize("run_dir", [None, "outputs/2000-01-01/12-30-00"],
                         ids=["older run of another day", "older run of the same day"])
def test_user_error_keeps_older_runs_and_their_folders(cli, tmp_path, run_dir):
    older = tmp_path / "outputs" / "2000-01-01" / "12-00-00"
    older.mkdir(parents=True)
    (older / "metrics.json").write_text('{"status": "completed"}\n')
    before = tree_under(tmp_path)
    extra = [f"hydra.run.dir={run_dir}"] if run_dir else []
    proc = cli("train", "trainer=smoke", "print_config=false", "trainer.epochs=-1", *extra)
    assert_user_error(proc, r"trainer\.epochs=-1 must be at least 1")
    # the new run's folder (and its date folder, another day's) gone; the older run's kept
    assert tree_under(tmp_path) == before


def test_user_error_keeps_the_parents_of_a_run_dir_outside_the_cwd(cli, tmp_path):
    """hydra.run.dir=/elsewhere/a/b: only b is Hydra's to remove, a was there before."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    (elsewhere / "a").mkdir(parents=True)
    before = tree_under(tmp_path)
    proc = cli("train", "trainer=smoke", "print_config=false", "trainer.epochs=-1",
               f"hydra.run.dir={elsewhere / 'a' / 'b'}", cwd=work)
    assert_user_error(proc, r"trainer\.epochs=-1 must be at least 1")
    assert tree_under(tmp_path) == before


def test_user_error_with_the_cwd_as_run_dir_keeps_the_cwd(cli, tmp_path):
    """hydra.run.dir=. makes the user's own folder the run directory: it is never removed."""
    here = tmp_path / "here"
    here.mkdir()
    proc = cli("train", "trainer=smoke", "print_config=false", "trainer.epochs=-1",
               "hydra.run.dir=.", cwd=here)
    assert_user_error(proc, r"trainer\.epochs=-1 must be at least 1")
    assert here.is_dir()


def test_tracebacks_only_when_asked(cli, tmp_path):
    """A config mistake shows its traceback with LOSSBENCH_DEBUG=1 or hydra.verbose=true."""
    for extra, env in ((["hydra.verbose=true"], None), ([], {"LOSSBENCH_DEBUG": "1"})):
        proc = cli("train", "trainer.epochs=0", *extra, env=env)
        assert proc.returncode != 0
        assert "Traceback" in proc.stderr and "trainer.epochs=0" in proc.stderr


def test_unknown_command(cli):
    proc = cli("trian")
    assert proc.returncode == 2
    assert "unknown command 'trian'" in proc.stderr and "Traceback" not in proc.stderr


# `resume=` with something that cannot be resumed: the directory given stays as it was.
def _resume_dirs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint" * 10)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    torch.save({"format": 1, "model": {"w": torch.ones(1000)}}, truncated / "checkpoint.pt")
    data = (truncated / "checkpoint.pt").read_bytes()
    (truncated / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.json").write_text('{"status": "completed"}\n')
    (done / "checkpoint.pt").write_bytes(b"")
    failed = tmp_path / "failed"  # a sweep records a diverged job as failed
    failed.mkdir()
    (failed / "metrics.json").write_text('{"status": "failed", "stopped": "diverged"}\n')
    torch.save({"format": 1}, failed / "checkpoint.pt")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"weights": torch.zeros(3)}, foreign / "checkpoint.pt")
    return {
        "missing": (tmp_path / "nowhere", r"resume=.*nowhere: no such run directory"),
        "empty": (empty, r"no checkpoint\.pt in it"),
        "garbage": (garbage, r"cannot be read as a checkpoint"),
        "truncated": (truncated, r"cannot be read as a checkpoint"),
        "completed": (done, r"has completed already"),
        "foreign": (foreign, r"not a lossbench checkpoint"),
        "diverged in a sweep": (failed, r"this run diverged.*lower optimizer\.lr"),
    }


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated", "completed",
                                  "foreign", "diverged in a sweep"])
def test_resume_of_what_cannot_be_resumed(cli, tmp_path, kind):
    run_dir, pattern = _resume_dirs(tmp_path)[kind]
    before = tree_under(tmp_path)
    proc = cli("train", f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'new'}")
    assert_user_error(proc, pattern)
    assert tree_under(tmp_path) == before  # nothing written, nothing removed
    assert not (tmp_path / "new").exists()


def test_resume_refuses_other_overrides(cli, tmp_path):
    run_dir, _ = _resume_dirs(tmp_path)["garbage"]
    proc = cli("train", f"resume={run_dir}", "trainer.epochs=5",
               f"hydra.run.dir={tmp_path / 'new'}")
    assert_user_error(proc, r"own saved config; drop the other overrides \(trainer\.epochs=5\)")
    assert not (tmp_path / "new").exists()
