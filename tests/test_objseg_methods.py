"""Every ClevrTex model folder (images/<model>/ on images/_objseg): its method.yaml (a fit stage training the paper
recipe, a `tiny` variant training the tiny one, recipes the trainer accepts, the model's defaults unchanged by the
paper recipe), its info (the background flag of the official notebook), and a fit of its tiny recipe cut to two steps
followed by segment: masks (N, K, 128, 128) and reconstructions in [0, 1] (masks partitioning the image where the
model has a background slot, objects only otherwise)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import benchsdk
from harness import specs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "images" / "_objseg"))
import trainer  # noqa: E402

BACKGROUND = {"slot_attention": True, "monet": True, "genesisv2": True, "iodine": True, "emorl": True, "spair": False,
              "dti_sprites": True, "gnm": False, "space": False}  # fmt: skip


def adapter_class(name: str) -> type[benchsdk.Method]:
    sys.path.insert(0, str(REPO / "images" / name))
    spec = importlib.util.spec_from_file_location(f"{name}_adapter", REPO / "images" / name / "adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__)


def test_every_objseg_method_folder_is_listed_here():
    folders = {p.parent.name for p in (REPO / "images").glob("*/method.yaml") if "_objseg" in p.read_text()}
    assert folders == set(BACKGROUND)


@pytest.mark.parametrize("name", sorted(BACKGROUND))
def test_method_yaml_fits_the_paper_recipe_and_tiny_the_tiny_one(name):
    method, tiny = specs.get("method", name), specs.get("method", f"{name}@tiny")
    assert method.fit and method.outputs == ["masks"] and method.fit_recipe == "paper" and tiny.fit_recipe == "tiny"
    paper = trainer.Recipe.of(method.recipes["paper"].params)
    assert paper.model == {} and method.recipes["paper"].steps >= 100_000  # the reference's architecture and run
    trainer.Recipe.of(method.recipes["tiny"].params)
    cls = adapter_class(name)
    assert cls.name == name and cls().info()["masks_have_background"] is BACKGROUND[name]


@pytest.mark.parametrize("name", sorted(BACKGROUND))
def test_a_two_step_tiny_fit_segments_128px_crops(name):
    method = adapter_class(name)()
    recipe = specs.get("method", f"{name}@tiny").fit_recipe_payload
    method.fit_recipe = {**recipe, "steps": 2}
    method.setup(0, {})
    images = np.random.default_rng(1).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)
    method.fit(iter([benchsdk.FitBatch(images[:3]), benchsdk.FitBatch(images[3:])]))
    masks, canvas = method.segment(images[:2])
    assert masks.shape[0] == 2 and masks.shape[2:] == (128, 128) and canvas.shape == (2, 3, 128, 128)
    assert np.isfinite(masks).all() and canvas.min() >= 0 and canvas.max() <= 1
    assert masks.min() >= -1e-6 and masks.max() <= 1 + 1e-6
    if BACKGROUND[name] and name != "dti_sprites":  # its occlusion-composed masks sum to <= 1 (as the reference's)
        np.testing.assert_allclose(masks.sum(1), 1, atol=1e-4)
    assert masks.sum(1).max() <= 1 + 1e-4 or not BACKGROUND[name]


def test_a_model_with_its_own_schedule_and_data_init_gets_both_from_the_trainer():
    """DTI-Sprites (schedule: model): per-group factors from lr_factors, backgrounds = the mean training image."""
    import torch

    sys.path.insert(0, str(REPO / "images" / "dti_sprites"))
    import dti_sprites

    params = specs.get("method", "dti_sprites@tiny").recipes["tiny"].params
    images = np.random.default_rng(4).integers(0, 256, (5, 128, 128, 3), dtype=np.uint8)
    t = trainer.Trainer(dti_sprites.build, trainer.Recipe.of(params), images, 0, torch.device("cpu"))
    expected = trainer.to_float(images, 64, torch.device("cpu")).mean(0)
    torch.testing.assert_close(t.model.bkg_params.data[0], expected)
    assert bool(t.model.bkg_from_data)
    for _ in range(3):
        t.step()
    factors = t.model.lr_factors(3)
    assert [g["lr"] for g in t.optimizers[0].param_groups] == pytest.approx([1e-3 * f for f in factors])
    assert factors[0] == pytest.approx(0.1)  # 3 of the 30 warm-up steps


def test_validate_takes_a_method_name_or_an_image_reference():
    from harness.cli import _method_named

    assert _method_named("monet@tiny").fit_recipe == "tiny" and _method_named("monet").fit_recipe == "paper"
    assert _method_named("127.0.0.1:5000/vrbench/monet:v1") is None and _method_named("sha256:" + "0" * 64) is None


@pytest.mark.slow
def test_a_clevrtex_model_passes_validate_in_the_docker_sandbox(docker_ready, data_root):
    """`bench validate monet@tiny` (its tiny recipe cut to 3 steps): built on the torch runtime, fitted in the
    sandbox on both object-segmentation tasks, deterministic across two sessions of seed 0."""
    from harness.validate import validate

    method = specs.get("method", "monet@tiny")
    method = method.model_copy(
        update={"recipes": dict(method.recipes, tiny=method.recipes["tiny"].model_copy(update={"steps": 3}))}
    )
    _, info, checks = validate("monet@tiny", data_root, 600, ["clevrtex_objseg", "clevr_objseg"], method)
    by_name = {c.name: c for c in checks}
    assert all(c.ok is not False for c in checks), [(c.name, c.detail) for c in checks if c.ok is False]
    assert by_name["task clevrtex_objseg (procedural)"].ok and by_name["task clevr_objseg (procedural)"].ok
    assert by_name["determinism (seed 0, twice)"].detail == "equal outputs" and info.fit
