"""The in-process backend and `harness.evaluate`: the same metrics as the local backend, the same result files,
marked unsandboxed; task parameter overrides (`--set`) kept apart from the stock task."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import benchsdk
import harness
from harness.errors import MethodFailure
from harness.results import ResultStore, RunResult

from conftest import bench, cli, one_line_error, shared_code_method

REPO = Path(__file__).resolve().parent.parent
TASKS = ["flowers102_knn", "coco_r2", "clevrtex_objseg", "clevr_objseg"]  # global, dense, masks (PIL, torch resizing)


def pixels() -> benchsdk.Method:
    spec = importlib.util.spec_from_file_location("pixels_for_test", REPO / "images" / "pixels" / "adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Pixels()  # a module Python has not registered: its class's source identifies it


def only(root: Path) -> RunResult:
    [result] = ResultStore(root).all()
    return result


@pytest.mark.parametrize("task", TASKS)
def test_inprocess_backend_and_evaluate_score_exactly_as_the_local_backend(task, data_root, tmp_path, capsys):
    data = ["--data", "synthetic", "--data-root", str(data_root), "--workers", "0", "--no-progress"]
    for backend in ("local", "inprocess"):
        code, _, err = cli(
            capsys,
            "run",
            "--method",
            "pixels",
            "--task",
            task,
            "--backend",
            backend,
            *data,
            "--results",
            str(tmp_path / backend),
        )
        assert code == 0, err
    local, inprocess = only(tmp_path / "local"), only(tmp_path / "inprocess")
    api = harness.evaluate(pixels(), task, data_root=data_root, results=tmp_path / "api")
    assert local.metrics and inprocess.metrics == local.metrics and api.metrics == local.metrics
    assert inprocess.timings.images_sent == local.timings.images_sent == api.timings.images_sent
    assert local.provenance.sandboxed is False and inprocess.provenance.sandboxed is False
    assert inprocess.provenance.backend == api.provenance.backend == "inprocess"
    assert inprocess.key.method_ref == local.key.method_ref  # the same method folder, hashed alike
    assert api.key.method == "pixels" and api.provenance.method_info["embed_dim"] == 48
    assert only(tmp_path / "api") == api


class Overwrites(benchsdk.Method):
    name, version, outputs, embed_dim = "overwrites", "0", ("global",), 3

    def embed(self, images):
        images[:] = 0  # a method must not change the harness's arrays
        return np.zeros((len(images), 3), np.float32)


class Aliases(benchsdk.Method):
    """Returns the same buffer every time and changes it afterwards: the harness keeps its own copy."""

    name, version, outputs, embed_dim = "aliases", "0", ("global",), 3

    def setup(self, seed, task):
        self.buffer = np.zeros((0, 3), np.float32)

    def embed(self, images):
        self.buffer.fill(np.nan)  # spoils what it returned last time
        self.buffer = np.tile(images.mean(axis=(1, 2)).astype(np.float32), 1)
        return self.buffer


class Liar(benchsdk.Method):
    name, version, outputs, embed_dim = "liar", "0", ("global",), 3

    def embed(self, images):
        return np.full((len(images), 3), np.inf, np.float32)


def test_inprocess_replies_get_the_live_validation_and_images_are_read_only(data_root, tmp_path):
    failed = harness.evaluate(Overwrites(), "flowers102_knn", data_root=data_root, results=tmp_path)
    assert failed.status == "failed" and "read-only" in failed.error
    assert harness.evaluate(Aliases(), "flowers102_knn", data_root=data_root, results=tmp_path).status == "ok"
    nan = harness.evaluate(Liar(), "flowers102_knn", data_root=data_root, results=tmp_path)
    assert nan.status == "failed" and "NaN or Inf" in nan.error


def test_an_incomplete_info_fails_the_handshake(data_root, tmp_path):
    class NoDim(benchsdk.Method):
        name, version, outputs = "nodim", "0", ("global",)

    from harness.runners.inprocess import InProcessSession

    with pytest.raises(MethodFailure, match="global outputs need an integer embed_dim"):
        InProcessSession(NoDim()).handshake(0, {}, None)


def knn_run(data_root, results) -> list[str]:
    """`bench run` of pixels on flowers102_knn, procedural data, no worker processes."""
    return (
        f"run --method pixels --task flowers102_knn --data synthetic --data-root {data_root} --workers 0 "
        f"--results {results} --no-progress".split()
    )


def test_set_overrides_a_parameter_and_keeps_its_results_apart(data_root, tmp_path, capsys):
    assert cli(capsys, *knn_run(data_root, tmp_path))[0] == 0
    code, _, err = cli(capsys, *knn_run(data_root, tmp_path), "--set", "ks=[5]", "--set", "temperature=0.1")
    assert code == 0, err
    results = {r.key.task: r for r in ResultStore(tmp_path).all()}
    assert set(results) == {"flowers102_knn", "flowers102_knn+ks=[5]+temperature=0.1"}
    changed = results["flowers102_knn+ks=[5]+temperature=0.1"]
    assert changed.provenance.task_overrides == {"ks": [5], "temperature": 0.1}
    assert changed.provenance.task_params["ks"] == [5] and changed.provenance.task_params["temperature"] == 0.1
    assert set(changed.details["per_k"]) == {"5"}
    assert changed.provenance.task_spec_hash != results["flowers102_knn"].provenance.task_spec_hash


@pytest.mark.parametrize(
    "pair, message",
    [
        ("kk=5", "--set kk=5: Extra inputs are not permitted (task flowers102_knn, protocol knn)"),
        ("ks=[0]", "--set ks.0: Input should be greater than 0"),
        ("temperature=warm", "--set temperature=warm: Input should be a valid number"),
        ("temperature", "--set 'temperature': expected NAME=VALUE"),
    ],
)
def test_a_bad_override_is_one_line_and_writes_nothing(pair, message, data_root, tmp_path):
    line = one_line_error(bench(*knn_run(data_root, tmp_path / "r"), "--set", pair))
    assert line.startswith(f"bench: error: {message}"), line
    assert not (tmp_path / "r").exists()


def test_the_loaded_adapter_imports_from_its_included_folders_and_they_key_its_results(tmp_path, monkeypatch):
    import sys

    from harness.runners.inprocess import InProcessRunner, load_adapter

    monkeypatch.delitem(sys.modules, "shared_width", raising=False)
    spec = shared_code_method(tmp_path, width=7)
    path = list(sys.path)
    assert load_adapter(spec).embed_dim == 7 and sys.path == path  # on sys.path only while the adapter loads
    sys.modules.pop("shared_width")
    before = InProcessRunner().prepare(spec)
    (tmp_path / "_shared" / "shared_width.py").write_text("WIDTH = 12\n")
    assert before != InProcessRunner().prepare(spec) == "code-sha256:" + spec.code_hash


def test_an_adapter_that_defines_a_dataclass_loads(tmp_path):
    """The module is in sys.modules while it executes, as for an import (dataclasses look their module up there)."""
    from harness.runners.inprocess import load_adapter

    folder = tmp_path / "dc"
    folder.mkdir()
    (folder / "adapter.py").write_text(
        "from __future__ import annotations\n\nfrom dataclasses import dataclass\n\nimport numpy as np\n\nfrom benchsdk import Method\n\n\n"
        "@dataclass(frozen=True)\nclass Arch:\n    dim: int\n\n\nclass Dc(Method):\n    name, version = 'dc', '0'\n"
        "    outputs, embed_dim = ('global',), Arch(3).dim\n\n    def embed(self, images):\n"
        "        return np.zeros((len(images), 3), np.float32)\n"
    )
    (folder / "method.yaml").write_text("name: dc\nversion: '0'\ndescription: x\noutputs: [global]\n")
    assert load_adapter(harness.specs.load_spec(harness.specs.MethodSpec, folder / "method.yaml")).embed_dim == 3


def test_an_object_without_its_weights_is_marked_random_init(data_root, tmp_path):
    class Unweighted(Liar):
        name = "unweighted"

        def info(self):
            return {**super().info(), "weights": "random-init"}

        def embed(self, images):
            return images.mean(axis=(1, 2)).astype(np.float32)

    result = harness.evaluate(Unweighted(), "flowers102_knn", data_root=data_root, results=tmp_path)
    assert result.status == "ok" and result.provenance.weights == "random-init"
    assert result.key.method_ref.endswith("+weights:random-init")


class Wider(benchsdk.Method):
    """Declares 48 features and returns 64, every time: only the declared width can catch it (before, it scored)."""

    name, version, outputs, embed_dim = "wider", "0", ("global",), 48

    def embed(self, images):
        return np.tile(images.mean(axis=(1, 2)).astype(np.float32), (1, 64 // 3 + 1))[:, :64]


def test_features_of_another_width_than_the_method_declares_fail_naming_the_width(data_root, tmp_path):
    result = harness.evaluate(Wider(), "flowers102_knn", data_root=data_root, results=tmp_path)
    assert result.status == "failed" and result.error.endswith(
        "features has shape (32, 64), expected (32, 48): 64 features wide, but the method declares embed_dim 48"
    )
