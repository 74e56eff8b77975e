"""The ClevrTex models' house (images/_objseg) and the object-segmentation fit stage: the trainer's schedules, batches
and resumption, the fit recipe travelling from method.yaml through setup into provenance, the adapter's fit /
weights / segment paths, and a model trained end to end by the local backend on procedural ClevrTex."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import benchsdk
import harness
from harness import specs
from harness.data import open_dataset
from harness.errors import DataError, SpecError
from harness.protocols.objseg import load_objseg_sample
from harness.results import ResultStore
from harness.run import RunOptions, run_cell

REPO = Path(__file__).resolve().parents[1]
for folder in ("_objseg", "monet"):
    sys.path.insert(0, str(REPO / "images" / folder))
import monet  # noqa: E402
import trainer  # noqa: E402


def _adapter_module(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_adapter", REPO / "images" / name / "adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MONetMethod = _adapter_module("monet").MONetMethod

MICRO_MODEL = {"image_size": 16, "slots": 3, "unet_blocks": 3, "base_channels": 4, "unet_mlp": 8,
               "encoder_channels": [4, 4], "encoder_hidden": 8, "decoder_channels": 4}  # fmt: skip
MICRO = {"optimizer": "rmsprop", "lr": 1e-3, "batch_size": 4, "model": MICRO_MODEL}


def micro_spec(name: str = "monet@tiny", steps: int = 3) -> specs.MethodSpec:
    """A ClevrTex method whose tiny recipe is a 16x16 MONet trained for `steps` steps (seconds, for tests)."""
    m = specs.get("method", name)
    recipes = dict(m.recipes, tiny=m.recipes["tiny"].model_copy(update={"steps": steps, "params": MICRO}))
    return m.model_copy(update={"recipes": recipes})


def test_lr_schedules_are_the_references():
    decay = trainer.lr_lambda("decay(10000,100000,0.5)")  # base_experiment.py: linear warm-up, then x 0.5^(s/1e5)
    assert decay(0) == 0 and decay(5000) == pytest.approx(0.5 * 0.5**0.05) and decay(200000) == pytest.approx(0.25)
    assert trainer.lr_lambda("decay(10, 20, 0.1)")(20) == pytest.approx(0.1)
    warm = trainer.lr_lambda("warm(30)")
    assert warm(15) == 0.5 and warm(30) == warm(10**6) == 1 and trainer.lr_lambda("const")(7) == 1
    for bad in ("plateau", "decay(10)", "warm(3,4)", "cosine(1,2)"):
        with pytest.raises(ValueError, match="schedule"):
            trainer.lr_lambda(bad)


def test_recipe_rejects_unknown_params_and_optimisers():
    with pytest.raises(ValueError, match="unknown recipe params: epochs"):
        trainer.Recipe.of({"epochs": 3})
    with pytest.raises(ValueError, match="optimizer 'sgd'"):
        trainer.Recipe.of({"optimizer": "sgd"})
    with pytest.raises(ValueError, match="unknown MONet params: width"):
        monet.build({"width": 3})


def small_trainer(seed: int = 0, n: int = 6) -> trainer.Trainer:
    images = np.random.default_rng(5).integers(0, 256, (n, 128, 128, 3), dtype=np.uint8)
    return trainer.Trainer(monet.build, trainer.Recipe.of(MICRO), images, seed, torch.device("cpu"))


def test_each_epoch_visits_every_image_once_in_a_seeded_order():
    t = small_trainer()
    stream = np.concatenate([t.batch_indices(s) for s in range(6)])  # 24 positions = 4 epochs of 6 images
    epochs = stream.reshape(4, 6)
    assert all(sorted(e) == list(range(6)) for e in epochs) and len({tuple(e) for e in epochs}) > 1
    assert np.array_equal(stream, np.concatenate([small_trainer().batch_indices(s) for s in range(6)]))
    assert not np.array_equal(stream, np.concatenate([small_trainer(seed=1).batch_indices(s) for s in range(6)]))


def test_a_resumed_training_equals_an_uninterrupted_one():
    straight = small_trainer()
    for _ in range(3):
        straight.step()
    first = small_trainer()
    first.step(), first.step()
    state = first.state_dict()
    resumed = small_trainer(seed=0)
    resumed.load_state_dict(state)
    resumed.step()
    assert resumed.step_index == 3 and resumed.schedulers[0].last_epoch == 3
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class MaskRecorder(benchsdk.Method):
    """Keeps what its fit stage got; one mask slot per image half."""

    name, version, outputs, fit_stage = "mask_recorder", "0", ("masks",), True

    def __init__(self):
        self.fit_batches = []

    def fit(self, batches):
        self.fit_batches.extend(batches)

    def segment(self, images):
        n, h, w, _ = images.shape
        masks = np.zeros((n, 2, h, w), np.float32)
        masks[:, 0, : h // 2], masks[:, 1, h // 2 :] = 1, 1
        return masks


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_objseg_fit_stage_gets_the_training_images_preprocessed_shuffled_and_nothing_else(data_root, tmp_path):
    method = MaskRecorder()
    result = harness.evaluate(method, "clevrtex_objseg", data_root=data_root, results=tmp_path)
    assert result.status == "ok" and result.timings.fit_s > 0
    train = open_dataset("clevrtex_full", data_root, synthetic=True).split("train")
    sent = [x for b in method.fit_batches for x in b.images]
    expected = [digest(load_objseg_sample(train, 0.8, 128, "pil", i)[0]) for i in range(len(train))]
    assert sorted(map(digest, sent)) == sorted(expected) and list(map(digest, sent)) != expected
    assert all(b.labels is None and b.patches is None for b in method.fit_batches)
    assert sent[0].shape == (128, 128, 3)


def test_a_dataset_without_a_training_split_has_nothing_to_fit_on(data_root, tmp_path):
    with pytest.raises(DataError, match="unknown split 'train'.*no images to fit on .*bench run --weights"):
        harness.evaluate(MaskRecorder(), specs.get("task", "clevrtex_objseg@outd"), data_root=data_root,
                         results=tmp_path)  # fmt: skip
    assert not list(tmp_path.rglob("*.json"))


def write_method(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "objy"
    folder.mkdir()
    (folder / "adapter.py").write_text("")
    (folder / "method.yaml").write_text(body)
    return folder / "method.yaml"


RECIPES = "recipes:\n  tiny: {description: t, steps: 2}\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "fit: true\nfit_recipe: big\n" + RECIPES,
            r"method.yaml:6: fit_recipe: 'big': no recipe 'big' \(recipes: tiny\)",
        ),
        ("fit_recipe: tiny\n" + RECIPES, r"method.yaml:5: fit_recipe: 'tiny': the method has no fit stage"),
        ("fit: true\nvariants:\n  v: {fit_recipe: nope}\n" + RECIPES, r"method.yaml:7: fit_recipe: 'nope': no recipe"),
    ],
)
def test_a_fit_recipe_must_name_a_recipe_of_a_method_with_a_fit_stage(tmp_path, body, message):
    path = write_method(tmp_path, "name: objy\nversion: '1'\ndescription: d\noutputs: [masks]\n" + body)
    with pytest.raises(SpecError, match=message):
        specs.load_spec(specs.MethodSpec, path)


def test_the_fit_recipe_is_sent_without_weights_and_not_with_them(tmp_path):
    tiny = micro_spec()
    assert tiny.fit_recipe_payload == {
        "name": "tiny", "steps": 3, "params": MICRO, "hash": tiny.recipes["tiny"].hash,
    }  # fmt: skip
    assert specs.get("method", "monet").fit_recipe_payload["steps"] == 1_000_000  # the base form: the paper's
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    assert tiny.model_copy(update={"weights": str(weights)}).fit_recipe_payload is None


def fitted(seed: int = 0, steps: int = 2) -> MONetMethod:
    method = MONetMethod()
    method.fit_recipe = {"name": "tiny", "steps": steps, "params": MICRO, "hash": "-"}
    method.setup(seed, {})
    images = np.random.default_rng(2).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)
    method.fit(iter([benchsdk.FitBatch(images[:4]), benchsdk.FitBatch(images[4:])]))
    return method


def test_segment_gives_128px_masks_and_canvas_and_is_reproducible_from_the_seed():
    method, images = fitted(), np.random.default_rng(3).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    masks, canvas = method.segment(images)
    assert masks.shape == (2, 3, 128, 128) and canvas.shape == (2, 3, 128, 128)  # trained at 16, resized
    np.testing.assert_allclose(masks.sum(1), 1, atol=1e-5)
    assert canvas.min() >= 0 and canvas.max() <= 1 and masks.dtype == canvas.dtype == np.float32
    again = method.segment(images)  # each request re-seeds its draws: same images, same reply
    np.testing.assert_array_equal(again[1], canvas)
    np.testing.assert_array_equal(fitted().segment(images)[1], canvas)  # and a new session of the same seed
    assert not np.array_equal(fitted(seed=1).segment(images)[1], canvas)
    assert method.info()["masks_have_background"] is True and method.info()["fit"] is True


def test_exported_weights_are_loaded_instead_of_trained(tmp_path, monkeypatch):
    method, images = fitted(), np.random.default_rng(3).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    method.export_weights(str(tmp_path / "monet.pt"))
    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "monet.pt"))
    loaded = MONetMethod()
    loaded.setup(0, {})
    loaded.fit(iter(()))  # weights given: it trains nothing (an empty stream would fail a fit)
    for a, b in zip(loaded.segment(images), method.segment(images)):
        np.testing.assert_array_equal(a, b)
    torch.save({"model": "emorl", "params": {}, "state_dict": {}}, tmp_path / "other.pt")
    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="other.pt: not monet weights"):
        MONetMethod().setup(0, {})


def test_without_weights_or_a_fit_recipe_setup_says_what_is_missing(monkeypatch):
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match=r"monet has neither weights \(\$BENCH_WEIGHTS\) nor a fit recipe"):
        MONetMethod().setup(0, {})


def test_a_model_trained_in_the_fit_stage_by_the_local_backend(data_root, tmp_path):
    """monet@tiny through a real subprocess: setup carries the recipe, the fit stage trains it, the result says so."""
    opts = RunOptions(synthetic=True, data_root=data_root, progress=False, num_workers=0, cache=False)
    result = run_cell(micro_spec(), specs.get("task", "clevrtex_objseg"), 0, opts, ResultStore(tmp_path))
    assert result.status == "ok", result.error
    assert result.provenance.fit_recipe == {"name": "tiny", "steps": 3, "hash": micro_spec().recipes["tiny"].hash}
    assert "trained from scratch in its fit stage: recipe 'tiny', 3 steps" in result.notes
    assert result.details["mask_slots"] == [3] and result.timings.fit_s > 0 and "mse" in result.metrics
