"""Task variants: `<task>@<variant>` is a task of its own, validated when its file is loaded."""

import re

import pytest

from harness import cli, specs
from harness.errors import SpecError

from conftest import shared_code_method

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
        ("tasks: all\nseeds: [0, -1]\n", "s.yaml:4: seeds.1: Input should be greater than or equal to 0"),
    ],
)
def test_a_bad_suite_selection_is_one_line_naming_file_line_and_field(bench_dir, body, where):
    write_suite(bench_dir, body)
    with pytest.raises(SpecError) as err:
        specs.get("suite", "s")
    assert where in str(err.value) and "\n" not in str(err.value)


# --- method variants: `<method>@<variant>` is a method of its own ---------------------------------------------------

METHOD = """name: net
version: "1"
description: base net
outputs: [global, dense]
patch_size: 16
embed_dim: 384
baseline: true
weights: {file: net_s16.pth, url: "https://example.org/net_s16.pth", sha256: null}
resources: {memory_gb: 4, shm_gb: 2}
variants:
  b8:
    description: the base model, patch 8
    patch_size: 8
    embed_dim: 768
    weights: {file: net_b8.pth, url: "https://example.org/net_b8.pth", sha256: null}
    resources: {memory_gb: 16}
  plain:
    weights: null
"""


@pytest.fixture()
def images_dir(tmp_path, monkeypatch):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "adapter.py").write_text("")
    monkeypatch.setenv("BENCH_IMAGES", str(tmp_path))
    return tmp_path


def test_a_method_variant_overrides_its_fields_and_keeps_the_rest(images_dir):
    (images_dir / "net" / "method.yaml").write_text(METHOD)
    base, b8, plain = (specs.get("method", n) for n in ("net", "net@b8", "net@plain"))
    assert (b8.name, b8.base, b8.variant_name, base.variant_name) == ("net@b8", "net", "b8", "")
    assert (b8.patch_size, b8.embed_dim, b8.description, b8.version) == (8, 768, "the base model, patch 8", "1")
    assert b8.weights.file == "net_b8.pth" and b8.folder == base.folder
    assert (b8.resources.memory_gb, b8.resources.shm_gb) == (16, 2)  # resources merge into the method's
    assert plain.weights is None and plain.patch_size == 16 and plain.description == "base net [plain]"
    assert [m.name for m in specs.load_all("method")] == ["net", "net@b8", "net@plain"]
    assert specs.baseline_methods() == ["net"]  # a variant runs when a suite or --methods names it


