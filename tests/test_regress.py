"""`bench regress`: results against a stored baseline, cell by cell on each task's main metric, with tolerances
from the flags, the task spec, the data kind or the baseline's seed spread; stale numbers are never compared."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from test_leaderboard import result

from harness import specs
from harness.results import ResultStore, RunResult
from harness.run import cell_key

from conftest import REPO, bench, cli, one_line_error

TASK = "voc_hummingbird"  # in the `seeds` suite (real data, seeds 0, 1, 2) and in `smoke` (procedural, seed 0)
SMOKE_BASELINE = REPO / "leaderboard" / "baselines" / "smoke.json"


@pytest.fixture(autouse=True)
def no_step_summary(monkeypatch):
    """Under GitHub Actions these checks must not write to the CI page's own summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def run(task=TASK, seed=0, value=40.0, data="real", method="pixels", status="ok", ref="", **update) -> RunResult:
    """A result of `task` with the key this harness gives it now (its spec hash and evaluator) and `value` for its
    main metric; `ref` is appended to its method_ref."""
    spec = specs.get("task", task)
    key = cell_key(spec, method, "code-sha256:" + "a" * 64 + ref, data, seed)
    metrics = {spec.protocol_class.main_metric: value} if status == "ok" else {}
    return result(method, seed, 0, data=data, status=status).model_copy(
        update={"key": key, "metrics": metrics, **update}
    )


def store(tmp_path, *results: RunResult, name="results"):
    s = ResultStore(tmp_path / name)
    for r in results:
        s.put(r)
    return s.root


def regress(capsys, baseline, results, *flags):
    return cli(capsys, "regress", "--baseline", str(baseline), "--results", str(results), *flags)


def baseline_of(capsys, tmp_path, *results: RunResult, suite="seeds"):
    """A baseline file written by `bench regress --update` from these results."""
    path = tmp_path / f"{suite}.json"
    code, _, err = regress(capsys, path, store(tmp_path, *results, name="baseline-results"), "--update")
    assert code == 0 and f"wrote {path}" in err, err
    return path


def rows(out: str) -> dict[tuple, str]:
    """(change, method, seed) -> the table line."""
    found = {}
    for line in out.splitlines():
        f = line.split()
        if f and f[0].lower() in ("regression", "improvement", "stale", "new"):
            found[(f[0].lower(), f[1], int(f[4]))] = line
    return found


def test_a_real_data_number_may_move_twice_its_seed_spread(tmp_path, capsys):
    path = baseline_of(capsys, tmp_path, *(run(seed=s, value=40.0 + s) for s in range(3)))  # sd 1: tolerance 2
    current = store(tmp_path, run(seed=0, value=41.9), run(seed=1, value=38.9), run(seed=2, value=44.5))
    code, out, _ = regress(capsys, path, current)
    assert code == 1
    found = rows(out)
    assert set(found) == {("regression", "pixels", 1), ("improvement", "pixels", 2)}  # seed 0 moved 1.9: unchanged
    assert "41.000000" in found[("regression", "pixels", 1)] and "38.900000" in found[("regression", "pixels", 1)]
    assert "2 (2σ of 3 seeds)" in found[("regression", "pixels", 1)]
    assert "1 regression(s), 1 improvement(s), 1 unchanged" in out
    assert regress(capsys, path, store(tmp_path, run(seed=1, value=38.9), name="r2"), "--abs-tol", "3")[0] == 0


def test_a_procedural_number_from_other_hardware_may_move_a_ten_thousandth_of_itself(tmp_path, capsys):
    """Float kernels differ between instruction sets: random_vit's smoke numbers moved by up to 1.8e-5 of
    themselves from an Intel Xeon to an AMD EPYC. On the same hardware, procedural numbers stay to 1e-6."""
    path = baseline_of(capsys, tmp_path, run(data="procedural", value=50.0), suite="smoke")
    elsewhere = run(data="procedural", value=50.0 - 2e-3)
    elsewhere.provenance.cpu = "another CPU"
    code, out, _ = regress(capsys, path, store(tmp_path, elsewhere, name="other"), "--strict")
    assert code == 0 and "0 regression(s), 0 improvement(s), 1 unchanged" in out, out
    elsewhere.metrics = {k: 50.0 - 6e-3 for k in elsewhere.metrics}  # beyond 1e-4 of 50
    code, out, _ = regress(capsys, path, store(tmp_path, elsewhere, name="far"))
    assert code == 1 and "0.005 (procedural, other hardware)" in out, out
    code, out, _ = regress(capsys, path, store(tmp_path, run(data="procedural", value=50.0 - 2e-3), name="same"))
    assert code == 1 and "1e-06 (procedural)" in out


