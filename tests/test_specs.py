"""Task variants: `<task>@<variant>` is a task of its own, validated when its file is loaded."""

import pytest

from harness import specs
from harness.errors import SpecError

TASK = """name: seg
version: 2
description: base
protocol: hummingbird
dataset: voc
params: {memory_size: 1000, k: 5}
variants:
  big:
    params: {memory_size: 5000}
  ade:
    dataset: ade20k
    description: on ADE20K
"""


@pytest.fixture()
def bench_dir(tmp_path, monkeypatch):
    (tmp_path / "tasks").mkdir()
    monkeypatch.setenv("BENCH_BENCHMARKS", str(tmp_path))
    return tmp_path


def test_a_variant_overrides_dataset_and_params_and_keeps_the_rest(bench_dir):
    (bench_dir / "tasks" / "seg.yaml").write_text(TASK)
    big, ade = specs.get("task", "seg@big"), specs.get("task", "seg@ade")
    assert big.name == "seg@big" and big.version == 2 and big.dataset == "voc"
    assert big.protocol_params.memory_size == 5000 and big.protocol_params.k == 5
    assert ade.dataset == "ade20k" and ade.description == "on ADE20K" and ade.protocol_params.memory_size == 1000
    assert len({specs.get("task", "seg").spec_hash, big.spec_hash, ade.spec_hash}) == 3
    assert [t.name for t in specs.load_all("task")] == ["seg", "seg@big", "seg@ade"]


def test_unknown_variant_lists_the_known_ones(bench_dir):
    (bench_dir / "tasks" / "seg.yaml").write_text(TASK)
    with pytest.raises(SpecError, match="no variant 'huge'; variants: big, ade"):
        specs.get("task", "seg@huge")


@pytest.mark.parametrize("bad, where", [
    ("    params: {memory_size: lots}\n", "seg.yaml:9: variants.big.params.memory_size:"),
    ("    dataset: nowhere\n", "seg.yaml:9: variants.big.dataset: Value error, unknown dataset"),
])
def test_a_bad_variant_is_reported_with_its_line(bench_dir, bad, where):
    (bench_dir / "tasks" / "seg.yaml").write_text(TASK.replace("    params: {memory_size: 5000}\n", bad))
    with pytest.raises(SpecError) as err:
        specs.get("task", "seg")
    assert where in str(err.value)


def test_every_suite_names_tasks_that_exist_and_the_smoke_suite_covers_every_task_file():
    tasks = {t.name for t in specs.load_all("task")}
    suites = {s.name: s for s in specs.load_all("suite")}
    assert {"smoke", "seeds", "fungi", "neco", "separating_knowledge", "clevrtex", "agglomerator"} <= set(suites)
    for suite in suites.values():
        assert set(suite.tasks) <= tasks, (suite.name, set(suite.tasks) - tasks)
    base_tasks = {t for t in tasks if "@" not in t}
    assert base_tasks - set(suites["smoke"].tasks) == {"voc_hummingbird_efficient"}  # needs more than tiny data
    assert set(suites["seeds"].tasks) == tasks
