"""The leaderboard aggregates seeds correctly and never mixes real and procedural results."""

import os
import statistics

import pytest

from harness import specs
from harness.leaderboard import main_metric, render
from harness.results import Provenance, ResultKey, ResultStore, RunResult, Timings

from conftest import REPO, TEST_METHODS, cli, one_line_error


@pytest.fixture(autouse=True)
def own_spec_cache(tmp_path, monkeypatch):
    """The specs' facts cached per test: a test that patches a protocol never sees another test's cache."""
    from harness.leaderboard import catalog

    monkeypatch.setattr(catalog, "CACHE", tmp_path / "spec-cache")


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


def test_weights_bench_train_made_show_their_recipe():
    trained = result("net@vitt16", 0, 50.0, ref="code-sha256:" + "1" * 64 + f"+weights-sha256:{'ef' * 32}")
    trained.provenance.training = {"recipe": "tiny", "steps": 300, "record": "/w/trained/ef/training.json"}
    (line,) = [line for line in render([trained]).splitlines() if line.startswith("| net")]
    assert line.split("|")[3].strip() == f"{'ef' * 6} (recipe tiny, 300 steps)"


# --- issue 13: summary, statistics, provenance, pages, merge ------------------------------------------------------


def summary_rows(text: str, title: str) -> list[list[str]]:
    """The rows of the summary table under `### title`, as lists of stripped cells."""
    lines = text[text.index(f"### {title}") :].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| #"))
    rows = []
    for line in lines[first + 2 :]:
        if not line.startswith("|"):
            return rows
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def smoke_board():
    """a beats b on both smoke tasks here; c has only one; every value is the mean of its seeds."""
    return (
        [current("a", s, 80.0 + s) for s in range(3)]
        + [current("b", s, 60.0 + s) for s in range(3)]
        + [current("a", s, 50.0, task="flowers102_knn") for s in range(2)]
        + [current("b", s, 40.0, task="flowers102_knn") for s in range(2)]
        + [current("c", 0, 99.0, task="flowers102_knn")]
    )


def test_summary_comes_first_with_mean_rank_and_borda_and_an_incomplete_method_marked():
    text = render(smoke_board())
    assert text.index("## Summary") < text.index("### smoke — procedural") < text.index("## Procedural stand-in data")
    rows = summary_rows(text, "smoke — procedural")
    header = next(line for line in text[text.index("### smoke") :].splitlines() if line.startswith("| #"))
    assert [h.strip() for h in header.strip("|").split("|")][:4] == ["#", "method", "mean rank", "Borda"]
    by_method = {r[1]: r for r in rows}
    # flowers102_knn: c 99 > a 50 > b 40 (ranks 1, 2, 3); voc_hummingbird: a 81 > b 61 (1, 2)
    assert [r[1] for r in rows] == ["a", "b", "c (1/2 tasks)"]
    assert by_method["a"][:4] == ["1", "a", "1.50", "2"]  # Borda: 1 below on voc, 1 below on flowers
    assert by_method["b"][:4] == ["2", "b", "2.50", "0"]
    assert by_method["c (1/2 tasks)"][0] == "—" and by_method["c (1/2 tasks)"][3] == "2"
    assert "81.00 ‡" in by_method["a"] and "—" in by_method["c (1/2 tasks)"][4:]
    assert "not comparable" in text[text.index("### smoke") :]  # a procedural summary says so


def test_real_and_procedural_results_are_summarised_apart():
    text = render([current("m", 0, 70.0, data="real"), current("m", 0, 30.0)])
    real = text[text.index("— real datasets") :]
    real = real[: real.index("\n### ")]
    procedural = text[text.index("### smoke — procedural") :]
    procedural = procedural[: procedural.index("\n### ")]
    assert "70.00" in real and "30.00" not in real and "30.00" in procedural and "70.00" not in procedural


def test_external_and_unsandboxed_results_are_marked_and_a_sandboxed_one_is_not():
    text = render(
        [current("ext", 0, 50.0, external=True), current("loc", 0, 40.0), current("box", 0, 30.0, sandboxed=True)]
    )
    cells = {r[1]: r[4] for r in summary_rows(text, "smoke — procedural")}
    assert cells == {"ext": "50.00 †", "loc": "40.00 ‡", "box": "30.00"}
    assert "outputs produced outside the harness" in text and "not sandboxed" in text


