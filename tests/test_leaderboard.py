"""The leaderboard aggregates seeds correctly and never mixes real and procedural results."""

import statistics

from harness import specs
from harness.leaderboard import main_metric, render
from harness.results import Provenance, ResultKey, RunResult, Timings


def result(
    method,
    seed,
    miou,
    data="procedural",
    status="ok",
    task="voc_hummingbird",
    ref="code-sha256:0123456789abcdef",
    spec_hash="0" * 64,
    evaluator="hummingbird/v1",
    sandboxed=None,
    external=False,
):
    prov = Provenance(
        harness_version="0.1.0",
        git_commit="abc",
        git_dirty=False,
        task_spec_hash="h",
        task_params={},
        backend="local",
        sandboxed=sandboxed,
        host="h",
        platform="p",
        python="3",
        cpu="c",
        gpu=None,
        libraries={},
        dataset=None,
        started_at="t",
        finished_at="t",
    )
    return RunResult(
        key=ResultKey(
            method=method,
            method_ref=ref,
            task=task,
            task_version=1,
            spec_hash=spec_hash,
            evaluator=evaluator,
            data=data,
            seed=seed,
        ),
        status=status,
        error=None if status == "ok" else "method crashed",
        metrics={"miou": miou, "miou_identity": miou - 1} if status == "ok" else {},
        external=external,
        provenance=prov,
        timings=Timings(total_s=1, method_s=0, data_s=0, evaluator_s=0, harness_s=1),
    )


def current(method, seed, value, task="voc_hummingbird", metric=None, **kw):
    """A result of `task` as its spec and evaluator are now (so it is summarised), `value` on its main metric."""
    spec = specs.get("task", task)
    r = result(method, seed, value, task=task, spec_hash=spec.spec_hash, evaluator=spec.evaluator, **kw)
    if r.status == "ok":
        r.metrics = {metric or main_metric(task)[0]: value}
    return r


def test_mean_and_std_over_seeds_best_method_first_and_failures_shown():
    values = [40.0, 42.0, 47.0]
    text = render(
        [result("good", s, v) for s, v in enumerate(values)]
        + [result("floor", 0, 10.0), result("floor", 1, 0, status="failed")]
    )
    expected = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
    assert expected in text
    good, floor = text.index("| good"), text.index("| floor")
    assert good < floor
    assert "ok 1/2; failed: method crashed" in text


def test_real_and_procedural_results_are_in_separate_sections():
    text = render([result("m", 0, 70.0, data="real"), result("m", 0, 30.0, data="procedural")])
    real, proc = text.index("## Real datasets"), text.index("## Procedural stand-in data")
    assert real < text.index("70.00") < proc < text.index("30.00")


def test_empty_results_say_how_to_get_some():
    assert "make bench" in render([])


def test_two_code_versions_with_the_same_weights_are_two_rows_and_two_result_paths():
    weights = "+weights-sha256:" + "ab" * 32
    old, new = (result("m", 0, v, ref=f"code-sha256:{c * 64}{weights}") for c, v in (("1", 40.0), ("2", 60.0)))
    assert old.key.relpath() != new.key.relpath()
    text = render([old, new])
    rows = [line for line in text.splitlines() if line.startswith("| m ")]
    assert len(rows) == 2 and old.key.short_ref in text and new.key.short_ref in text
    assert "50.00" not in text  # the two versions' numbers are never averaged together


def test_each_task_is_ranked_by_its_protocols_main_metric_in_its_direction():
    def objseg(method, miou_fg, mse):
        r = result(method, 0, 0.0, task="clevrtex_objseg")
        r.metrics = {"ari_fg": 99.0 - miou_fg, "miou_fg": miou_fg, "mse": mse}
        return r

    text = render([objseg("low", 20.0, 0.01), objseg("high", 80.0, 0.05)])
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header.split("|")[3].strip() == "miou_fg ↑"  # the main metric first, whatever order the results give
    assert text.index("| high") < text.index("| low")  # not ranked by ari_fg, which comes first in the results

    from harness.leaderboard import main_metric
    from harness.protocols.objseg import ObjsegProtocol

    assert main_metric("clevrtex_objseg") == ("miou_fg", True) and not ObjsegProtocol.higher_is_better("mse")
    assert main_metric("no_such_task") == (None, True)


def test_a_lower_is_better_main_metric_ranks_the_smallest_first(monkeypatch):
    from harness.protocols.objseg import ObjsegProtocol

    monkeypatch.setattr(ObjsegProtocol, "main_metric", "mse")
    rows = [result(m, 0, 0.0, task="clevrtex_objseg") for m in ("worse", "better")]
    rows[0].metrics, rows[1].metrics = {"mse": 0.5}, {"mse": 0.1}
    text = render(rows)
    assert "mse ↓" in text and text.index("| better") < text.index("| worse")


def test_each_variant_is_its_own_row_with_its_weights_short_hash_and_a_random_init_is_marked():
    code = "code-sha256:" + "1" * 64
    rows = [
        result("net", 0, 50.0, ref=f"{code}+weights-sha256:{'ab' * 32}"),
        result("net@b8", 0, 60.0, ref=f"{code}+weights-sha256:{'cd' * 32}"),
        result("net@b8", 0, 5.0, ref=f"{code}+weights:random-init"),
    ]
    text = render(rows)
    lines = [line for line in text.splitlines() if line.startswith("| net")]
    assert [line.split("|")[1].strip() for line in lines] == ["net@b8 ‡", "net ‡", "net@b8 (random-init) ‡"]
    assert [line.split("|")[3].strip() for line in lines] == ["cd" * 6, "ab" * 6, "random-init"]
    assert "not the method's numbers" in text
    assert "| weights " not in render([result("m", 0, 1.0)])  # no column where no result has weights