def test_one_seed_of_real_data_may_move_one_percent_and_procedural_data_one_millionth(tmp_path, capsys):
    path = baseline_of(capsys, tmp_path, run(task="flowers102_knn", value=50.0), suite="fungi")
    for value, code in ((49.6, 0), (49.4, 1)):
        got = regress(capsys, path, store(tmp_path, run(task="flowers102_knn", value=value), name=f"r{value}"))
        assert got[0] == code, got[1]
    assert "0.5 (1 % (one seed))" in got[1]

    path = baseline_of(capsys, tmp_path, run(data="procedural", value=50.0), suite="smoke")
    assert regress(capsys, path, store(tmp_path, run(data="procedural", value=50.0 + 5e-7), name="p1"))[0] == 0
    code, out, _ = regress(capsys, path, store(tmp_path, run(data="procedural", value=50.0 - 2e-6), name="p2"))
    assert code == 1 and "1e-06 (procedural)" in out and "-2e-06" in out


def test_a_task_spec_sets_its_own_tolerance_which_changes_no_key(tmp_path, capsys, monkeypatch):
    task = specs.get("task", TASK)
    tasks = tmp_path / "bench" / "tasks"
    tasks.mkdir(parents=True)
    text = (REPO / "benchmarks" / "tasks" / f"{TASK}.yaml").read_text()
    (tasks / f"{TASK}.yaml").write_text(text + "tolerance: {abs: 3}\n")
    monkeypatch.setenv("BENCH_BENCHMARKS", f"{tmp_path / 'bench'}{os.pathsep}{REPO / 'benchmarks'}")
    tolerant = specs.get("task", TASK)
    assert tolerant.tolerance.abs == 3 and tolerant.spec_hash == task.spec_hash  # the same key: no number changes
    assert specs.get("task", f"{TASK}@m1024000").tolerance.abs == 3  # variants inherit it

    path = baseline_of(capsys, tmp_path, *(run(seed=s, value=40.0 + s) for s in range(3)))
    code, out, _ = regress(capsys, path, store(tmp_path, run(seed=1, value=38.5)))
    assert code == 0 and "1 unchanged" in out
    code, out, _ = regress(capsys, path, store(tmp_path, run(seed=1, value=38.5), name="r2"), "--rel-tol", "0.01")
    assert code == 1 and "0.41 (--abs-tol/--rel-tol)" in out  # the flags win over the spec

    (tasks / f"{TASK}.yaml").write_text(text + "tolerance: {abs: -1}\n")
    assert "tolerance.abs" in one_line_error(cli(capsys, "list", "tasks"))


def test_stale_missing_new_and_failed_cells(tmp_path, capsys):
    path = baseline_of(capsys, tmp_path, *(run(seed=s) for s in range(3)))
    baseline = json.loads(path.read_text())
    baseline["cells"][2]["key"]["spec_hash"] = "1" * 64  # seed 2's number came from another task spec
    path.write_text(json.dumps(baseline))
    current = store(
        tmp_path,
        run(seed=0, status="failed"),
        run(seed=2, value=10.0),  # not the baseline's spec: never compared, however far it moved
        run(seed=0, method="random_vit", value=1.0),
    )
    code, out, _ = regress(capsys, path, current)
    assert code == 1
    found = rows(out)
    assert set(found) == {("regression", "pixels", 0), ("stale", "pixels", 2), ("new", "random_vit", 0)}
    assert "failed: method crashed" in found[("regression", "pixels", 0)]
    assert "task changed" in found[("stale", "pixels", 2)]
    assert out.index("REGRESSION") < out.index("stale") < out.index("new")
    assert f"missing (no current result): pixels: 1 cell(s): {TASK}" in out  # counted, not listed
    assert "1 regression(s), 0 improvement(s), 0 unchanged; 1 stale, 1 missing, 1 new" in out

    only_stale = store(tmp_path, run(seed=2, value=10.0), name="r2")
    assert regress(capsys, path, only_stale)[0] == 0  # stale is reported...
    assert regress(capsys, path, only_stale, "--strict")[0] == 1  # ...and fails a deterministic baseline


def test_a_random_init_result_is_never_compared_with_a_real_weights_number(tmp_path, capsys):
    path = baseline_of(capsys, tmp_path, run(ref="+weights-sha256:" + "b" * 64))
    code, out, _ = regress(capsys, path, store(tmp_path, run(ref="+weights:random-init", value=1.0)))
    assert code == 0 and "ran a random init, the other real weights" in rows(out)[("stale", "pixels", 0)]