def test_bootstrap_interval_is_seeded_within_the_values_and_absent_for_one_seed():
    from harness.leaderboard.stats import bootstrap_ci

    values = [40.0, 42.0, 47.0, 41.0]
    lo, hi = bootstrap_ci(values)
    assert min(values) <= lo < statistics.mean(values) < hi <= max(values)
    assert bootstrap_ci(list(reversed(values))) == bootstrap_ci(values) == (lo, hi)  # seeded: the same each time
    assert bootstrap_ci([3.0]) is None and bootstrap_ci([5.0, 5.0]) == (5.0, 5.0)
    text = render([current("m", s, v) for s, v in enumerate(values)])
    assert f"[{lo:.2f}, {hi:.2f}]" in text and "bootstrap" in text and "default_rng(0)" in text


def test_paired_comparison_uses_common_seeds_and_says_when_two_methods_are_not_distinguishable():
    ahead = [current("a", s, 60.0 + s) for s in range(3)] + [current("b", s, 55.0 + s) for s in range(4)]
    text = render(ahead)  # a is 5 ahead on each of the 3 common seeds (b's seed 3 has no partner)
    assert "a ‡ vs b ‡: difference +5.00 [+5.00, +5.00] over 3 common seeds: distinguishable" in text
    noisy = [current("a", s, v) for s, v in enumerate([60.0, 50.0, 58.0])]
    noisy += [current("b", s, v) for s, v in enumerate([55.0, 57.0, 54.0])]
    text = render(noisy)
    assert "over 3 common seeds: **not distinguishable**" in text
    assert "55.33 ‡ ≈" in next(r for r in summary_rows(text, "smoke — procedural") if r[1] == "b")
    assert "not tested (1 common seed)" in render([current("a", 0, 2.0), current("b", 0, 1.0)])
    two = [current(m, s, v + s) for m, v in (("a", 2.0), ("b", 1.0)) for s in range(2)]
    assert "not tested (2 common seeds)" in render(two)  # 2 differences are no interval


def test_every_row_footnotes_its_result_files_and_their_provenance():
    from harness.results import DatasetInfo

    rows = [current("m", s, 40.0 + s) for s in range(2)]
    for r in rows:
        r.provenance = r.provenance.model_copy(
            update={
                "cpu": "Xeon(R) test CPU",
                "gpu": "H200",
                "git_commit": "0123456789abcdef",
                "weights": "sha256:" + "ab" * 32,
                "dataset": DatasetInfo(name="voc", kind="procedural", root="/d", fingerprint="fp1:feedbeef"),
                "finished_at": f"2026-01-0{r.key.seed + 1}T00:00:00+00:00",
            }
        )
    text = render(rows)
    row = next(line for line in text.splitlines() if line.startswith("| m "))
    note = row.rsplit("|", 2)[-2].strip()
    assert note.startswith("[^c")
    footnote = next(line for line in text.splitlines() if line.startswith(f"{note}:"))
    for part in (
        f"[seed 0](<results/{rows[0].key.relpath()}>)",
        f"[seed 1](<results/{rows[1].key.relpath()}>)",
        "code-sha256:0123456789abcdef",
        "sha256:" + "ab" * 32,
        "fp1:feedbeef",
        "0.1.0 @ 0123456789ab",
        "Xeon(R) test CPU; GPU: H200",
        "2026-01-01T00:00:00+00:00 – 2026-01-02T00:00:00+00:00",
    ):
        assert part in footnote, part


def test_failures_are_listed_with_their_reason_and_missing_cells_are_explained():
    rows = [current("a", 0, 50.0), current("a", 0, 40.0, task="flowers102_knn")]
    rows += [
        current("b", 0, 0, status="failed"),
        current("b", 1, 0, status="timeout").model_copy(update={"error": "x"}),
    ]
    text = render(rows)
    b = next(r for r in summary_rows(text, "smoke — procedural") if r[1].startswith("b"))
    assert b[1] == "b (0/2 tasks)" and set(b[4:]) == {"failed ‡", "—"}
    failures = text[text.index("## Failures") :]
    assert "| failed   | method crashed" in failures and "| timeout  | x " in failures
    assert "no result for this method on this task" in text


def test_the_html_page_shows_the_markdowns_numbers_escaped_and_self_contained(tmp_path, capsys):
    import re
    from html.parser import HTMLParser

    store = ResultStore(tmp_path / "results")
    for r in smoke_board() + [
        current("evil", 0, 0, status="failed").model_copy(update={"error": "<script>x</script>"})
    ]:
        store.put(r)
    out = tmp_path / "board" / "README.md"
    code, stdout, err = cli(capsys, "leaderboard", "--results", str(store.root), "--out", str(out))
    assert code == 0, err
    assert stdout.startswith("## Summary") and stdout.rstrip().endswith("reasons under Failures).")  # printed last
    page = (out.parent / "index.html").read_text()
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page) and page.count("<script") == 1

    class Cells(HTMLParser):
        cells, inside = [], False

        def handle_starttag(self, tag, attrs):
            self.inside = self.inside or tag == "td"

        def handle_endtag(self, tag):
            self.inside = self.inside and tag != "td"

        def handle_data(self, data):
            if self.inside:
                self.cells.append(data.strip())

    parser = Cells()
    parser.feed(page)
    numbers = re.compile(r"^-?\d+\.\d\d( ± \d+\.\d\d)?( [†‡≈])*$|^\[-?\d+\.\d\d, -?\d+\.\d\d\]$")
    markdown = out.read_text()
    md_cells = [c.strip() for line in markdown.splitlines() if line.startswith("| ") for c in line.split("|")]
    html_numbers = sorted(c for c in parser.cells if numbers.match(c))
    md_numbers = sorted(c for c in md_cells if numbers.match(c))
    assert html_numbers == md_numbers and len(md_numbers) > 20 and "81.00 ‡" in md_numbers


