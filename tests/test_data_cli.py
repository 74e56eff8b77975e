"""`bench data list|check|fingerprint|synth`, the loader's error path, and bad data in the middle of `bench run`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import cli
from harness.data import DATASETS, fingerprint, synthetic_root
from harness.data.loader import images_only, iter_batches
from harness.data.synthetic import MARKER_FILE
from harness.errors import DataError

REPO = Path(__file__).resolve().parent.parent
USED = ("voc", "flowers102")  # the stand-ins these tests generate (each reader's own tests cover the others)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    """A data root holding tiny procedural stand-ins of the USED datasets."""
    root = tmp_path_factory.mktemp("synth")
    for name in USED:
        synthetic_root(DATASETS[name], root, "tiny", 0)
    return root


def as_real(synth_root: Path, data_root: Path, name: str) -> Path:
    """Copy a stand-in to where the real dataset belongs and drop its marker: the harness now takes it as real."""
    reader = DATASETS[name]
    target = data_root / reader.subdir
    shutil.copytree(synth_root / "_synthetic" / f"{name}-tiny-s0" / reader.subdir, target)
    (target / MARKER_FILE).unlink()
    return target


def bench(*argv: str) -> int:
    return cli.main(["data", *argv])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: "), err
    return err[0]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_list_shows_every_dataset_where_it_belongs_and_what_is_there(synth_root, tmp_path, capsys):
    as_real(synth_root, tmp_path, "voc")
    shutil.copytree(synth_root / "_synthetic" / "flowers102-tiny-s0" / "flowers-102", tmp_path / "flowers-102")
    assert bench("list", "--data-root", str(tmp_path)) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:] if line[:1].strip()}
    for name, reader in DATASETS.items():
        assert rows[name][1] == str(tmp_path / reader.subdir)
    assert rows["voc"][2] == "real" and rows["flowers102"][2] == "procedural"
    assert bench("list", "--data-root", str(tmp_path / "nothing"), "--markdown") == 0
    out = capsys.readouterr().out
    assert out.startswith("| dataset") and "`<data root>/VOCdevkit/VOC2012`" in out and "missing" not in out
    assert "trainaug 10,582" in out and "`bench data fetch voc`" in out


def test_check_synthetic_passes_and_fingerprint_matches(synth_root, capsys):
    assert bench("check", *USED, "--data", "synthetic", "--data-root", str(synth_root), "--no-progress") == 0
    out = capsys.readouterr().out
    assert all(f"{name} " in out for name in USED) and "FAIL" not in out
    assert bench("fingerprint", "voc", "--data", "synthetic", "--data-root", str(synth_root), "--full") == 0
    printed, root = capsys.readouterr().out.split()
    assert printed == fingerprint(Path(root), full=True) and printed.startswith("fp1full:")


def test_check_lists_every_problem_of_a_real_dataset(synth_root, tmp_path, capsys):
    root = as_real(synth_root, tmp_path, "voc")
    sets = root / "ImageSets" / "Segmentation"
    val, train = sets.joinpath("val.txt").read_text().split(), sets.joinpath("train.txt").read_text().split()
    truncate(root / "JPEGImages" / f"{val[3]}.jpg")
    Image.open(root / "SegmentationClass" / f"{val[7]}.png").convert("RGB").save(
        root / "SegmentationClass" / f"{val[7]}.png"
    )
    (root / "SegmentationClassAug" / f"{train[0]}.png").unlink()
    as_real(synth_root, tmp_path, "flowers102")

    assert bench("check", "--data-root", str(tmp_path), "--full", "--no-progress") == 2
    out = capsys.readouterr().out
    assert f"JPEGImages/{val[3]}.jpg: cannot decode image" in out
    assert f"SegmentationClass/{val[7]}.png: mask has mode RGB" in out
    assert f"SegmentationClassAug/{train[0]}.png: 1 id(s) listed in" in out
    assert "split 'val' has 20 items; the official count is 1,449" in out  # real data: counts are checked
    assert "split 'test' has 50 items; the official count is 6,149" in out  # flowers: checked too, and fails
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("voc ", "flowers102 "))}
    assert table["voc"][-1] == "FAIL" and table["voc"][-2] == "5"  # 3 broken files + train and val counts
    assert table["flowers102"][-1] == "FAIL" and table["flowers102"][-2] == "3"


def test_check_without_data_or_with_an_unknown_name_is_one_line(tmp_path, capsys):
    assert bench("check", "--data-root", str(tmp_path)) == 2
    assert "no dataset found under" in one_line_error(capsys)
    assert bench("check", "voc", "nope", "--data-root", str(tmp_path)) == 2
    assert "unknown dataset 'nope'" in one_line_error(capsys)


def test_synth_generates_stand_ins_and_prints_where(tmp_path, capsys):
    assert bench("synth", "flowers102", "--data-root", str(tmp_path), "--seed", "3") == 0
    folder = tmp_path / "_synthetic" / "flowers102-tiny-s3" / "flowers-102"
    assert str(folder) in capsys.readouterr().out and (folder / MARKER_FILE).is_file()


def _load_or_fail(i: int) -> tuple[np.ndarray]:
    if i == 6:
        raise DataError("cannot decode image (truncated)", where="/data/x/6.jpg")
    return (np.full(3, i),)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_data_error_in_a_loader_worker_reaches_the_caller_unchanged(workers):
    batches = iter_batches(10, _load_or_fail, batch_size=4, num_workers=workers, desc="t", progress=False)
    first = next(batches)
    assert first[0][:, 0].tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError) as caught:
        next(batches)
    assert str(caught.value) == "/data/x/6.jpg: cannot decode image (truncated)"
    assert caught.value.where == "/data/x/6.jpg"


def test_images_only_shows_a_method_ids_and_images_but_no_labels(synth_root):
    split = DATASETS["voc"](synth_root / "_synthetic" / "voc-tiny-s0" / "VOCdevkit" / "VOC2012").split("val")
    view = images_only(split)
    assert list(view.ids) == split.ids and len(view) == len(split)
    assert np.array_equal(view.image(2), split.image(2))
    for hidden in ("mask", "labels", "mask_path", "num_classes", "ignore_index"):
        assert not hasattr(view, hidden)


def test_bad_data_mid_run_exits_2_with_one_line_and_writes_no_result(synth_root, tmp_path):
    data_root = tmp_path / "data"
    root = as_real(synth_root, data_root, "voc")
    first = (root / "ImageSets" / "Segmentation" / "trainaug.txt").read_text().split()[0]
    bad_mask = root / "SegmentationClassAug" / f"{first}.png"
    Image.open(bad_mask).convert("RGB").save(bad_mask)  # fails on the first batch of the memory bank
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            "--method",
            "pixels",
            "--task",
            "voc_hummingbird",
            "--data-root",
            str(data_root),
            "--results",
            str(results),
            "--no-progress",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith(f"bench: error: {bad_mask}: mask has mode RGB"), proc.stderr
    assert not results.exists()


@pytest.mark.parametrize(
    "link, target, why",
    [
        ("jpg/dangling.jpg", "/nonexistent", "dangling symlink to /nonexistent"),
        ("jpg/loop", ".", "symlink loop: it leads back to {root}/jpg, a folder it is in"),
        ("jpg/self", "self", "symlink loop"),  # a link to itself
    ],
    ids=["dangling", "loop", "self"],
)
def test_a_dangling_or_looping_symlink_in_a_dataset_is_one_line_naming_it(
    link, target, why, synth_root, tmp_path, capsys
):
    """Before: `bench run` died with a traceback in the fingerprint's walk, and `bench data check` passed."""
    root = as_real(synth_root, tmp_path / "data", "flowers102")
    (root / link).symlink_to(target)
    where = ["--data-root", str(tmp_path / "data"), "--no-progress"]
    results = ["--results", str(tmp_path / "results")]
    assert cli.main(["run", "--method", "pixels", "--task", "flowers102_knn", *where, *results]) == 2
    assert one_line_error(capsys).startswith(f"bench: error: {root / link}: {why.format(root=root)}")
    assert not (tmp_path / "results").exists()
    assert bench("check", "flowers102", *where) == 2
    assert f"{root / link}: {why.format(root=root)}" in capsys.readouterr().out


def test_readme_lists_every_dataset_and_where_it_belongs():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Datasets") :]
    for name, reader in DATASETS.items():
        assert f"| {name} " in section and reader.subdir in section, f"README 'Datasets' lacks {name}"


def test_synth_all_then_check_passes_for_every_registered_dataset(tmp_path, capsys):
    """The issue's bar: `bench data synth all` + `bench data check --data synthetic` pass for every dataset."""
    assert bench("synth", "all", "--data-root", str(tmp_path)) == 0
    assert bench("check", "--data", "synthetic", "--data-root", str(tmp_path), "--no-progress") == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert name in out
