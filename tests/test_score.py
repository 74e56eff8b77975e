"""Bring your own outputs: `bench inputs` exports a task's exact inputs, `bench score` scores replies saved for them.

The replies here are computed with the pixels method's own code, so `bench score` must give exactly the metrics
`bench run --method pixels` gives. Runs the CLI in-process on procedural tiny data to stay fast.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.leaderboard import render
from harness.lifetime import owned_prefix
from harness.results import ResultStore, RunResult

from conftest import orphaned_folder

REPO = Path(__file__).resolve().parent.parent
# voc_hummingbird at 64 px (a 4x4 patch grid) with a small memory: the same protocol, seconds instead of minutes
TINY_HUMMINGBIRD = """name: tiny_hummingbird
version: 1
description: voc_hummingbird at 64x64 with a small memory (tests)
protocol: hummingbird
dataset: voc
batch_size: 8
params: {train_split: trainaug, eval_split: val, input_size: 64, memory_size: 960, aug_epochs: 2, k: 10,
         temperature: 0.02, search: exact}
"""
TASKS = {
    "flowers102_knn": ["--embed-dim", "48"],
    "tiny_hummingbird": ["--patch-size", "16", "--embed-dim", "48"],
    "clevrtex_objseg": [],
}


def _pixels():
    spec = importlib.util.spec_from_file_location("pixels_adapter", REPO / "images" / "pixels" / "adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Pixels()


def answer(folder: Path, seed: int = 0) -> None:
    """What a user's script does: every requests/NNNNNN.npz answered with replies/NNNNNN.npz (here: pixels)."""
    method = _pixels()
    method.setup(seed, {})
    (folder / "replies").mkdir(exist_ok=True)
    for request in sorted((folder / "requests").glob("*.npz")):
        with np.load(request) as r:
            op, images = str(r["op"]), r["images"]
        if op == "segment":
            masks, reconstructions = method.segment(images)
            np.savez(folder / "replies" / request.name, masks=masks, reconstructions=reconstructions)
        else:
            np.savez(folder / "replies" / request.name, features=getattr(method, op)(images))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A folder with the tiny task (on BENCH_BENCHMARKS) and the procedural data."""
    root = tmp_path_factory.mktemp("score")
    (root / "bench" / "tasks").mkdir(parents=True)
    (root / "bench" / "tasks" / "tiny_hummingbird.yaml").write_text(TINY_HUMMINGBIRD)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_BENCHMARKS", f"{root / 'bench'}:{REPO / 'benchmarks'}")
        yield root


def bench(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([*args, "--no-progress"])
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str) -> str:
    """Exit 2 and one error line, the last (after at most the progress line saying what was being scored)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("bench: error: ")] == lines[-1:], err
    assert len(lines) == 1 or len(lines) == 2 and "backend)" in lines[0], err
    assert "Traceback" not in err
    return lines[-1]


def data_args(env: Path) -> list[str]:
    return ["--data", "synthetic", "--data-root", str(env / "data"), "--workers", "0"]


@pytest.fixture(scope="module")
def exported(env):
    """Each task's inputs exported and answered once: {task: folder}."""
    folders = {}
    for task, info in TASKS.items():
        folder = env / "outputs" / task
        assert main(["inputs", "--task", task, "--out", str(folder), *info, *data_args(env), "--no-progress"]) == 0
        answer(folder)
        folders[task] = folder
    return folders


def results(root: Path) -> list[RunResult]:
    return ResultStore(root).all()


@pytest.mark.parametrize("task", TASKS)
def test_scoring_saved_pixels_outputs_equals_running_pixels(task, env, exported, capsys, tmp_path):
    folder = exported[task]
    assert not list(folder.parent.glob(".*")), "no staging folder is left behind"
    code, err = bench(
        capsys, "run", "--method", "pixels", "--task", task, *data_args(env), "--results", str(tmp_path / "run")
    )
    assert code == 0, err
    code, err = bench(
        capsys,
        "score",
        "--task",
        task,
        "--outputs",
        str(folder),
        "--data-root",
        str(env / "data"),
        "--workers",
        "0",
        "--results",
        str(tmp_path / "score"),
    )
    assert code == 0, err
    [live], [external] = results(tmp_path / "run"), results(tmp_path / "score")
    assert external.status == "ok" and external.metrics and external.metrics == live.metrics
    assert external.external and not live.external
    assert external.key.method == task and external.key.method_ref.startswith("outputs-sha256:")
    assert external.key.seed == 0 and external.key.data == "procedural"
    assert external.provenance.backend == "external" and external.provenance.method_info["embed_dim"] in (48, None)
    assert external.timings.images_sent == live.timings.images_sent

    board = render([live, external])
    assert f"| {task} †" in board and "| pixels " in board and "outputs produced outside the harness" in board


