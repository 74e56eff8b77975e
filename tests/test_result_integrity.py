"""Issue 19's silent-wrong-number cases: a result is reused, pooled or ranked only where everything that determines
its number is equal, and its file is where its key says; the results folder and the leaderboard are written whole
or not at all, and two harnesses on one folder never run a cell twice."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_leaderboard import result

from harness import specs
from harness.leaderboard import render
from harness.protocols import PROTOCOLS, evaluator_sources
from harness.results import ResultStore, RunResult
from harness.run import RunOptions, cell_key, run_cell

from conftest import REPO, bench, cli, method_spec, one_line_error

TASK = "flowers102_knn"


def run_args(results: Path, data_root: Path, *extra: str, method: str = "pixels") -> tuple[str, ...]:
    return (
        "run",
        "--method",
        method,
        "--task",
        TASK,
        "--data",
        "synthetic",
        "--data-root",
        str(data_root),
        "--results",
        str(results),
        "--no-progress",
        "--workers",
        "0",
        *extra,
    )


def files(root: Path) -> list[Path]:
    return sorted(root.rglob("seed*.json")) if root.exists() else []


# --- 1. the key covers the task's spec and the evaluator -------------------------------------------------------


def test_a_changed_spec_or_evaluator_version_is_another_key_and_another_row(monkeypatch):
    task = specs.get("task", TASK)
    key = cell_key(task, "pixels", "code-sha256:" + "0" * 64, "procedural", 0)
    edited = task.model_copy(update={"params": {**task.params, "temperature": 0.5}})
    edited.__dict__.pop("protocol_params", None)
    assert edited.name == task.name and edited.version == task.version  # no version bump...
    assert cell_key(edited, "pixels", key.method_ref, "procedural", 0).relpath() != key.relpath()  # ...another key
    monkeypatch.setattr(PROTOCOLS["knn"], "version", PROTOCOLS["knn"].version + 1)
    assert cell_key(task, "pixels", key.method_ref, "procedural", 0).relpath() != key.relpath()

    old = [result("m", s, 40.0 + s, spec_hash="1" * 64) for s in range(3)]
    text = render([*old, result("m", 0, 90.0, spec_hash="2" * 64)])
    assert "41.00 ± 1.00" in text and "| 90.00" in text  # never pooled: two rows, 3 seeds and 1
    assert "(stale)" in text and "never averaged" in text


def test_every_protocols_code_is_locked_to_its_version():
    """A protocol's code changed without its version: bump `version` if a number can change, then re-lock."""
    lock = json.loads((REPO / "harness" / "protocols" / "versions.lock.json").read_text())
    now = {name: {"version": cls.version, "sources": digest} for name, cls, digest in evaluator_sources()}
    for name in sorted(set(lock) | set(now)):
        assert lock.get(name) == now.get(name), (
            f"protocol {name}: its code or version changed since harness/protocols/versions.lock.json was written. "
            f"If its numbers can change, bump {name}'s `version`; then run `python scripts/lock_evaluators.py`."
        )


# --- 2. the leaderboard trusts paths, not contents ---------------------------------------------------------------


def test_copied_moved_or_forged_result_files_are_reported_and_skipped(tmp_path, capsys):
    store = ResultStore(tmp_path)
    genuine = result("m", 0, 40.0)
    path = store.put(genuine)
    shutil.copy(path, path.with_name("seed7.json"))  # a copied seed
    elsewhere = tmp_path / "cub_knn" / path.relative_to(tmp_path / "voc_hummingbird")
    elsewhere.parent.mkdir(parents=True)
    shutil.copy(path, elsewhere)  # another task's folder
    forged = json.loads(path.read_text())
    forged["key"]["seed"], forged["metrics"]["miou"] = 1, "Infinity"
    path.with_name("seed1.json").write_text(json.dumps(forged).replace('"Infinity"', "Infinity"))

    found = store.all()
    assert found == [genuine]
    err = capsys.readouterr().err
    assert err.count("copied or moved by hand? skipped") == 2 and "Infinity is not a number" in err
    assert render(found).count("| m ") == 1 and "n" in render(found)


