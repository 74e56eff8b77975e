"""Weights declared in method.yaml as {file, url, sha256}: `bench weights fetch|list` against a real HTTP server on
127.0.0.1, the lock file for checksums nobody publishes, and what runs do with missing, wrong or absent weights.

The test method is tests/methods/weighted (its 4th feature is the first byte of $BENCH_WEIGHTS, -1 without one;
variant dim6 has 6 features and an unpublished checksum), used from a copy so the lock file it writes stays in tmp."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from harness import specs
from harness.data.fetch import BASE_URL_ENV
from harness.leaderboard import render
from harness.provenance import hash_path
from harness.results import ResultStore, RunResult
from harness.runners.base import sandbox_for
from harness.runners.inprocess import InProcessRunner
from harness.runners.local import LocalRunner
from harness.weights import LOCK_NAME, resolve

from conftest import REPO, TEST_METHODS, ArchiveServer, cli, images, one_line_error

WEIGHTS = b"\x07weights"  # tests/methods/weighted/method.yaml publishes its sha256
DIM6 = b"\x09dim6 weights"  # weighted@dim6's: no checksum published
SHA = hashlib.sha256(WEIGHTS).hexdigest()


@pytest.fixture
def methods(tmp_path, monkeypatch) -> Path:
    """A copy of the weighted test method (and its adapter) as the only methods directory."""
    root = tmp_path / "methods"
    for name in ("weighted", "_misbehave"):
        shutil.copytree(TEST_METHODS / name, root / name)
    monkeypatch.setenv("BENCH_IMAGES", str(root))
    return root


@pytest.fixture
def server(monkeypatch):
    with ArchiveServer({"weighted.bin": WEIGHTS, "weighted_dim6.bin": DIM6}) as server:
        monkeypatch.setenv(BASE_URL_ENV, server.url)
        yield server


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "weights"


def fetch_error(result) -> str:
    """A failed fetch: exit 2 and one error line, after the lines that said what was being downloaded."""
    code, _, err = result
    assert code == 2 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if "error" in line] == [err.strip().splitlines()[-1]], err
    return err.strip().splitlines()[-1]


def fetch(capsys, root, *names):
    return cli(capsys, "weights", "fetch", *names, "--weights-root", str(root), "--no-progress")


def run(capsys, tmp_path, root, method="weighted", *more):
    args = ["run", "--method", method, "--task", "flowers102_knn", "--results", str(tmp_path / "results")]
    return cli(capsys, *args, "--weights-root", str(root), "--no-progress", "--workers", "0", *more)


def results(tmp_path) -> list[RunResult]:
    return ResultStore(tmp_path / "results").all() if (tmp_path / "results").exists() else []


# --- fetch and list ---------------------------------------------------------------------------------------------


def test_fetch_installs_verified_weights_under_the_root_and_a_second_fetch_downloads_nothing(
    methods, server, root, capsys
):
    code, out, err = fetch(capsys, root, "weighted")
    assert code == 0, err
    target = root / "weighted" / "weighted.bin"
    assert target.read_bytes() == WEIGHTS and out.strip() == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["weighted.bin"]  # no .part left
    assert not (methods / LOCK_NAME).exists()  # a published checksum needs no lock
    requests = len(server.requests)
    code, _, err = fetch(capsys, root, "weighted")
    assert code == 0 and "already installed" in err and len(server.requests) == requests


def test_a_cut_download_resumes_from_its_part_file(methods, server, root, capsys):
    server.cuts["weighted.bin"] = [3]
    code, _, err = fetch(capsys, root, "weighted")
    assert code == 0, err
    assert (root / "weighted" / "weighted.bin").read_bytes() == WEIGHTS
    assert server.requests[-2:] == [("weighted.bin", None), ("weighted.bin", "bytes=3-")]


def test_a_download_with_the_wrong_published_checksum_is_deleted(methods, server, root, capsys):
    server.files["weighted.bin"] = b"\x07tampered"
    line = fetch_error(fetch(capsys, root, "weighted"))
    assert "weighted.bin: sha256 mismatch: expected " + SHA in line and "the download was deleted" in line
    assert list((root / "weighted").iterdir()) == []


def test_without_a_published_checksum_the_first_fetch_records_it_and_later_fetches_must_match(
    methods, server, root, capsys
):
    code, _, err = fetch(capsys, root, "weighted@dim6")
    assert code == 0, err
    lock = json.loads((methods / LOCK_NAME).read_text())
    assert lock["weighted/weighted_dim6.bin"]["sha256"] == hashlib.sha256(DIM6).hexdigest()
    assert lock["weighted/weighted_dim6.bin"]["url"] == "https://example.invalid/weighted_dim6.bin"
    (root / "weighted" / "weighted_dim6.bin").unlink()
    server.files["weighted_dim6.bin"] = b"\x09other weights"  # the file changed upstream
    line = fetch_error(fetch(capsys, root, "weighted@dim6"))
    assert "sha256 mismatch" in line and str(methods / LOCK_NAME) in line
    assert list((root / "weighted").iterdir()) == []
    assert json.loads((methods / LOCK_NAME).read_text()) == lock  # the recorded checksum stays


def test_a_present_file_without_a_recorded_checksum_is_recorded_by_fetch(methods, server, root, capsys):
    (root / "weighted").mkdir(parents=True)
    (root / "weighted" / "weighted_dim6.bin").write_bytes(DIM6)
    code, _, err = fetch(capsys, root, "weighted@dim6")
    assert code == 0 and "already there; recorded its sha256" in err and server.requests == []
    assert json.loads((methods / LOCK_NAME).read_text())["weighted/weighted_dim6.bin"]["size"] == len(DIM6)


def test_fetching_an_unknown_variant_or_a_method_without_weights_is_one_line(methods, root, capsys):
    assert "has no variant 'huge'; variants: dim6, bare" in one_line_error(fetch(capsys, root, "weighted@huge"))
    assert "weighted@bare: nothing to fetch: it declares no weights" in one_line_error(
        fetch(capsys, root, "weighted@bare")
    )


def test_weights_list_shows_each_method_and_variant_with_its_file_path_presence_and_checksum(
    methods, server, root, capsys
):
    code, out, _ = cli(capsys, "weights", "list", "--weights-root", str(root))
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert code == 0 and set(rows) == {"weighted", "weighted@dim6"}  # weighted@bare declares none
    assert rows["weighted"][1:] == ["weighted.bin", str(root / "weighted" / "weighted.bin"), "missing", "published"]
    assert rows["weighted@dim6"][3:] == ["missing", "none", "recorded"]
    fetch(capsys, root, "weighted", "weighted@dim6")
    (root / "weighted" / "weighted.bin").write_bytes(b"\x07tampered")
    _, out, _ = cli(capsys, "weights", "list", "--weights-root", str(root))
    rows = {line.split()[0]: " ".join(line.split()[3:]) for line in out.splitlines()[2:]}
    assert rows == {"weighted": "present published, MISMATCH", "weighted@dim6": "present locked, ok"}


def test_a_malformed_lock_file_is_one_line(methods, root, capsys):
    (methods / LOCK_NAME).write_text('{"weighted/weighted_dim6.bin": {"sha256": "abc"}}')
    line = one_line_error(cli(capsys, "weights", "list", "--weights-root", str(root)))
    assert line.startswith(f"bench: error: {methods / LOCK_NAME}: expected ")


# --- runs ---------------------------------------------------------------------------------------------------------


def test_missing_weights_on_real_data_are_one_line_naming_file_place_and_command_and_write_nothing(
    methods, root, tmp_path, capsys
):
    line = one_line_error(run(capsys, tmp_path, root, "weighted@dim6", "--data-root", str(tmp_path / "data")))
    assert line == (
        f"bench: error: weighted@dim6: weights file weighted_dim6.bin is missing: expected at "
        f"{root / 'weighted' / 'weighted_dim6.bin'}; get it with `bench weights fetch weighted@dim6 --weights-root "
        f"{root}`"
    )
    assert not (tmp_path / "results").exists()


def test_on_procedural_data_absent_weights_run_as_a_random_init_kept_apart_from_the_real_weights(
    methods, server, root, tmp_path, data_root, capsys, monkeypatch
):
    decoy = tmp_path / "decoy.bin"
    decoy.write_bytes(b"\x63")
    monkeypatch.setenv("BENCH_WEIGHTS", str(decoy))  # the harness's own environment must not reach the method
    spec = resolve(specs.get("method", "weighted"), root, synthetic=True)
    assert spec.random_init and spec.weights_path is None
    with LocalRunner().start(spec, 0, {}, 60) as running:
        assert (running.session.embed(images())[:, 3] == -1).all()  # it got no BENCH_WEIGHTS

    code, _, err = run(capsys, tmp_path, root, "weighted", "--data", "synthetic", "--data-root", str(data_root))
    assert code == 0, err
    assert "no weights at" in err and "random init" in err
    [random] = results(tmp_path)
    assert random.provenance.weights == "random-init" and random.key.method_ref.endswith("+weights:random-init")
    assert any("random init" in note for note in random.notes)

    assert fetch(capsys, root, "weighted")[0] == 0
    code, _, err = run(capsys, tmp_path, root, "weighted", "--data", "synthetic", "--data-root", str(data_root))
    assert code == 0 and "cached" not in err  # a real-weights run is never the random-init one's cache
    [real] = [r for r in results(tmp_path) if r.provenance.weights != "random-init"]
    assert real.provenance.weights == f"sha256:{SHA}" and real.key.method_ref.endswith(f"+weights-sha256:{SHA}")
    assert real.key.relpath() != random.key.relpath()

    board = render(results(tmp_path))
    rows = [line for line in board.splitlines() if line.startswith("| weighted")]
    assert len(rows) == 2
    assert any("| weighted (random-init) " in r and "| random-init " in r for r in rows)
    assert any("| weighted " in r and f"| {SHA[:12]} " in r for r in rows)
    assert "not the method's numbers" in board


@pytest.mark.parametrize(
    "method, content, lock, error",
    [
        ("weighted", b"\x07tampered", None, f"not the {SHA} published in "),
        ("weighted@dim6", b"\x09tampered", DIM6, "recorded in "),
        ("weighted@dim6", DIM6, None, "has no checksum to match (sha256: null in "),
    ],
)
@pytest.mark.parametrize("data", ["real", "synthetic"])
def test_a_present_file_that_does_not_match_or_cannot_be_checked_never_runs(
    method, content, lock, error, data, methods, root, tmp_path, capsys
):
    (root / "weighted").mkdir(parents=True)
    (root / "weighted" / specs.get("method", method).weights.file).write_bytes(content)
    if lock:
        entry = {"sha256": hashlib.sha256(lock).hexdigest(), "url": "x"}
        (methods / LOCK_NAME).write_text(json.dumps({"weighted/weighted_dim6.bin": entry}))
    line = one_line_error(run(capsys, tmp_path, root, method, "--data", data, "--data-root", str(tmp_path / "data")))
    assert error in line and f"`bench weights fetch {method} --weights-root {root}`" in line
    assert not (tmp_path / "results").exists()


def test_a_matrix_checks_every_methods_weights_before_its_first_cell(
    methods, root, tmp_path, data_root, capsys, monkeypatch
):
    shutil.copytree(REPO / "images" / "pixels", methods / "pixels")
    (tmp_path / "bench" / "suites").mkdir(parents=True)
    (tmp_path / "bench" / "suites" / "w.yaml").write_text(
        "name: w\ndescription: test\ntasks: [flowers102_knn]\nmethods: [pixels, weighted]\ndata: synthetic\n"
    )
    monkeypatch.setenv("BENCH_BENCHMARKS", f"{tmp_path / 'bench'}{os.pathsep}{REPO / 'benchmarks'}")
    (root / "weighted").mkdir(parents=True)
    (root / "weighted" / "weighted.bin").write_bytes(b"\x07tampered")
    args = ["--data-root", str(data_root), "--results", str(tmp_path / "results"), "--weights-root", str(root)]
    line = one_line_error(cli(capsys, "matrix", "--suite", "w", *args, "--no-progress"))
    assert line.startswith("bench: error: weighted: ") and "has sha256" in line
    assert not (tmp_path / "results").exists()  # pixels, the first method, did not run either


# --- what each backend tells the method -------------------------------------------------------------------------


def test_the_inprocess_backend_sets_variant_and_weights_for_the_session_and_restores_them(
    methods, server, root, capsys, monkeypatch
):
    fetch(capsys, root, "weighted@dim6")
    monkeypatch.setenv("BENCH_VARIANT", "before")
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    spec = resolve(specs.get("method", "weighted@dim6"), root, synthetic=False)
    with InProcessRunner().start(spec, 0, {"name": "test"}, 60) as running:
        assert os.environ["BENCH_VARIANT"] == "dim6"
        assert os.environ["BENCH_WEIGHTS"] == str((root / "weighted" / "weighted_dim6.bin").resolve())
        assert running.session.embed(images()).shape == (3, 6)
    assert os.environ["BENCH_VARIANT"] == "before" and "BENCH_WEIGHTS" not in os.environ


def test_a_container_gets_the_variant_and_only_its_weights_file_mounted(methods, server, root, capsys, tmp_path):
    from harness.runners.docker import container_config

    fetch(capsys, root, "weighted@dim6")
    spec = resolve(specs.get("method", "weighted@dim6"), root, synthetic=False)
    config = container_config(sandbox_for(spec, tmp_path / "sock" / "contract.sock"), spec.name)
    assert config["environment"]["BENCH_VARIANT"] == "dim6"
    assert config["environment"]["BENCH_WEIGHTS"] == "/weights/weighted_dim6.bin"
    weights = str((root / "weighted" / "weighted_dim6.bin").resolve())
    assert config["volumes"][weights] == {"bind": "/weights/weighted_dim6.bin", "mode": "ro"}
    random = resolve(specs.get("method", "weighted"), root, synthetic=True)
    config = container_config(sandbox_for(random, None), random.name)
    assert "BENCH_WEIGHTS" not in config["environment"] and config["environment"]["BENCH_VARIANT"] == ""
    assert config["volumes"] == {}


def _record_many(methods: Path, worker: int) -> None:
    from harness import weights
    from harness.specs import WeightsSource

    spec = specs.get("method", "weighted")
    for i in range(25):
        source = WeightsSource(file=f"w{worker}_{i}.bin", url="http://127.0.0.1/x", sha256=None)
        weights.record(spec.model_copy(update={"weights": source}), "0" * 64, i)


def test_concurrent_fetches_of_other_methods_never_lose_a_lock_entry(methods):
    """Six processes recording 25 checksums each into one lock file: every one of the 150 entries is kept."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_many, args=(methods, w)) for w in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    entries = json.loads((methods / LOCK_NAME).read_text())
    assert len(entries) == 150