def test_plots_are_written_with_the_pages(tmp_path, capsys):
    store = ResultStore(tmp_path / "results")
    for r in smoke_board():
        store.put(r)
    for task, memory in (("voc_hummingbird", 102400), ("voc_hummingbird@m1024000", 1024000)):
        for m, v in (("a", 50.0), ("b", 40.0)):
            r = current(m, 0, v + memory / 1e5, task=task)
            r.provenance = r.provenance.model_copy(update={"task_params": {"memory_size": memory}})
            store.put(r)
    out = tmp_path / "board" / "README.md"
    (out.parent / "plots").mkdir(parents=True)
    (out.parent / "plots" / "procedural-gone-v1.png").write_bytes(b"old")
    assert cli(capsys, "leaderboard", "--results", str(store.root), "--out", str(out))[0] == 0
    folder = out.parent / "plots"
    plots = sorted(p.name for p in folder.glob("*.png"))
    assert plots == [
        "procedural-flowers102_knn-v1.png",
        "procedural-fungi-ranks.png",
        "procedural-hummingbird-memory.png",
        "procedural-smoke-ranks.png",
        "procedural-voc_hummingbird-v1.png",
        "procedural-voc_hummingbird@m1024000-v1.png",
    ]  # a task's plot no longer made is gone; fungi is summarised (voc_hummingbird@m1024000), the others are not
    for p in folder.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    drawn = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    store.put(current("b", 5, 45.0, task="flowers102_knn"))  # b's flowers102_knn mean moves, no rank does
    assert cli(capsys, "leaderboard", "--results", str(store.root), "--out", str(out))[0] == 0
    redrawn = {p.name for p in folder.glob("*.png") if p.stat().st_mtime_ns != drawn[p.name]}
    assert redrawn == {"procedural-flowers102_knn-v1.png"}  # the plots whose data are unchanged are not redrawn


def test_merging_folders_counts_an_identical_result_once_and_refuses_a_conflict(tmp_path, capsys):
    one, two = ResultStore(tmp_path / "one"), ResultStore(tmp_path / "two")
    shared = current("m", 0, 40.0)
    for store in (one, two):
        store.put(shared)
    two.put(current("m", 1, 42.0))
    out = tmp_path / "board" / "README.md"
    code, _, err = cli(capsys, "leaderboard", "--from", str(one.root), "--from", str(two.root), "--out", str(out))
    assert code == 0, err
    assert "41.00 ± 1.41" in out.read_text() and "| 2   |" in out.read_text()  # 2 seeds, not 3

    one.put(current("m", 1, 43.0))  # the same run with another number
    line = one_line_error(
        cli(capsys, "leaderboard", "--from", str(one.root), "--from", str(two.root), "--out", str(out))
    )
    assert (
        str(one.path(shared.key).with_name("seed1.json")) in line
        and str(two.root / shared.key.relpath().parent) in line
    )
    line = one_line_error(cli(capsys, "leaderboard", "--from", str(tmp_path / "nowhere"), "--out", str(out)))
    assert "nowhere" in line and "--from" in line


def test_the_local_backend_records_the_methods_peak_memory(tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.setenv("BENCH_IMAGES", f"{TEST_METHODS}{os.pathsep}{REPO / 'images'}")
    results = tmp_path / "results"
    for method in ("hoarder", "pixels"):
        args = ("run", "--method", method, "--task", "flowers102_knn", "--data", "synthetic", "--data-root")
        code, _, err = cli(capsys, *args, str(data_root), "--results", str(results), "--no-progress", "--workers", "0")
        assert code == 0, err
    peak = {r.key.method: r.timings.method_peak_bytes for r in ResultStore(results).all()}
    assert peak["pixels"] > 20 << 20 and peak["hoarder"] > peak["pixels"] + (200 << 20), peak
    text = render(ResultStore(results).all())
    assert f"| {peak['hoarder'] / (1 << 20):.2f} " in text