def test_non_finite_metrics_and_bad_names_never_reach_a_result():
    with pytest.raises(ValueError, match="finite"):
        result("m", 0, float("inf"))
    with pytest.raises(ValueError, match="pattern"):
        result("bad|name", 0, 1.0)
    with pytest.raises(ValueError, match="pattern"):
        result("m", 0, 1.0, task="t+k=**5**")


def test_error_text_is_one_line_and_escaped_in_the_table():
    failed = result("m", 0, 0, status="failed").model_copy(update={"error": "x | y\n<b>**z**</b>"})
    failed = RunResult.model_validate(failed.model_dump())
    assert failed.error == "x | y ⏎ <b>**z**</b>"
    lines = render([failed]).splitlines()
    row = next(line for line in lines if line.startswith("| m "))
    header = lines[lines.index(row) - 2]
    assert "x \\| y ⏎ &lt;b&gt;\\*\\*z\\*\\*&lt;/b&gt;" in row
    assert len(re.split(r"(?<!\\)\|", row)) == header.count("|") + 1  # no cell split by the error's |


# --- 3. the data kind comes from the dataset ----------------------------------------------------------------------


def test_a_data_root_inside_a_stand_in_gives_a_procedural_result(tmp_path, data_root, capsys):
    assert cli(capsys, *run_args(tmp_path / "first", data_root))[0] == 0
    stand_in = next((data_root / "_synthetic").glob("flowers102-*"))
    args = [a for a in run_args(tmp_path / "r", stand_in) if a not in ("--data", "synthetic")]
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    [path] = files(tmp_path / "r")
    got = RunResult.model_validate_json(path.read_text())
    assert got.key.data == "procedural" and got.provenance.dataset.kind == "procedural"
    assert "/procedural/" in str(path) and any("procedural" in n for n in got.notes)


# --- 4. a newer harness's result is kept --------------------------------------------------------------------------


def test_a_newer_schema_result_is_kept_and_said_once(tmp_path, data_root, capsys):
    assert cli(capsys, *run_args(tmp_path, data_root))[0] == 0
    [path] = files(tmp_path)
    newer = json.loads(path.read_text()) | {"schema_version": 99, "a_field_of_the_future": 1}
    path.write_text(json.dumps(newer))
    before = path.read_text()
    line = one_line_error(cli(capsys, *run_args(tmp_path, data_root)))
    assert "newer harness" in line and str(path) in line
    assert path.read_text() == before
    assert ResultStore(tmp_path).all() == []
    assert capsys.readouterr().err.count("newer harness") == 1


# --- 8. the leaderboard is written atomically ---------------------------------------------------------------------


def test_a_failed_leaderboard_write_keeps_the_old_page_and_is_one_line(tmp_path):
    store = ResultStore(tmp_path / "results")
    for s in range(3):
        store.put(result("m", s, 40.0 + s))
    out = tmp_path / "README.md"
    out.write_text("the old leaderboard\n")

    def small_files():  # writes past 200 bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    # once without the limit, elsewhere: matplotlib's font list and the specs' catalog are cached on first use,
    # and those writes (not the leaderboard's) would fail first on a fresh machine
    warm = tmp_path / "warm"
    assert bench("leaderboard", "--results", str(store.root), "--out", str(warm / "README.md")).returncode == 0
    shutil.rmtree(warm)
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "leaderboard", "--results", str(store.root), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=small_files,
    )
    line = one_line_error(proc)
    assert str(out) in line and "cannot write" in line
    assert out.read_text() == "the old leaderboard\n" and [p.name for p in tmp_path.iterdir()] == [
        "README.md",
        "results",
    ]


def test_results_and_the_leaderboard_are_readable_by_others_as_a_plain_write_makes_them(tmp_path):
    store = ResultStore(tmp_path / "results")
    path = store.put(result("m", 0, 40.0))
    out = tmp_path / "board" / "README.md"
    assert bench("leaderboard", "--results", str(store.root), "--out", str(out)).returncode == 0
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    want = plain.stat().st_mode & 0o777
    assert want & 0o044, "the umask here hides files from others: the check needs one that does not"
    modes = {p.name: p.stat().st_mode & 0o777 for p in (path, out, out.with_name("index.html"))}
    assert modes == dict.fromkeys(modes, want), modes