# --- weights given as a host path ---------------------------------------------------------------------------------


def host_weights(methods: Path, value: str) -> Path:
    """The weighted test method with `weights: <value>` (a host path) in place of its {file, url, sha256}."""
    yaml_file = methods / "weighted" / "method.yaml"
    text = yaml_file.read_text()
    start, end = text.index("weights:  #"), text.index("variants:")
    yaml_file.write_text(text[:start] + f"weights: {value}\n" + text[end:])
    return yaml_file


def run_weighted(capsys, tmp_path, data_root, root, backend="local"):
    return cli(
        capsys,
        *("run", "--method", "weighted", "--task", "flowers102_knn", "--backend", backend, "--data", "synthetic"),
        *("--data-root", str(data_root), "--results", str(tmp_path / "results"), "--weights-root", str(root)),
        "--no-progress",
    )


@pytest.mark.parametrize(
    "value, why",
    [
        ("/etc/passwd", "resolves to /etc/passwd, outside"),
        ("/", "resolves to /, outside"),
        ("../elsewhere.bin", "elsewhere.bin, outside"),  # beside the method's folder, not in it
        ("etc_link", "resolves to /etc, outside"),  # a symlink in the method's folder
        ("fifo", "is not a regular file or folder"),
    ],
    ids=["etc_passwd", "root", "beside", "symlink_to_etc", "fifo"],
)
def test_host_path_weights_outside_the_weights_root_and_the_method_folder_are_refused(
    value, why, methods, root, tmp_path, data_root, capsys
):
    """Before, any host path was mounted (read-only) for the method, whose output lands in the result's log_tail."""
    (methods / "elsewhere.bin").write_bytes(b"\x05")
    (methods / "weighted" / "etc_link").symlink_to("/etc")
    os.mkfifo(methods / "weighted" / "fifo")
    yaml_file = host_weights(methods, value)
    line = one_line_error(run_weighted(capsys, tmp_path, data_root, root))  # one line: the method never started
    assert line.startswith(f"bench: error: {yaml_file}: weights: {value!r}") and why in line, line
    if "outside" in why:
        assert f"the weights root {root.resolve()} (--weights-root" in line and str(methods / "weighted") in line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("value", ["weights.bin", "{root}/mine.bin", "link.bin"])