def test_bench_list_methods_shows_each_variant_as_a_row(images_dir, capsys):
    (images_dir / "net" / "method.yaml").write_text(METHOD)
    assert cli.main(["list", "methods"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [[c.strip() for c in r[:5]] for r in rows] == [
        ["net", "1", "global,dense", "16", "384"],
        ["net@b8", "1", "global,dense", "8", "768"],
        ["net@plain", "1", "global,dense", "16", "384"],
    ]


def test_an_unknown_method_variant_lists_the_known_ones(images_dir):
    (images_dir / "net" / "method.yaml").write_text(METHOD)
    with pytest.raises(SpecError, match="method 'net' has no variant 'huge'; variants: b8, plain"):
        specs.get("method", "net@huge")


@pytest.mark.parametrize(
    "old, new, where",
    [
        ("    patch_size: 8\n", "    patch_size: 0\n", "method.yaml:13: variants.b8.patch_size: Input should be"),
        ("{memory_gb: 16}", "{memory_gb: lots}", "method.yaml:16: variants.b8.resources.memory_gb: Input should be"),
        ("  plain:\n", "  Plain:\n", "method.yaml:11: variants: Value error, variant name 'Plain' must match"),
        ("    weights: null\n", "    colour: red\n", "method.yaml:18: variants.plain.colour: Extra inputs"),
        ("sha256: null}\nres", "sha: null}\nres", "method.yaml:8: weights: Value error, sha256: Field required"),
        ("file: net_s16.pth", "file: ../net_s16.pth", "method.yaml:8: weights: Value error, file: String should"),
        ('"https://example.org/net_b8.pth"', "ftp://x", "method.yaml:15: variants.b8.weights: Value error, url:"),
        ("name: net\n", "name: net@b8\n", "method.yaml:1: name: 'net@b8': a variant is declared under `variants:`"),
        ("baseline: true\n", "random_init: true\n", "method.yaml:7: random_init: set by the harness for a run"),
    ],
)
def test_a_bad_method_variant_or_weights_mapping_is_one_line_naming_file_line_and_field(images_dir, old, new, where):
    assert old in METHOD
    (images_dir / "net" / "method.yaml").write_text(METHOD.replace(old, new, 1))
    with pytest.raises(SpecError) as err:
        specs.get("method", "net")
    assert where in str(err.value) and "\n" not in str(err.value)


def test_user_given_method_names_stay_strict_while_variants_name_results():
    from harness.errors import UserError
    from harness.results import ResultKey

    with pytest.raises(UserError, match="use lower-case letters, digits and _"):
        specs.check_method_name("net@b8", "--name")
    key = ResultKey(
        method="net@b8",
        method_ref="code-sha256:" + "0" * 64,
        task="t",
        task_version=1,
        spec_hash="0" * 64,
        evaluator="knn/v1",
        data="real",
        seed=0,
    )
    assert key.relpath().parts[3] == "net@b8"


# --- include: code shared between method folders ------------------------------------------------------------------


def test_included_folders_are_code_of_the_method_and_of_its_variants(images_dir):
    spec = shared_code_method(images_dir)
    assert specs.get("method", "shared_user").include == ["../_shared"]
    for method in (spec, spec.variant("other")):
        assert method.code_folders == [images_dir / "shared_user", (images_dir / "_shared").resolve()]
    before = spec.code_hash
    (images_dir / "_shared" / "shared_width.py").write_text("WIDTH = 12\n")
    assert spec.code_hash != before and spec.variant("other").code_hash == spec.code_hash
    assert "shared_user" in [m.name for m in specs.load_all("method")] and "_shared" not in specs._catalog("method")


@pytest.mark.parametrize(
    "entry, why",
    [
        ("../_missing", "is not a folder"),
        ("../..", "is not a folder under the methods directory"),
        ("..", "is not a folder under the methods directory"),
        (".", "names the method's own folder or one inside it"),
        ("../_empty", "holds no Python modules (*.py)"),
        ("/tmp", "give a folder relative to the method's folder"),
    ],
)
def test_a_bad_include_is_one_line_naming_file_line_and_why(images_dir, entry, why):
    shared_code_method(images_dir)
    (images_dir / "_empty").mkdir()
    yaml_file = images_dir / "shared_user" / "method.yaml"
    yaml_file.write_text(
        yaml_file.read_text().replace("include: [../_shared]", f"include:\n  - ../_shared\n  - {entry}")
    )
    with pytest.raises(SpecError) as err:
        specs.get("method", "shared_user")
    assert re.search(rf"/method\.yaml:7: include: {re.escape(repr(entry))}: .*{re.escape(why)}", str(err.value))
    assert "\n" not in str(err.value)


# --- entrypoint: a file in the method's folder, which its code hash covers -----------------------------------------


@pytest.mark.parametrize(
    "entrypoint, why",
    [
        ("../common/adapter.py", "resolves to {common}, outside the method's folder {folder}"),
        ("link.py", "resolves to {common}, outside the method's folder {folder}"),  # a symlink to it
        ("{common}", "give a file relative to the method's folder"),
        ("missing.py", "{folder}/missing.py does not exist"),
        ("sub", "{folder}/sub is not a file"),
    ],
)
def test_an_entrypoint_outside_the_method_folder_or_missing_is_one_line_at_load(images_dir, entrypoint, why):
    """Before, `../common/adapter.py` loaded and ran, but the code hash covers the method's folder (and include:)
    only: editing the shared file reused the old results. A missing file failed the run as the method's fault."""
    folder, common = images_dir / "ep", images_dir / "common" / "adapter.py"
    (folder / "sub").mkdir(parents=True)
    common.parent.mkdir()
    common.write_text("")
    (folder / "link.py").symlink_to(common)
    body = "name: ep\nversion: '0'\ndescription: x\noutputs: [global]\nembed_dim: 4\n"
    (folder / "method.yaml").write_text(body + f"entrypoint: {entrypoint.format(common=common)}\n")
    with pytest.raises(SpecError) as err:
        specs.get("method", "ep")
    message = f"{folder}/method.yaml:6: entrypoint: {entrypoint.format(common=common)!r}: "
    assert str(err.value).startswith(message) and why.format(common=common, folder=folder) in str(err.value)
    assert "\n" not in str(err.value)
    (folder / "method.yaml").write_text(body + "entrypoint: missing.py\nimage: example.org/ep@sha256:" + "0" * 64)
    assert specs.get("method", "ep").image  # a pinned image brings its own entrypoint