def test_rescoring_is_cached_until_the_outputs_change(env, exported, capsys, tmp_path):
    folder = tmp_path / "knn"
    shutil.copytree(exported["flowers102_knn"], folder)
    args = (
        "score",
        "--task",
        "flowers102_knn",
        "--outputs",
        str(folder),
        "--name",
        "mine",
        "--data-root",
        str(env / "data"),
        "--workers",
        "0",
        "--results",
        str(tmp_path / "results"),
    )
    assert bench(capsys, *args)[0] == 0
    code, err = bench(capsys, *args)
    assert code == 0 and "cached, skipped" in err
    rewrite(lambda f: f[:, ::-1])(folder / "replies" / "000000.npz")
    code, err = bench(capsys, *args)
    assert code == 0 and "cached, skipped" not in err
    assert len({r.key.method_ref for r in results(tmp_path / "results")}) == 2


def test_a_different_seed_or_task_is_refused_against_the_manifest(env, exported, capsys, tmp_path):
    folder = exported["flowers102_knn"]
    base = ("--outputs", str(folder), "--data-root", str(env / "data"), "--results", str(tmp_path))
    line = one_line_error(*bench(capsys, "score", "--task", "flowers102_knn", "--seed", "1", *base))
    assert line == (
        f"bench: error: {folder}/manifest.json: inputs were exported for seed 0, not 1 "
        "(export them again with `bench inputs`)"
    )
    line = one_line_error(*bench(capsys, "score", "--task", "cub_knn", *base))
    assert "manifest.json: inputs were exported for task flowers102_knn, not cub_knn" in line
    line = one_line_error(*bench(capsys, "score", "--task", "flowers102_knn", "--name", "My-Method", *base))
    assert line == (
        "bench: error: method name (--name, default the folder's name) 'My-Method': use lower-case "
        "letters, digits and _ (starting with a letter or digit)"
    )
    assert not results(tmp_path)


def test_requests_that_differ_from_the_recorded_ones_are_refused(env, exported, capsys, tmp_path):
    """What the harness would send now is compared with what was exported, request by request (here the
    hummingbird seed changes its augmentations: the manifest says seed 1, the requests were made with seed 0)."""
    folder = tmp_path / "hb"
    shutil.copytree(exported["tiny_hummingbird"], folder)
    manifest = folder / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"seed": 0', '"seed": 1'))
    line = one_line_error(
        *bench(
            capsys,
            "score",
            "--task",
            "tiny_hummingbird",
            "--outputs",
            str(folder),
            "--data-root",
            str(env / "data"),
            "--workers",
            "0",
            "--results",
            str(tmp_path),
        )
    )
    assert line.startswith(f"bench: error: {manifest}: request ") and line.endswith(
        " differs from the recorded one (task, seed or data changed since `bench inputs`)"
    )
    assert not results(tmp_path)


def rewrite(change):
    """A spoiler: the reply's features replaced by change(features)."""

    def spoil(path: Path) -> None:
        with np.load(path) as z:
            features = z["features"]
        np.savez(path, features=change(features))

    return spoil