# --- 9. one cell, one harness ---------------------------------------------------------------------------------------


def test_a_cell_another_harness_runs_is_waited_for_then_found_done(tmp_path, data_root):
    """While one harness holds a cell, a second waits; when the first stores ok, the second skips it (it would
    crash if it ran: crasher) rather than replace it with a failure."""
    task, store = specs.get("task", TASK), ResultStore(tmp_path)
    opts = RunOptions(synthetic=True, data_root=data_root, progress=False, num_workers=0)
    ok = run_cell(specs.get("method", "pixels"), task, 0, opts, store)
    crasher = method_spec("crasher")
    from harness.runners.local import LocalRunner

    key = cell_key(task, "crasher", LocalRunner().result_ref(crasher), "procedural", 0)
    forged_ok = ok.model_copy(update={"key": key})
    got, holding = {}, threading.Event()

    def first_harness():
        with store.lock(key):
            holding.set()
            time.sleep(2)
            store.put(forged_ok)

    holder = threading.Thread(target=first_harness)
    holder.start()
    holding.wait()
    t0 = time.monotonic()
    got["second"] = run_cell(crasher, task, 0, opts, store)
    holder.join()
    assert time.monotonic() - t0 >= 1.5 and got["second"].status == "ok"
    assert RunResult.model_validate_json(store.path(key).read_text()).status == "ok"
    assert not list(tmp_path.rglob(".*.lock"))


def test_a_matrix_runs_other_cells_first_while_one_is_busy(tmp_path, data_root, capsys, monkeypatch):
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "two.yaml").write_text(
        f"name: two\ndescription: t\ntasks: [{TASK}]\nmethods: [pixels]\nseeds: [0, 1]\ndata: synthetic\n"
    )
    task, store = specs.get("task", TASK), ResultStore(tmp_path / "results")
    from harness.runners.local import LocalRunner

    key0 = cell_key(task, "pixels", LocalRunner().result_ref(specs.get("method", "pixels")), "procedural", 0)
    order, holding = [], threading.Event()

    def holder():
        with store.lock(key0):
            holding.set()
            while not store.path(key0.model_copy(update={"seed": 1})).exists():
                time.sleep(0.1)
            order.append("seed1 done while seed0 was held")

    thread = threading.Thread(target=holder)
    thread.start()
    holding.wait()
    monkeypatch.setenv("BENCH_BENCHMARKS", f"{tmp_path}{os.pathsep}{REPO / 'benchmarks'}")
    code, _, err = cli(
        capsys,
        "matrix",
        "--suite",
        "two",
        "--data-root",
        str(data_root),
        "--results",
        str(store.root),
        "--no-progress",
        "--workers",
        "0",
    )
    thread.join()
    assert code == 0, err
    assert order and "another bench is running it" in err and "2 cells, 2 ok" in err


# --- the results folder is checked before any work ----------------------------------------------------------------


def test_a_results_path_that_is_a_file_is_one_line_before_anything_runs(tmp_path, data_root):
    target = tmp_path / "results"
    target.write_text("not a folder")
    line = one_line_error(bench(*run_args(target, data_root), env={"BENCH_DATA": str(tmp_path / "nodata")}))
    assert "is a file, not a folder" in line and target.read_text() == "not a folder"


def test_a_full_disk_is_one_line_before_anything_runs(tmp_path, data_root):
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        if os.environ.get("CI") == "true":
            pytest.fail("cannot mount a small tmpfs (the test needs root)")
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/fill", "bs=64k"], capture_output=True)
        line = one_line_error(bench(*run_args(mnt / "results", data_root)))
        assert "KiB free" in line and not (mnt / "results").exists()
    finally:
        subprocess.run(["umount", str(mnt)])