def test_host_path_weights_in_the_method_folder_or_under_the_weights_root_are_used(
    value, methods, root, tmp_path, data_root, capsys
):
    root.mkdir()
    (root / "mine.bin").write_bytes(b"\x07")
    (methods / "weighted" / "weights.bin").write_bytes(b"\x07")
    (methods / "weighted" / "link.bin").symlink_to(root / "mine.bin")  # a symlink into the weights root
    host_weights(methods, value.format(root=root))
    code, _, err = run_weighted(capsys, tmp_path, data_root, root)
    [result] = ResultStore(tmp_path / "results").all()
    assert code == 0 and result.status == "ok", err
    assert result.provenance.weights == "sha256:" + hash_path(root / "mine.bin")  # the same bytes: \x07


def test_the_docker_backend_refuses_them_too_before_building_or_starting_anything(
    docker_ready, tmp_path, data_root, capsys, monkeypatch
):
    """A symlink in the method's folder to /etc/passwd: before, the file was mounted into the untrusted container."""
    methods = REPO / "tests" / f".weights-{os.getpid()}"  # inside the build context, removed afterwards
    try:
        for name in ("weighted", "_misbehave"):
            shutil.copytree(TEST_METHODS / name, methods / name)
        monkeypatch.setenv("BENCH_IMAGES", str(methods))
        (methods / "weighted" / "passwd").symlink_to("/etc/passwd")
        yaml_file = host_weights(methods, "passwd")
        images_before = {i.id for i in docker_ready.images.list(all=True)}
        line = one_line_error(run_weighted(capsys, tmp_path, data_root, tmp_path / "weights", backend="docker"))
        assert line.startswith(f"bench: error: {yaml_file}: weights: 'passwd' resolves to /etc/passwd, outside")
        assert (
            not (tmp_path / "results").exists() and {i.id for i in docker_ready.images.list(all=True)} == images_before
        )
    finally:
        shutil.rmtree(methods, ignore_errors=True)
