"""`bench data fetch` against a real HTTP server on 127.0.0.1 serving archives built in the official formats."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.io import savemat

from harness import cli
from harness.data import DATASETS, synthetic_root
from harness.data.fetch import BASE_URL_ENV, DOWNLOADS, fetch, load_sources
from harness.data.voc import read_mask
from harness.errors import DataError, SpecError
from harness.lifetime import owned_prefix

from conftest import ArchiveServer, orphaned_folder

REPO = Path(__file__).resolve().parent.parent


def tar_bytes(root: Path, members: list[str], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for member in members:
            tar.add(root / member, arcname=member)
    return buffer.getvalue()


def write_sources(
    path: Path, name: str, files: dict[str, bytes], checksums: dict[str, str] | None = None, **extra
) -> Path:
    entries = [
        {
            "url": f"https://example.invalid/{f}",
            "published_by": "this test",
            "checksum": (checksums or {}).get(f) or "sha256:" + hashlib.sha256(data).hexdigest(),
        }
        for f, data in files.items()
    ]
    path.write_text(yaml.safe_dump({name: {"files": entries, **extra}}))
    return path


@pytest.fixture(scope="module")
def flowers_files(tmp_path_factory) -> dict[str, bytes]:
    """Flowers102's three official files, made from the procedural stand-in (its marker packed into the tgz,
    so the installed copy stays labelled procedural)."""
    root = synthetic_root(DATASETS["flowers102"], tmp_path_factory.mktemp("synth"), "tiny", 0)
    members = sorted(f"jpg/{p.name}" for p in (root / "jpg").iterdir()) + ["PROCEDURAL.txt"]
    return {
        "102flowers.tgz": tar_bytes(root, members),
        "imagelabels.mat": (root / "imagelabels.mat").read_bytes(),
        "setid.mat": (root / "setid.mat").read_bytes(),
    }


@pytest.fixture
def served(flowers_files, tmp_path, monkeypatch):
    with ArchiveServer(dict(flowers_files)) as server:
        monkeypatch.setenv(BASE_URL_ENV, server.url)
        yield server, write_sources(tmp_path / "sources.yaml", "flowers102", flowers_files, root=".")


def leftovers(data_root: Path) -> list[str]:
    return sorted(p.name for p in (data_root / DOWNLOADS).iterdir())


def test_fresh_download_installs_a_dataset_that_passes_check(served, tmp_path, capsys):
    server, sources = served
    data_root = tmp_path / "data"
    rc = cli.main(
        ["data", "fetch", "flowers102", "--data-root", str(data_root), "--sources", str(sources), "--no-progress"]
    )
    assert rc == 0, capsys.readouterr()
    assert "usable" in capsys.readouterr().out
    assert sorted(name for name, _ in server.requests) == ["102flowers.tgz", "imagelabels.mat", "setid.mat"]
    root = data_root / "flowers-102"
    assert len(list((root / "jpg").glob("*.jpg"))) == 200 and (root / "setid.mat").is_file()
    assert leftovers(data_root) == []  # no .part, no staging
    assert cli.main(["data", "check", "flowers102", "--data-root", str(data_root), "--full", "--no-progress"]) == 0
    assert "pass" in capsys.readouterr().out

    server.requests.clear()  # already there: nothing is downloaded again
    assert fetch("flowers102", data_root, sources, progress=False) == root and server.requests == []


def test_staging_folders_of_killed_fetches_are_removed_and_a_live_ones_never(served, tmp_path):
    _, sources = served
    downloads = tmp_path / "data" / DOWNLOADS
    downloads.mkdir(parents=True)
    dead = orphaned_folder(downloads, ".staging-flowers102-")
    live = Path(tempfile.mkdtemp(prefix=owned_prefix(".staging-flowers102-"), dir=downloads))  # this process's
    fetch("flowers102", tmp_path / "data", sources, progress=False)
    assert live.exists() and not dead.exists()


def test_a_cut_connection_resumes_from_the_part_file(served, tmp_path):
    server, sources = served
    data_root = tmp_path / "data"
    size = len(server.files["102flowers.tgz"])
    server.cuts["102flowers.tgz"] = [size // 3]
    with pytest.raises(DataError, match="interrupted after .* run the same command again to resume"):
        fetch("flowers102", data_root, sources, progress=False, retries=0)
    part = data_root / DOWNLOADS / "102flowers.tgz.part"
    assert part.stat().st_size == size // 3 and not (data_root / "flowers-102").exists()

    server.requests.clear()
    server.cuts["102flowers.tgz"] = [size // 3]  # cut once more mid-way: retried within the same run
    fetch("flowers102", data_root, sources, progress=False, retries=2)
    tgz_requests = [rng for name, rng in server.requests if name == "102flowers.tgz"]
    assert tgz_requests == [f"bytes={size // 3}-", f"bytes={2 * (size // 3)}-"]
    assert DATASETS["flowers102"](data_root / "flowers-102").split("train").ids
    assert leftovers(data_root) == []


def test_checksum_mismatch_leaves_nothing_behind(served, flowers_files, tmp_path, capsys):
    server, _ = served
    wrong = write_sources(
        tmp_path / "wrong.yaml", "flowers102", flowers_files, checksums={"102flowers.tgz": "md5:" + "0" * 32}, root="."
    )
    data_root = tmp_path / "data"
    rc = cli.main(
        ["data", "fetch", "flowers102", "--data-root", str(data_root), "--sources", str(wrong), "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("bench: error: 102flowers.tgz: md5 mismatch: expected 000")
    assert [line for line in err if "error" in line] == [err[-1]]
    assert leftovers(data_root) == [] and not (data_root / "flowers-102").exists()


def test_failed_extraction_keeps_only_the_verified_part(flowers_files, tmp_path, monkeypatch):
    broken = dict(flowers_files, **{"102flowers.tgz": flowers_files["102flowers.tgz"][:5000]})
    sources = write_sources(tmp_path / "sources.yaml", "flowers102", broken, root=".")
    data_root = tmp_path / "data"
    with ArchiveServer(broken) as server:
        monkeypatch.setenv(BASE_URL_ENV, server.url)
        with pytest.raises(DataError, match="102flowers.tgz: cannot extract"):
            fetch("flowers102", data_root, sources, progress=False)
    assert leftovers(data_root) == ["102flowers.tgz.part", "imagelabels.mat.part", "setid.mat.part"]
    assert not (data_root / "flowers-102").exists()


def test_unknown_or_unregistered_dataset_is_one_line_exit_2(tmp_path, capsys):
    assert cli.main(["data", "fetch", "nope", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown dataset 'nope'" in err[0]
    (tmp_path / "empty.yaml").write_text("{}\n")
    empty = ["--sources", str(tmp_path / "empty.yaml")]
    assert cli.main(["data", "fetch", "voc", "--data-root", str(tmp_path), *empty]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no official archive" in err[0] and "VOCtrainval_11-May-2012.tar" in err[0]


def test_the_registry_is_valid_and_a_bad_one_names_file_line_and_field(tmp_path):
    sources = load_sources()
    assert {"voc", "flowers102"} <= set(sources) <= set(DATASETS)
    for source in sources.values():
        assert all(a.checksum.startswith(("sha256:", "md5:")) and a.published_by for a in source.files)
    bad = tmp_path / "bad.yaml"
    bad.write_text("voc:\n  files:\n    - url: https://x/y.tar\n      checksum: md5:abc\n      published_by: me\n")
    with pytest.raises(SpecError, match=r"bad.yaml:4: voc.files.0.checksum: String should match pattern"):
        load_sources(bad)


def test_voc_fetch_converts_sbd_into_trainaug(tmp_path, monkeypatch):
    """VOCtrainval tar (no trainaug) + SBD benchmark.tgz (cls/*.mat) -> SegmentationClassAug and trainaug.txt."""
    synth = synthetic_root(DATASETS["voc"], tmp_path / "synth", "tiny", 0)
    sets = synth / "ImageSets" / "Segmentation"
    train, val, trainaug = (sets.joinpath(f"{s}.txt").read_text().split() for s in ("train", "val", "trainaug"))
    official = tmp_path / "official"
    voc = official / "VOCdevkit" / "VOC2012"
    shutil.copytree(synth, voc, ignore=shutil.ignore_patterns("SegmentationClassAug", "trainaug.txt"))
    sbd = official / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    sbd_ids = trainaug[5:]  # the first VOC train ids are not in SBD: their masks come from SegmentationClass
    for image_id in sbd_ids:
        mask = read_mask(synth / "SegmentationClassAug" / f"{image_id}.png")
        gt = {"Segmentation": mask, "CategoriesPresent": np.unique(mask)}
        savemat(sbd / "cls" / f"{image_id}.mat", {"GTcls": gt})
    (sbd / "train.txt").write_text("\n".join(sbd_ids[::2]) + "\n")
    (sbd / "val.txt").write_text("\n".join(sbd_ids[1::2] + val[:3]) + "\n")  # SBD val overlaps VOC val: excluded
    files = {
        "VOCtrainval_11-May-2012.tar": tar_bytes(
            official, sorted(str(p.relative_to(official)) for p in voc.rglob("*") if p.is_file()), mode="w"
        ),
        "benchmark.tgz": tar_bytes(
            official, sorted(str(p.relative_to(official)) for p in sbd.rglob("*") if p.is_file())
        ),
    }
    sources = write_sources(tmp_path / "sources.yaml", "voc", files, root="VOCdevkit/VOC2012", convert="sbd_trainaug")
    data_root = tmp_path / "data"
    with ArchiveServer(files) as server:
        monkeypatch.setenv(BASE_URL_ENV, server.url)
        root = fetch("voc", data_root, sources, progress=False)
    got = (root / "ImageSets" / "Segmentation" / "trainaug.txt").read_text().split()
    assert got == sorted(trainaug)
    for image_id in got:
        expected_dir = "SegmentationClassAug" if image_id in sbd_ids else "SegmentationClass"
        converted = Image.open(root / "SegmentationClassAug" / f"{image_id}.png")
        assert converted.mode == "L"
        assert np.array_equal(np.asarray(converted), read_mask(synth / expected_dir / f"{image_id}.png"))
    reader = DATASETS["voc"](root)
    assert len(reader.split("trainaug")) == len(trainaug) and not (root.parent.parent / "benchmark_RELEASE").exists()


def test_datasets_sharing_a_folder_install_side_by_side(tmp_path, monkeypatch):
    synth = tmp_path / "synth"
    files = {}
    for name in ("medmnist_path", "medmnist_derma"):
        root = synthetic_root(DATASETS[name], synth, "tiny", 0)
        files.update({p.name: p.read_bytes() for p in root.glob("*.npz")})
    data_root = tmp_path / "data"
    with ArchiveServer(files) as server:
        monkeypatch.setenv(BASE_URL_ENV, server.url)
        for name, filename in (("medmnist_path", "pathmnist_224.npz"), ("medmnist_derma", "dermamnist_224.npz")):
            sources = write_sources(tmp_path / f"{name}.yaml", name, {filename: files[filename]}, root=".")
            assert fetch(name, data_root, sources, progress=False) == data_root / "medmnist"
        assert sorted(p.name for p in (data_root / "medmnist").iterdir()) == ["dermamnist_224.npz", "pathmnist_224.npz"]
        server.requests.clear()
        assert fetch("medmnist_path", data_root, tmp_path / "medmnist_path.yaml", progress=False)
        assert server.requests == []  # already installed
    assert len(DATASETS["medmnist_derma"](data_root / "medmnist").split("test")) > 0
