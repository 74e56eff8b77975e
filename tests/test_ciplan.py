"""`bench ci plan`: which cells the GPU regression workflow runs for a change set (harness/ciplan.py's rules)."""

from __future__ import annotations

import json
import os

from harness import specs

from conftest import REPO, cli

VIT_USERS = {
    "dino",
    "dino@vitb16",
    "dinov2",
    "dinov2@vitb14",
    "dinov2@vits14_reg",
    "dinov2@vitb14_reg",
    "fungi",
    "neco",
    "neco@vitb14",
    "procedural_dino",
    "procedural_dino@vitt16",
}
OBJSEG_MODELS = {"slot_attention", "monet", "genesisv2", "iodine", "emorl", "spair", "dti_sprites", "gnm", "space"}


def plan(capsys, *changed: str) -> dict:
    code, out, err = cli(capsys, "ci", "plan", "--json", "--changed", *changed)
    assert code == 0, err
    return json.loads(out)


def cells(found: dict) -> set[tuple]:
    return {(c["method"], c["task"], tuple(c["seeds"]), c["data"]) for c in found["cells"]}


def methods(found: dict) -> set[str]:
    return {c["method"] for c in found["cells"]}


def test_a_method_change_runs_its_paper_suite_else_the_reference_set(capsys):
    fungi = specs.get("suite", "fungi")
    assert cells(plan(capsys, "images/fungi/adapter.py")) == {("fungi", t, (0,), "real") for t in fungi.tasks}
    smoke = specs.get("suite", "smoke")
    found = plan(capsys, "images/pixels/adapter.py", "images/pixels/method.yaml")  # one method, its cells once
    assert cells(found) == {("pixels", t, (0,), "synthetic") for t in smoke.tasks}
    assert found["changes"][0] == {
        "file": "images/pixels/adapter.py",
        "selects": "reference set: suite smoke with pixels",
    }
    neco = plan(capsys, "images/neco/adapter.py")  # a method and its variants
    assert methods(neco) == {"neco", "neco@vitb14"} and {c["data"] for c in neco["cells"]} == {"real"}


def test_a_suite_naming_a_method_runs_just_the_forms_it_names(tmp_path, capsys, monkeypatch):
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "mine.yaml").write_text(
        "name: mine\ndescription: x\ntasks: [flowers102_knn, coco_r2]\nmethods: [dino@vitb16, pixels]\nseeds: [0, 1]\n"
    )
    monkeypatch.setenv("BENCH_BENCHMARKS", f"{tmp_path}{os.pathsep}{REPO / 'benchmarks'}")
    assert cells(plan(capsys, "images/dino/adapter.py")) == {
        ("dino@vitb16", "flowers102_knn", (0, 1), "real"),
        ("dino@vitb16", "coco_r2", (0, 1), "real"),
    }


def test_an_included_folder_runs_every_method_that_includes_it(capsys):
    assert methods(plan(capsys, "images/_vit/vit_backbone.py")) == VIT_USERS
    assert methods(plan(capsys, "images/_objseg/trainer.py")) == OBJSEG_MODELS
    assert methods(plan(capsys, "images/_base/Dockerfile")) == VIT_USERS | OBJSEG_MODELS | {"pixels", "random_vit"}


def test_a_task_change_runs_that_task_and_its_variants_for_every_method_that_can(capsys):
    found = plan(capsys, "benchmarks/tasks/voc_hummingbird.yaml")
    assert {c["task"] for c in found["cells"]} == {
        "voc_hummingbird",
        "voc_hummingbird@m1024000",
        "voc_hummingbird@m10240000",
    }
    assert methods(found) == VIT_USERS | {"pixels", "random_vit"}
    assert {(tuple(c["seeds"]), c["data"]) for c in found["cells"]} == {((0,), "real")}
    assert "fungi" not in methods(plan(capsys, "benchmarks/tasks/coco_r2.yaml"))  # its fit stage: no coco_r2 yet


def test_a_harness_change_runs_the_reference_set(capsys):
    smoke = specs.get("suite", "smoke")
    expected = {(m, t, (0,), "synthetic") for m in specs.baseline_methods() for t in smoke.tasks}
    assert cells(plan(capsys, "harness/protocols/knn.py")) == expected
    assert cells(plan(capsys, "benchsdk/__init__.py", "pyproject.toml")) == expected
    assert cells(plan(capsys, "leaderboard/baselines/smoke.json")) == expected


def test_docs_tests_and_ci_files_run_nothing(capsys):
    found = plan(
        capsys, "README.md", "docs/protocols.md", "images/CONTRACT.md", "tests/test_cli.py", "Makefile", ".ci/run"
    )
    assert found["cells"] == [] and len(found["changes"]) == 6
    assert plan(capsys, "benchmarks/tasks/removed.yaml")["changes"][0]["selects"] == "task removed: nothing"
    assert plan(capsys)["cells"] == []


def test_changes_add_up_and_absolute_paths_are_read_relative_to_the_repo(capsys):
    found = plan(capsys, str(REPO / "images" / "fungi" / "adapter.py"), "benchmarks/tasks/coco_r2.yaml")
    assert methods(found) == VIT_USERS | {"pixels", "random_vit"}  # fungi from its suite, the rest from coco_r2
    code, out, _ = cli(capsys, "ci", "plan", "--changed", "images/fungi/adapter.py")
    assert code == 0 and out.split()[:4] == ["method", "task", "seeds", "data"]
    assert "images/fungi/adapter.py: suite fungi with fungi" in out
