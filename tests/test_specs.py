"""Task variants: `<task>@<variant>` is a task of its own, validated when its file is loaded."""

import pytest

from harness import cli, specs
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


@pytest.mark.parametrize(
    "bad, where",
    [
        ("    params: {memory_size: lots}\n", "seg.yaml:9: variants.big.params.memory_size:"),
        ("    dataset: nowhere\n", "seg.yaml:9: variants.big.dataset: Value error, unknown dataset"),
    ],
)
def test_a_bad_variant_is_reported_with_its_line(bench_dir, bad, where):
    (bench_dir / "tasks" / "seg.yaml").write_text(TASK.replace("    params: {memory_size: 5000}\n", bad))
    with pytest.raises(SpecError) as err:
        specs.get("task", "seg")
    assert where in str(err.value)


def test_every_suite_names_tasks_that_exist_and_the_smoke_suite_covers_every_task_file():
    """smoke and seeds select declaratively (`tasks: all`): this keeps what they select what it was when they
    were lists, so that an `exclude` added to them, or a lost `variants: true`, is a decision seen here."""
    all_tasks = [t.name for t in specs.load_all("task")]
    tasks = set(all_tasks)
    suites = {s.name: s for s in specs.load_all("suite")}
    assert {"smoke", "seeds", "fungi", "neco", "separating_knowledge", "clevrtex", "agglomerator"} <= set(suites)
    for suite in suites.values():
        assert set(suite.tasks) <= tasks, (suite.name, set(suite.tasks) - tasks)
        assert len(set(suite.tasks)) == len(suite.tasks), suite.name
    base_tasks = [t for t in all_tasks if "@" not in t]
    assert set(base_tasks) - set(suites["smoke"].tasks) == {"voc_hummingbird_efficient"}  # needs more than tiny data
    assert suites["smoke"].tasks == [t for t in base_tasks if t != "voc_hummingbird_efficient"]
    assert suites["seeds"].tasks == all_tasks


OTHER = """name: cls
version: 1
description: kNN
protocol: knn
dataset: flowers102
variants:
  test:
    params: {eval_split: test}
"""


def write_suite(bench_dir, body: str):
    (bench_dir / "tasks" / "seg.yaml").write_text(TASK)
    (bench_dir / "tasks" / "cls.yaml").write_text(OTHER)
    (bench_dir / "suites").mkdir(exist_ok=True)
    (bench_dir / "suites" / "s.yaml").write_text(f"name: s\ndescription: a suite\n{body}")


@pytest.mark.parametrize(
    "body, expanded",
    [
        ("tasks: [seg@ade, cls]\n", ["seg@ade", "cls"]),  # an explicit list, as written
        ("tasks: all\n", ["cls", "seg"]),  # base forms, in catalog (file) order
        ("tasks: all\nvariants: true\n", ["cls", "cls@test", "seg", "seg@big", "seg@ade"]),
        ("tasks: all\nvariants: true\nexclude: [seg@big, cls]\n", ["cls@test", "seg", "seg@ade"]),
        ("tasks: [seg, seg@big]\nvariants: true\n", ["seg", "seg@big", "seg@ade"]),  # each variant once
        ("tasks: all\nexclude:\n  - seg\n", ["cls"]),
    ],
)
def test_a_suite_selects_tasks_declaratively(bench_dir, body, expanded, capsys):
    write_suite(bench_dir, body)
    assert specs.get("suite", "s").tasks == expanded
    assert cli.main(["list", "suites"]) == 0
    assert f"| {','.join(expanded)} " in capsys.readouterr().out  # `bench list suites` shows the expanded list


@pytest.mark.parametrize(
    "body, where",
    [
        ("tasks: [cls, seg@huge]\n", "s.yaml:3: tasks.1: unknown task 'seg@huge'; did you mean seg@big, seg@ade?"),
        ("tasks: all\nexclude:\n  - cls\n  - sge\n", "s.yaml:6: exclude.1: unknown task 'sge'; did you mean seg?"),
        ("tasks: all\nexclude: [seg@big]\n", "s.yaml:4: exclude.0: 'seg@big' is not among the selected tasks"),
        ("tasks: [cls]\nexclude: [cls]\n", "s.yaml:4: exclude: excludes every selected task"),
        ("tasks: everything\n", "s.yaml:3: tasks: Value error, 'everything' is neither `all` nor a list"),
        ("tasks: []\n", "s.yaml:3: tasks: Value error, an empty list selects no task"),
        ("tasks: all\nvariants: maybe\n", "s.yaml:4: variants: Input should be a valid boolean"),
    ],
)
def test_a_bad_suite_selection_is_one_line_naming_file_line_and_field(bench_dir, body, where):
    write_suite(bench_dir, body)
    with pytest.raises(SpecError) as err:
        specs.get("suite", "s")
    assert where in str(err.value) and "\n" not in str(err.value)
