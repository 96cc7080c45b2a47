"""A corruption setting that would do nothing is an error naming the fix; the corruption a run
used is named wherever its results are read (header line, report.txt, plot titles)."""

from __future__ import annotations

import pytest

from lossbench.data.imbalance import check_imbalance_used, describe_imbalance
from lossbench.data.noise import check_noise_used, describe_noise
from lossbench.errors import UserError

TINY = ("dataset=iris", "trainer=smoke", "print_config=false")


@pytest.mark.parametrize("args, fix", [
    (("dataset.noise.rate=0.4",), "add dataset.noise.kind=symmetric"),
    (("dataset.imbalance.ratio=5",), "add dataset.imbalance.kind=longtail"),
    (("dataset.noise.kind=symmetric", "dataset.noise.preset=mnist", "dataset.noise.rate=0.2"),
     "add dataset.noise.kind=asymmetric"),
], ids=["rate-without-kind", "ratio-without-kind", "preset-with-symmetric"])
def test_a_setting_that_does_nothing_is_one_line_and_exit_2(cli, tmp_path, args, fix):
    proc = cli("train", *TINY, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("lossbench: error: ") and fix in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()  # nothing half-written


def test_rate_zero_with_a_kind_is_the_clean_point_of_a_sweep():
    check_noise_used({"kind": "symmetric", "rate": 0.0})
    check_noise_used({"kind": "none", "rate": 0.0})
    check_imbalance_used({"kind": "longtail", "ratio": None})
    check_imbalance_used({"kind": "none", "ratio": None})
    with pytest.raises(UserError, match="does nothing"):
        check_noise_used({"kind": "none", "rate": 0.1})
    with pytest.raises(UserError, match="does nothing"):
        check_imbalance_used({"kind": "none", "ratio": 10})


def test_descriptions_name_kind_rate_and_realised_rate():
    info = {"kind": "asymmetric", "rate": 0.3, "realised_rate": {"train_and_val": 0.1042}}
    assert describe_noise(info) == "noise=asymmetric rate=0.3 per mapped class (realised 0.104)"
    assert describe_imbalance({"kind": "step", "ratio": 10.0, "realised_ratio": 9.5}) == (
        "imbalance=step ratio=10 (realised 9.5)")


def test_the_corruption_is_named_in_header_report_and_plots(cli, tmp_path):
    run = tmp_path / "run"
    proc = cli("train", *TINY, "trainer.plots=true", "dataset.noise.kind=symmetric",
               "dataset.noise.rate=0.4", "dataset.imbalance.kind=longtail",
               "dataset.imbalance.ratio=3", f"hydra.run.dir={run}", check=True)
    header = next(ln for ln in proc.stdout.splitlines() if ln.startswith("lossbench loss="))
    assert "noise=symmetric rate=0.4 (realised 0." in header
    assert "imbalance=longtail ratio=3 (realised " in header
    report = (run / "report.txt").read_text()
    assert "noise=symmetric rate=0.4" in report and "imbalance=longtail ratio=3" in report
    import json

    realised = json.loads((run / "metrics.json").read_text())["data"]["noise"]["realised_rate"]
    assert f"(realised {realised['train_and_val']:.3f})" in header
    from PIL import Image

    # the title is drawn, not stored: the PNG's text chunk is not a witness. The figure's title
    # comes from the label the run passes, which plots.curves_figure puts in its suptitle.
    from lossbench.results.plots import curves_figure

    fig = curves_figure([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5}],
                        "val_accuracy", 1, "loss=ce dataset=iris, noise=symmetric rate=0.4")
    assert "noise=symmetric rate=0.4" in fig._suptitle.get_text()
    assert Image.open(run / "curves.png").size[0] > 0
    clean = cli("train", *TINY, f"hydra.run.dir={tmp_path / 'clean'}", check=True)
    header = next(ln for ln in clean.stdout.splitlines() if ln.startswith("lossbench loss="))
    assert "noise=" not in header and "imbalance=" not in header


def test_eval_with_noise_switched_off_scores_the_clean_labels(cli, tmp_path):
    """The run's rate is left over once eval sets kind=none: not a setting that does nothing."""
    run = tmp_path / "noisy"
    cli("train", *TINY, "trainer.plots=false", "dataset.noise.kind=symmetric",
        "dataset.noise.rate=0.4", f"hydra.run.dir={run}", check=True)
    out = tmp_path / "clean.json"
    proc = cli("eval", str(run), "--split", "val", "dataset.noise.kind=none", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    import json

    noisy = json.loads((run / "metrics.json").read_text())
    assert noisy["data"]["noise"]["realised_rate"]["val"] > 0.3
    assert "noise=" not in proc.stdout  # evaluated on clean validation labels
    assert 0.0 <= json.loads(out.read_text())["val"]["accuracy"] <= 1.0
