"""Fit stages in the protocols: a method whose method.yaml says `fit: true` gets the task's training split, with the
task's own preprocessing, before any evaluation request (images/CONTRACT.md, "Fit stages"); labels and HummingBird's
label-driven patch selections only where the task's `fit_labels` allows; the stage is timed apart (fit_s)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import benchsdk
import harness
from harness import specs
from harness.contract import MethodInfo
from harness.data import open_dataset
from harness.errors import UserError
from harness.protocols.base import RunContext
from harness.protocols.common import load_knn_image
from harness.results import ResultStore
from harness.run import RunOptions, run_cell
from harness.runners.local import LocalRunner

from conftest import method_spec, session_of

SMALL_HBIRD = {"input_size": 64, "memory_size": 240, "aug_epochs": 2, "k": 5}  # 4 patches of 16 per image kept


class Recorder(benchsdk.Method):
    """Keeps what its fit stage got; its features are a hash of each image, so scoring works but says nothing."""

    name, version, outputs, patch_size, embed_dim, fit_stage = "recorder", "0", ("global", "dense"), 16, 8, True

    def __init__(self, stop_after: int | None = None):
        self.stop_after, self.fit_batches, self.embedded_before_fit = stop_after, [], False

    def fit(self, batches):
        for batch in batches:
            self.fit_batches.append(batch)
            if len(self.fit_batches) == self.stop_after:
                return

    def embed(self, images):
        self.embedded_before_fit |= not self.fit_batches
        return np.random.default_rng(0).random((len(images), 8), np.float32)

    def embed_dense(self, images):
        self.embedded_before_fit |= not self.fit_batches
        n, h, w, _ = images.shape
        return np.random.default_rng(0).random((n, h // 16, w // 16, 8), np.float32)


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def with_fit_labels(task: str, allowed: bool) -> specs.TaskSpec:
    return specs.get("task", task).model_copy(update={"fit_labels": allowed})


@pytest.mark.parametrize("allowed", [False, True])
def test_knn_fit_gets_the_whole_training_split_shuffled_and_labels_only_when_allowed(allowed, data_root, tmp_path):
    method = Recorder()
    result = harness.evaluate(method, with_fit_labels("flowers102_knn", allowed), data_root=data_root, results=tmp_path)
    assert result.status == "ok" and not method.embedded_before_fit
    train = open_dataset("flowers102", data_root, synthetic=True).split("train")
    sent = np.concatenate([b.images for b in method.fit_batches])
    expected = {digest(load_knn_image(train, i)[0]): train.labels[i] for i in range(len(train))}
    assert sorted(map(digest, sent)) == sorted(expected)  # every training image once, preprocessed as for kNN
    assert [digest(x) for x in sent] != list(expected)  # in a seeded random order, not the split's
    assert all(b.patches is None for b in method.fit_batches)
    if allowed:
        labels = np.concatenate([b.labels for b in method.fit_batches])
        assert labels.tolist() == [expected[digest(x)] for x in sent]
    else:
        assert all(b.labels is None for b in method.fit_batches)
    assert result.timings.fit_s > 0 and result.timings.images_sent == len(sent) + len(train) + 50  # + train, val


def test_knn_fit_order_depends_on_the_seed_only(data_root, tmp_path):
    orders = []
    for seed, run in ((0, "a"), (0, "b"), (1, "c")):
        method = Recorder()
        harness.evaluate(method, "flowers102_knn", seed=seed, data_root=data_root, results=tmp_path / run)
        orders.append([digest(x) for b in method.fit_batches for x in b.images])
    assert orders[0] == orders[1] != orders[2]


def test_hummingbird_fit_gets_the_memory_images_and_the_patches_it_keeps(data_root, tmp_path):
    task = with_fit_labels("voc_hummingbird", True).with_overrides(SMALL_HBIRD)
    method = Recorder()
    result = harness.evaluate(method, task, data_root=data_root, results=tmp_path)
    assert result.status == "ok" and not method.embedded_before_fit

    protocol = task.make_protocol()
    ctx = RunContext(session=session_of(Recorder()), seed=0, batch_size=task.batch_size, num_workers=0, progress=False)
    data = open_dataset("voc", data_root, synthetic=True)
    memory = list(protocol.memory_batches(protocol.plan(data, ctx), ctx))
    assert len(method.fit_batches) == len(memory) and result.details["memory_rows"] == 240
    for got, (images_, _, keep) in zip(method.fit_batches, memory):
        np.testing.assert_array_equal(got.images, images_)
        np.testing.assert_array_equal(got.patches, keep)  # the memory's own label-driven selection
        assert got.patches.dtype == np.int64 and got.patches.shape == (len(images_), 2) and got.labels is None


def test_hummingbird_fit_without_fit_labels_gets_no_patch_selection(data_root, tmp_path):
    method = Recorder()
    task = with_fit_labels("voc_hummingbird", False).with_overrides(SMALL_HBIRD)
    assert harness.evaluate(method, task, data_root=data_root, results=tmp_path).status == "ok"
    assert method.fit_batches and all(b.patches is None and b.labels is None for b in method.fit_batches)


def test_unbounded_memory_sends_every_patch(data_root, tmp_path):
    method = Recorder()
    task = with_fit_labels("voc_hummingbird", True).with_overrides({**SMALL_HBIRD, "memory_size": None})
    assert harness.evaluate(method, task, data_root=data_root, results=tmp_path).status == "ok"
    np.testing.assert_array_equal(method.fit_batches[0].patches, np.tile(np.arange(16), (8, 1)))


def test_a_method_that_has_enough_stops_the_stream(data_root, tmp_path):
    method = Recorder(stop_after=1)
    result = harness.evaluate(method, "flowers102_knn", data_root=data_root, results=tmp_path)
    assert result.status == "ok" and len(method.fit_batches) == 1
    assert result.timings.images_sent == 32 + 100 + 50  # one fit batch, then train and val


def test_a_method_without_a_fit_stage_gets_none(data_root, tmp_path):
    class NoFit(Recorder):
        fit_stage = False

    method = NoFit()
    assert harness.evaluate(method, "flowers102_knn", data_root=data_root, results=tmp_path).status == "ok"
    assert method.fit_batches == [] and method.embedded_before_fit


def test_a_fit_method_on_a_protocol_without_a_fit_stage_is_one_clear_error(data_root, tmp_path):
    with pytest.raises(UserError, match="has a fit stage, and task coco_r2's protocol 'coco_r2' has none yet"):
        harness.evaluate(Recorder(), "coco_r2", data_root=data_root, results=tmp_path)
    assert not list(tmp_path.rglob("*.json"))


def test_method_yaml_fit_without_a_fit_stage_in_the_adapter_fails_the_run(data_root, tmp_path):
    spec = method_spec("chatty").model_copy(update={"fit": True})
    opts = RunOptions(synthetic=True, data_root=data_root, progress=False, num_workers=0)
    result = run_cell(spec, specs.get("task", "flowers102_knn"), 0, opts, ResultStore(tmp_path), LocalRunner())
    assert result.status == "failed" and "declares fit: true but the method's info has no fit stage" in result.error


def test_fitter_over_the_wire_sees_its_training_images(data_root, tmp_path):
    """The local backend (a real subprocess and the SDK's fit loop): the fitter's features are the mean colour of
    what its fit stage got, so its kNN run is scored on the training split's mean."""
    opts = RunOptions(synthetic=True, data_root=data_root, progress=False, num_workers=0)
    result = run_cell(method_spec("fitter"), specs.get("task", "flowers102_knn"), 0, opts, ResultStore(tmp_path))
    assert result.status == "ok" and result.timings.fit_s > 0
    assert result.provenance.method_info["fit"] is True


def test_info_declares_the_fit_stage_and_a_global_width():
    class Wide(Recorder):
        global_dim = 24

    info, problem = MethodInfo.parse(dict(Wide().info(), protocol=1))
    assert problem is None and info.fit is True and info.global_dim == 24
    assert "global dim 24" in info.summary() and "fit stage" in info.summary()
    assert MethodInfo.parse(dict(benchsdk.Method().info(), outputs=["global"], embed_dim=3))[0].fit is False
