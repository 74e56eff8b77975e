"""`bench` end to end, as a user runs it: real subprocesses, real methods, procedural datasets on disk."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from harness.results import RunResult, json_schema

from conftest import REPO, TEST_METHODS, bench, cli, one_line_error, shared_code_method


def result_files(root: Path) -> list[Path]:
    return sorted(root.rglob("seed*.json"))


# --- specs ---------------------------------------------------------------------------------------------------


def test_list_prints_tables_of_tasks_methods_and_suites():
    for kind, expected in (("tasks", "voc_hummingbird"), ("methods", "random_vit"), ("suites", "smoke")):
        proc = bench("list", kind)
        assert proc.returncode == 0, proc.stderr
        assert expected in proc.stdout and "|" in proc.stdout


@pytest.mark.parametrize(
    "body, expected",
    [
        ("name: bad\nversion: one\ndescription: x\nprotocol: knn\ndataset: flowers102\n", "bad.yaml:2: version:"),
        (
            "name: bad\nversion: 1\ndescription: x\nprotocol: knn\ndataset: flowers102\ncolour: red\n",
            "bad.yaml:6: colour: Extra inputs are not permitted",
        ),
        ("name: bad\nversion: 1\ndescription: x\nprotocol: nope\ndataset: flowers102\n", "bad.yaml:4: protocol:"),
        (
            "name: bad\nversion: 1\ndescription: x\nprotocol: knn\ndataset: flowers102\nparams:\n  temperature: hot\n",
            "bad.yaml:7: params.temperature:",
        ),
        ("name: bad\nversion: 1\n  description: [x\n", "bad.yaml:3: not valid YAML"),
        ("name: other\nversion: 1\ndescription: x\nprotocol: knn\ndataset: flowers102\n", "must match its file name"),
        (
            "name: bad\nversion: 1\ndescription: x\nprotocol: knn\ndataset: flowers102\npath: /etc\n",
            "bad.yaml:6: path:",
        ),
        (
            "name: bad\nversion: 1\ndescription: x\nprotocol: knn\ndataset: flowers102\ntimeout_s: .inf\n",
            "bad.yaml:6: timeout_s: Input should be a finite number",
        ),
        (
            "name: bad\nversion: 1\ndescription: x\nprotocol: knn\ndataset: flowers102\ntimeout_s: 1e300\n",
            "bad.yaml:6: timeout_s: Input should be less than or equal to 2592000",
        ),
    ],
)
def test_a_malformed_task_spec_gives_one_line_naming_file_line_and_field(tmp_path, body, expected):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "bad.yaml").write_text(body)
    line = one_line_error(bench("list", "tasks", env={"BENCH_BENCHMARKS": str(tmp_path)}))
    assert expected in line


def test_a_malformed_method_spec_gives_one_line(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "method.yaml").write_text("name: broken\nversion: '1'\ndescription: x\noutputs: [pixels]\n")
    line = one_line_error(bench("list", "methods", env={"BENCH_IMAGES": str(tmp_path)}))
    assert "broken/method.yaml:4: outputs.0:" in line


def test_unknown_names_are_one_line_errors():
    assert "unknown method 'nope'" in one_line_error(bench("run", "--method", "nope", "--task", "voc_hummingbird"))
    assert "unknown task 'nope'" in one_line_error(bench("run", "--method", "pixels", "--task", "nope"))


def test_missing_real_dataset_says_where_and_how_and_writes_nothing(tmp_path):
    proc = bench(
        "run",
        "--method",
        "pixels",
        "--task",
        "flowers102_knn",
        "--data-root",
        str(tmp_path / "data"),
        "--results",
        str(tmp_path / "results"),
    )
    line = one_line_error(proc)
    assert str(tmp_path / "data") in line and "--data synthetic" in line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "args, error",
    [
        (("run", "--timeout", "nan"), "argument --timeout: Input should be a finite number, got 'nan'"),
        (("run", "--timeout", "1e300"), "argument --timeout: Input should be less than or equal to 2592000"),
        (("run", "--timeout", "-1"), "argument --timeout: Input should be greater than 0, got '-1'"),
        (("run", "--workers", "-1"), "argument --workers: Input should be greater than or equal to 0"),
        (("run", "--seed", "-1"), "argument --seed: Input should be greater than or equal to 0, got '-1'"),
        (("run", "--seed", str(2**32)), "argument --seed: Input should be less than or equal to 4294967295"),
        (("matrix", "--suite", "smoke", "--seeds", "0,-1"), "argument --seeds: Input should be greater than or equal"),
        (("inputs", "--task", "flowers102_knn", "--out", "x", "--seed", str(2**32)), "argument --seed: Input should"),
        (("score", "--task", "flowers102_knn", "--outputs", "x", "--seed", "1.5"), "argument --seed: Input should be"),
    ],
)
def test_a_number_out_of_range_is_one_line_naming_the_flag_and_runs_nothing(args, error, capsys, tmp_path, data_root):
    """Before: nan and 1e300 seconds were tracebacks, -1 seconds a recorded timeout, --seed -1 a result."""
    cell = ["--method", "pixels", "--task", "flowers102_knn"] if args[0] == "run" else []
    where = ["--data", "synthetic", "--data-root", str(data_root), "--no-progress"]
    results = [] if args[0] == "inputs" else ["--results", str(tmp_path / "results")]
    line = one_line_error(cli(capsys, *args, *cell, *where, *results))
    assert line.startswith(f"bench: error: {error}"), line
    assert line.endswith(f"(see `bench {args[0]} --help`)") and not (tmp_path / "results").exists()


# --- running -------------------------------------------------------------------------------------------------


def test_run_writes_one_typed_result_and_a_rerun_is_skipped(tmp_path, data_root):
    args = (
        "run",
        "--method",
        "pixels",
        "--task",
        "flowers102_knn",
        "--data",
        "synthetic",
        "--data-root",
        str(data_root),
        "--results",
        str(tmp_path),
        "--no-progress",
    )
    proc = bench(*args)
    assert proc.returncode == 0, proc.stderr
    [path] = result_files(tmp_path)
    result = RunResult.model_validate_json(path.read_text())
    assert path == tmp_path / result.key.relpath()
    assert result.status == "ok" and result.key.data == "procedural"
    assert 0 <= result.metrics["top1_k20"] <= 100 and result.metrics["top1_best"] >= result.metrics["top1_k20"]
    assert result.provenance.dataset.fingerprint and result.provenance.method_info["name"] == "pixels"
    assert result.key.method_ref.startswith("code-sha256:")
    assert any("procedural" in n for n in result.notes)
    mtime = path.stat().st_mtime_ns

    again = bench(*args)
    assert again.returncode == 0 and "cached, skipped" in again.stderr
    assert path.stat().st_mtime_ns == mtime
    forced = bench(*args, "--force")
    assert forced.returncode == 0 and path.stat().st_mtime_ns != mtime


def test_a_matrix_runs_and_counts_each_cell_once_however_often_it_is_named(tmp_path, data_root, capsys, monkeypatch):
    """Before, a task listed twice ran twice (the second time `cached, skipped`) and the summary said 2 cells."""
    (tmp_path / "bench" / "suites").mkdir(parents=True)
    (tmp_path / "bench" / "suites" / "twice.yaml").write_text(
        "name: twice\ndescription: test\ntasks: [flowers102_knn, flowers102_knn]\nmethods: [pixels, pixels]\n"
        "seeds: [0, 0]\ndata: synthetic\n"
    )
    monkeypatch.setenv("BENCH_BENCHMARKS", f"{tmp_path / 'bench'}{os.pathsep}{REPO / 'benchmarks'}")
    where = ["--data-root", str(data_root), "--results", str(tmp_path / "results"), "--no-progress"]
    for more in ([], ["--methods", "pixels, pixels", "--seeds", "1,1"]):
        code, _, err = cli(capsys, "matrix", "--suite", "twice", *where, *more)
        assert code == 0 and err.count(" x flowers102_knn seed ") == 2, err  # its start and end lines
        assert err.strip().endswith("bench: 1 cells, 1 ok, 0 failed or timed out"), err
    assert len(result_files(tmp_path / "results")) == 2


@pytest.mark.slow
def test_matrix_records_crashes_and_timeouts_and_carries_on(tmp_path, data_root):
    (tmp_path / "bench" / "suites").mkdir(parents=True)
    (tmp_path / "bench" / "suites" / "misbehaving.yaml").write_text(
        "name: misbehaving\ndescription: test\ntasks: [flowers102_knn]\n"
        "methods: [crasher, dies_at_start, hanger, pixels]\n"
        "data: synthetic\n"
    )
    env = {
        "BENCH_IMAGES": f"{TEST_METHODS}{os.pathsep}{REPO / 'images'}",
        "BENCH_BENCHMARKS": f"{tmp_path / 'bench'}{os.pathsep}{REPO / 'benchmarks'}",
    }
    results = tmp_path / "results"
    proc = bench(
        "matrix",
        "--suite",
        "misbehaving",
        "--data-root",
        str(data_root),
        "--results",
        str(results),
        "--timeout",
        "40",
        "--no-progress",
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    status = {
        RunResult.model_validate_json(p.read_text()).key.method: RunResult.model_validate_json(p.read_text())
        for p in result_files(results)
    }
    assert {m: r.status for m, r in status.items()} == {
        "crasher": "failed",
        "dies_at_start": "failed",
        "hanger": "timeout",
        "pixels": "ok",
    }
    assert "closed its output stream" in status["crasher"].error and "(exited with code 3)" in status["crasher"].error
    assert "(exited with code 1)" in status["dies_at_start"].error
    assert status["crasher"].log_tail  # the method's stderr is kept for failed runs
    assert "/weights/model.pt not found" in status["dies_at_start"].log_tail  # also when it dies before the handshake

    board = tmp_path / "board.md"
    proc = bench("leaderboard", "--results", str(results), "--out", str(board))
    assert proc.returncode == 0
    text = board.read_text()
    assert "failed: method closed its output stream" in text and "timeout: method did not" in text
    assert "not comparable to published results" in text


@pytest.mark.slow
def test_smoke_suite_end_to_end_then_nothing_reruns(tmp_path, smoke_run):
    """Every smoke task with the raw-pixel baseline (random_vit's share is in the next test, to keep CI short; the
    committed baseline's check of these numbers is in tests/test_regress.py)."""
    from harness import specs

    tasks = specs.get("suite", "smoke").tasks
    args, results, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [RunResult.model_validate_json(p.read_text()) for p in result_files(results)]
    assert sorted(r.key.task for r in found) == sorted(tasks)
    for r in found:
        assert r.status == "ok" and r.metrics and all(math.isfinite(v) for v in r.metrics.values()), r.key
        # outputs from the method, or from the feature cache where another task sent the same images before
        assert (r.timings.method_s > 0 and r.timings.images_sent > 0) or r.timings.cached_requests > 0, r.key
    again = bench(*args)
    assert again.returncode == 0 and again.stderr.count("cached, skipped") == len(tasks)

    proc = bench("leaderboard", "--results", str(results), "--out", str(tmp_path / "board.md"))
    text = (tmp_path / "board.md").read_text()
    for name in (*tasks, "pixels", "miou", "top1_best", "miou_fg", "r2"):
        assert name in text
    assert text.index("## Real datasets") < text.index("## Procedural stand-in data")


def test_random_vit_serves_every_output_kind(tmp_path, data_root):
    (tmp_path / "bench" / "suites").mkdir(parents=True)
    (tmp_path / "bench" / "suites" / "kinds.yaml").write_text(
        "name: kinds\ndescription: test\ntasks: [flowers102_knn, coco_r2, clevrtex_objseg]\nmethods: [random_vit]\n"
        "data: synthetic\n"
    )
    env = {"BENCH_BENCHMARKS": f"{tmp_path / 'bench'}{os.pathsep}{REPO / 'benchmarks'}"}
    proc = bench(
        "matrix",
        "--suite",
        "kinds",
        "--data-root",
        str(data_root),
        "--results",
        str(tmp_path / "r"),
        "--no-progress",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {RunResult.model_validate_json(p.read_text()).key.task for p in result_files(tmp_path / "r")}
    assert found == {"flowers102_knn", "coco_r2", "clevrtex_objseg"}
    baseline = REPO / "leaderboard" / "baselines" / "smoke.json"  # these three are smoke cells: the same numbers
    args = ("regress", "--baseline", str(baseline), "--results", str(tmp_path / "r"), "--strict")
    proc = bench(*args, env={**env, "GITHUB_STEP_SUMMARY": ""})  # not onto a CI page's summary
    assert proc.returncode == 0 and "0 regression(s), 0 improvement(s), 3 unchanged" in proc.stdout, proc.stdout


def test_committed_result_schema_matches_the_code():
    committed = json.loads((REPO / "leaderboard" / "result.schema.json").read_text())
    assert committed == json_schema(), "run `make schema` and commit leaderboard/result.schema.json"


def test_list_methods_says_where_each_image_is_built_from(tmp_path, monkeypatch, capsys):
    shared_code_method(tmp_path)
    monkeypatch.setenv("BENCH_IMAGES", f"{tmp_path}{os.pathsep}{REPO / 'images'}")
    code, out, _ = cli(capsys, "list", "methods")
    row = next(line for line in out.splitlines() if line.startswith("| shared_user "))
    assert code == 0 and f"(built from {tmp_path / 'shared_user'})" in row
    assert "(built from images/dino)" in out
