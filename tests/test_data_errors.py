"""Bad data gets a clear answer: one line naming the file or setting, exit status 2, no run files.

Each case drives `lossbench train` in a subprocess, as a user would meet it.
"""

from __future__ import annotations

import numpy as np
import pytest


def good_rows(n=30):
    return "\n".join(f"{i},{i * 0.5},{'cat' if i % 2 else 'dog'}" for i in range(n))


def table(tmp, text, target="label"):
    """Arguments for a run on the CSV file d.csv holding `text`."""
    (tmp / "d.csv").write_text(text)
    return ["dataset=csv", "dataset.path=d.csv", f"dataset.target={target}"]


HEADER = "a,b,label\n"


def csv_no_target(tmp):
    return table(tmp, HEADER + good_rows(), target="species"), ["d.csv", "'species'", "a, b, label"]


def csv_text_feature(tmp):
    rows = good_rows().replace("3,1.5,cat", "3,tall,cat")
    return table(tmp, HEADER + rows), ["d.csv", "'b'", "'tall'", "line 5", "non-numeric"]


def csv_missing_values(tmp):
    rows = good_rows().replace("4,2.0,dog", "4,,dog").replace("6,3.0,dog", "6,NA,dog")
    return table(tmp, HEADER + rows), ["d.csv", "'b'", "2 missing values", "line 6"]


def csv_empty(tmp):
    return table(tmp, ""), ["d.csv", "empty"]


def csv_tiny_class(tmp):
    rows = good_rows() + "\n99,1.0,fox"
    return table(tmp, HEADER + rows), ["d.csv", "'fox'", "only 1 sample", "stratified"]


def npz_without_y(tmp):
    np.savez(tmp / "d.npz", x=np.zeros((10, 2)), labels=np.zeros(10))
    return ["dataset=npz", "dataset.path=d.npz"], ["d.npz", "no array named y", "labels"]


def npz_mismatched(tmp):
    np.savez(tmp / "d.npz", x=np.zeros((10, 2)), y=np.zeros(9))
    return ["dataset=npz", "dataset.path=d.npz"], ["d.npz", "x has 10 samples but y has 9"]


def imagefolder_empty(tmp):
    (tmp / "pics" / "cat").mkdir(parents=True)
    (tmp / "pics" / "cat" / "notes.txt").write_text("no images here")
    return ["dataset=imagefolder", "dataset.path=pics"], ["dataset.path=pics", "no images"]


def imagefolder_on_disk_with_a_broken_image(tmp):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp / "pics" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (6, 6), (40 * i, 0, 0)).save(tmp / "pics" / c / f"{i}.png")
    (tmp / "pics" / "dog" / "9.png").write_bytes(b"not a picture")
    return ["dataset=imagefolder", "dataset.path=pics", "dataset.in_memory=false"], [
        "pics/dog/9.png", "cannot be read"]


def imagefolder_on_disk_with_a_truncated_image(tmp):
    imagefolder_on_disk_with_a_broken_image(tmp)
    whole = (tmp / "pics" / "cat" / "1.png").read_bytes()
    (tmp / "pics" / "dog" / "9.png").write_bytes(whole[:len(whole) // 2])  # its header is fine
    return ["dataset=imagefolder", "dataset.path=pics", "dataset.in_memory=false"], [
        "pics/dog/9.png", "cannot be read"]


def imagefolder_in_memory_not_a_bool(tmp):
    imagefolder_on_disk_with_a_broken_image(tmp)
    return ["dataset=imagefolder", "dataset.path=pics", "dataset.in_memory=no"], [
        "dataset.in_memory=no", "true or false"]


def noise_rate_one(tmp):
    return ["dataset=iris", "dataset.noise.kind=symmetric", "dataset.noise.rate=1.0"], [
        "dataset.noise.rate=1", "[0, 1)"]


def noise_rate_negative(tmp):
    return ["dataset=iris", "dataset.noise.kind=pairflip", "dataset.noise.rate=-0.2"], [
        "dataset.noise.rate=-0.2", "[0, 1)"]


def noise_unknown_class(tmp):
    return ["dataset=iris", "dataset.noise.kind=asymmetric", "dataset.noise.rate=0.3",
            "dataset.noise.mapping={setosa:tulip}"], ["dataset.noise.mapping", "'tulip'",
                                                         "versicolor"]


def imbalance_ratio_below_one(tmp):
    return ["dataset=iris", "dataset.imbalance.kind=longtail", "dataset.imbalance.ratio=0.5"], [
        "dataset.imbalance.ratio=0.5", "at least 1"]


def missing_file(tmp):
    return ["dataset=csv", "dataset.path=nope.csv", "dataset.target=label"], [
        "dataset.path=nope.csv", "no such file"]


def unknown_dataset_argument(tmp):
    return ["dataset=npz", "dataset.path=d.npz", "+dataset.shuffle=true"], [
        "lossbench.data.files.npz", "'shuffle'"]


CASES = [csv_no_target, csv_text_feature, csv_missing_values, csv_empty, csv_tiny_class,
         npz_without_y, npz_mismatched, imagefolder_empty,
         imagefolder_on_disk_with_a_broken_image, imagefolder_on_disk_with_a_truncated_image,
         imagefolder_in_memory_not_a_bool, noise_rate_one, noise_rate_negative,
         noise_unknown_class, imbalance_ratio_below_one, missing_file,
         unknown_dataset_argument]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_data_stops_with_one_line_and_exit_2(cli, tmp_path, case):
    args, expected = case(tmp_path)
    run = tmp_path / "run"
    proc = cli("train", *args, "model=linear", "trainer=smoke", f"hydra.run.dir={run}")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossbench: error: "), proc.stderr
    for part in expected:
        assert part in lines[0], lines[0]
    assert not run.exists() or not ({"metrics.json", "history.csv", "model.pt"}
                                    & {p.name for p in run.rglob("*")})