def deflated(path: Path, shape: tuple, data_bytes: int | None = None, name: str = "features") -> None:
    """A reply whose one member's .npy header declares float32 `shape`, then `data_bytes` zero bytes (default: as
    many as the shape needs), deflated: a file of kilobytes that may inflate to gigabytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as npz, npz.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        left, zeros = math.prod(shape) * 4 if data_bytes is None else data_bytes, bytes(1 << 24)
        while left > 0:
            f.write(zeros[: min(left, len(zeros))])
            left -= len(zeros)


def _npy(path: Path) -> None:
    with open(path, "wb") as f:  # np.save(path) would add .npy to the name
        np.save(f, np.zeros((32, 48), np.float32))


def _nan(features: np.ndarray) -> np.ndarray:
    features = features.copy()
    features[0, 0] = np.nan
    return features


def score_knn(capsys, env: Path, folder: Path, results: Path) -> tuple[int, str]:
    """`bench score` of flowers102_knn outputs in `folder`."""
    where = ["--data-root", str(env / "data"), "--workers", "0", "--results", str(results)]
    return bench(capsys, "score", "--task", "flowers102_knn", "--outputs", str(folder), *where)


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda p: p.unlink(), "missing: every request needs its reply"),
        (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz file"),
        (lambda p: np.savez(p, embeddings=np.zeros((1, 48), np.float32)), "embed: reply has no 'features' array"),
        (rewrite(lambda f: f[:, :-1]), "features has shape (32, 47), expected (32, 48): 47 features wide, but the"),
        (rewrite(lambda f: f[:-1]), "embed: features has shape (31, 48), expected (32, 48)"),
        (rewrite(lambda f: f.astype(np.int64)), "embed: features has dtype int64, expected floating point"),
        (rewrite(_nan), "embed: features contains NaN or Inf"),
        (_npy, "an .npy file, not an .npz: save a reply's arrays with np.savez(path, features=...)"),
        (lambda p: deflated(p, (10**12, 10**12), data_bytes=64), "key 'features' is truncated"),  # before: MemoryError
    ],
)
def test_a_bad_reply_is_one_line_naming_its_file_and_writes_no_result(spoil, message, env, exported, capsys, tmp_path):
    folder = tmp_path / "knn"
    shutil.copytree(exported["flowers102_knn"], folder)
    reply = folder / "replies" / "000002.npz"
    spoil(reply)
    line = one_line_error(*score_knn(capsys, env, folder, tmp_path / "results"))
    assert line.startswith(f"bench: error: {reply}: ") and message in line, line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "embed_dim, shape, message",
    [
        (48, (32, 5_000_000), "embed: features has shape (32, 5000000), expected (32, 48)"),
        (3_000_000, (32, 3_000_000), "its arrays hold 384000000 bytes, above the limit of 268435456 bytes"),
    ],
    ids=["shape", "size"],
)
def test_a_reply_that_inflates_past_its_shape_or_the_live_cap_is_refused_from_its_header(
    embed_dim, shape, message, env, exported, capsys, tmp_path
):
    """Kilobytes on disk, 640 MB or 384 MB inflated: refused from the .npy header (declared shape, dtype and the live
    contract's cap, max(256 MiB, 16 x the request)), before reading the data, which the old check came after."""
    folder = tmp_path / "knn"
    shutil.copytree(exported["flowers102_knn"], folder)
    manifest = folder / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"embed_dim": 48', f'"embed_dim": {embed_dim}'))
    reply = folder / "replies" / "000000.npz"
    deflated(reply, shape)
    assert reply.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        code, err = score_knn(capsys, env, folder, tmp_path / "results")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    line = one_line_error(code, err)
    assert line.startswith(f"bench: error: {reply}: ") and message in line, line
    assert peak < 64 << 20 and not (tmp_path / "results").exists()


def test_inputs_needs_the_method_info_the_task_reads_and_never_leaves_a_partial_folder(env, capsys, tmp_path):
    out = tmp_path / "out"
    line = one_line_error(
        *bench(capsys, "inputs", "--task", "tiny_hummingbird", "--out", str(out), "--embed-dim", "48", *data_args(env))
    )
    assert "task tiny_hummingbird needs dense outputs: give patch_size (--patch-size N, or in --info FILE)" in line
    info = tmp_path / "info.json"
    info.write_text('{"patch_size": 0, "embed_dim": 48}')
    line = one_line_error(
        *bench(capsys, "inputs", "--task", "tiny_hummingbird", "--out", str(out), "--info", str(info), *data_args(env))
    )
    assert line.startswith(f"bench: error: {info}: patch_size: Input should be greater than 0")
    assert not out.exists() and list(tmp_path.iterdir()) == [info]

    code, _ = bench(
        capsys, "inputs", "--task", "flowers102_knn", "--out", str(out), "--embed-dim", "48", *data_args(env)
    )
    assert code == 0 and (out / "manifest.json").is_file()
    line = one_line_error(
        *bench(capsys, "inputs", "--task", "flowers102_knn", "--out", str(out), "--embed-dim", "48", *data_args(env))
    )
    assert line == f"bench: error: {out}: already exists (--force to replace it)"
    line = one_line_error(*bench(capsys, "score", "--task", "flowers102_knn", "--outputs", str(tmp_path)))
    assert line.startswith(f"bench: error: {tmp_path}/manifest.json: missing: make it with `bench inputs")


def test_a_harness_bug_keeps_its_traceback_instead_of_looking_like_a_user_error(env, capsys, tmp_path, monkeypatch):
    from harness.errors import HarnessBug, MethodFailure, UserError
    from harness.external import RecordingSession
    from harness.protocols.knn import KnnProtocol

    assert not issubclass(HarnessBug, UserError)
    with pytest.raises(HarnessBug, match="cannot export request 'fit_batch'"):
        RecordingSession(tmp_path, None).request("fit_batch", arrays={"images": np.zeros((1, 8, 8, 3), np.uint8)})

    def reject(self, data, ctx):
        raise MethodFailure("placeholder outputs rejected")

    monkeypatch.setattr(KnnProtocol, "run", reject)
    with pytest.raises(HarnessBug, match="the task rejected placeholder outputs"):  # not caught: exit 1, traceback
        main(
            [
                "inputs",
                "--task",
                "flowers102_knn",
                "--out",
                str(tmp_path / "out"),
                "--embed-dim",
                "48",
                *data_args(env),
                "--no-progress",
            ]
        )
    assert not (tmp_path / "out").exists()


def test_an_export_killed_midway_leaves_its_staging_folder_to_the_next_export(env, capsys, tmp_path):
    out = tmp_path / "out"
    dead = orphaned_folder(tmp_path, ".out-")
    live = Path(tempfile.mkdtemp(prefix=owned_prefix(".out-"), dir=tmp_path))  # this process's: never touched
    code, _ = bench(
        capsys, "inputs", "--task", "flowers102_knn", "--out", str(out), "--embed-dim", "48", *data_args(env)
    )
    assert code == 0 and live.exists() and not dead.exists()