def test_update_replaces_the_cells_it_has_results_for_and_keeps_the_rest_with_their_provenance(tmp_path, capsys):
    path = baseline_of(capsys, tmp_path, *(run(seed=s, value=40.0 + s) for s in range(3)))
    before = json.loads(path.read_text())
    provenance = result("pixels", 1, 0).provenance.model_copy(update={"git_commit": "def", "finished_at": "u"})
    newer = run(seed=1, value=30.0, provenance=provenance)
    same = run(seed=2, value=42.0, provenance=provenance)  # the number the baseline has: its source stays
    code, out, _ = regress(capsys, path, store(tmp_path, newer, same, run(seed=0, status="failed")), "--update")
    assert code == 0 and "REGRESSION" in out  # the comparison is shown, then the baseline is rewritten
    after = json.loads(path.read_text())
    cells = {c["key"]["seed"]: c for c in after["cells"]}
    assert cells[1]["value"] == 30.0 and cells[1]["source"]["harness_commit"] == "def"
    assert cells[1]["source"]["result"] == str(newer.key.relpath()) and cells[1]["metric"] == "miou"
    assert cells[1]["key"]["spec_hash"] == newer.key.spec_hash and cells[1]["key"]["evaluator"] == newer.key.evaluator
    assert cells[0] == before["cells"][0]  # a failed result replaces nothing
    assert cells[2] == before["cells"][2]  # an equal one neither: the source is where the number was first measured


def test_the_markdown_summary_goes_to_the_github_step_summary(tmp_path, capsys, monkeypatch):
    path = baseline_of(capsys, tmp_path, run(seed=0, value=40.0), run(seed=1, value=41.0))
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert regress(capsys, path, store(tmp_path, run(seed=0, value=30.0)))[0] == 1
    text = summary.read_text()
    assert text.startswith("earlier step\n### bench regress: ") and "**FAILED**" in text
    line = next(line for line in text.splitlines() if "REGRESSION" in line)
    assert [c.strip() for c in line.split("|")][1:10] == [
        "REGRESSION",
        "pixels",
        TASK,
        "real",
        "0",
        "miou",
        "40.000000",
        "30.000000",
        "-10",
    ]


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no baseline here"),
        ("{not json", "not a valid baseline: (top level): Invalid JSON"),
        ('{"format": 1, "suite": "seeds", "updated_at": "t", "cells": [{"key": {}}]}', "cells.0.key.method: Field"),
        ('{"format": 1, "suite": "smoke", "updated_at": "t", "cells": []}', "suite: 'smoke', but the file is named"),
    ],
)
def test_bad_baseline_input_is_one_line_and_exit_2(tmp_path, capsys, content, expected):
    path = tmp_path / "seeds.json"
    if content is not None:
        path.write_text(content)
    assert expected in one_line_error(regress(capsys, path, tmp_path / "results"))


def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys):
    assert "a baseline is named <suite>.json" in one_line_error(regress(capsys, tmp_path / "x.json", tmp_path))
    path = baseline_of(capsys, tmp_path, run())
    assert "numbers >= 0" in one_line_error(regress(capsys, path, tmp_path, "--abs-tol", "-1"))
    assert "no results of suite seeds" in one_line_error(regress(capsys, path, tmp_path / "none", "--update"))
    twice = json.loads(path.read_text())
    twice["cells"] *= 2
    path.write_text(json.dumps(twice))
    assert "is listed twice" in one_line_error(regress(capsys, path, tmp_path))


# --- the committed smoke baseline, against the smoke suite's results (tests/conftest.py's smoke_run) -------------


@pytest.mark.slow
def test_the_smoke_run_matches_the_committed_baseline_exactly(smoke_run):
    _, results, _ = smoke_run
    proc = bench("regress", "--baseline", str(SMOKE_BASELINE), "--results", str(results), "--strict")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert " 0 regression(s), 0 improvement(s)" in proc.stdout and "0 stale" in proc.stdout
    baseline = json.loads(SMOKE_BASELINE.read_text())
    pixels = sum(c["key"]["method"] == "pixels" for c in baseline["cells"])
    assert pixels == len(specs.get("suite", "smoke").tasks) and f"{pixels} unchanged" in proc.stdout


@pytest.mark.slow
def test_a_degraded_smoke_number_fails_with_a_readable_table(smoke_run, tmp_path):
    _, results, _ = smoke_run
    degraded = tmp_path / "results"
    shutil.copytree(results, degraded)
    path = next(degraded.glob(f"{TASK}/*/procedural/pixels/*/seed0.json"))
    r = RunResult.model_validate_json(path.read_text())
    r.metrics["miou"] -= 0.01
    path.write_text(r.model_dump_json())
    proc = bench("regress", "--baseline", str(SMOKE_BASELINE), "--results", str(degraded))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    print(proc.stdout)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("REGRESSION"))
    assert line.split()[1:6] == ["pixels", TASK, "procedural", "0", "miou"] and "-0.01" in line
    assert "(procedural" in line and "higher is better" in line  # "procedural, other hardware" off the baseline's CPU
    assert "1 regression(s)" in proc.stdout and "missing (no current result): random_vit: " in proc.stdout
