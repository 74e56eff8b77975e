"""The DINO, DINOv2 and NeCo adapters (images/dino, images/dinov2, images/neco) and the ViT backbone they share
(images/_vit/vit_backbone.py, their `include: [../_vit]`), without their official repositories.

The position-embedding formulas are checked against tests/fixtures/pos_embed_official.npz, which
`scripts/compare_backbones.py --write-fixture` computed with each official `interpolate_pos_encoding`; the whole
models are checked against the official code by scripts/compare_backbones.py itself. Checkpoints here are random
timm weights written in the official formats (DINO's keys are timm's; DINOv2 adds mask_token; NeCo adds its
projection head). The ViT-S variants only, on tiny inputs.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.runners.inprocess import adapter_module
from harness.specs import MethodSpec, load_all, load_spec

from conftest import REPO, images, session_of

FIXTURE = Path(__file__).parent / "fixtures" / "pos_embed_official.npz"


@functools.cache
def adapter(family: str):
    """images/<family>/adapter.py as a module, loaded as the in-process backend loads it (its folder and its
    method.yaml's included folders on sys.path)."""
    return adapter_module(load_spec(MethodSpec, REPO / "images" / family / "method.yaml"))


def vit():
    """images/_vit/vit_backbone.py, as the adapters import it."""
    adapter("dino")
    return sys.modules["vit_backbone"]


@pytest.fixture(autouse=True)
def no_bench_env(monkeypatch):
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    monkeypatch.delenv("BENCH_VARIANT", raising=False)
    torch.set_num_threads(1)


@pytest.mark.parametrize("family", ["dino", "dinov2", "neco"])
def test_each_adapter_subclasses_the_shared_backbone_which_is_part_of_its_code_and_image(family):
    """One ViTBackbone (images/_vit, no method of its own), in each family's code hash, image and import path; the
    in-process backend finds the family's own class only."""
    from harness.runners.images import generated_dockerfile
    from harness.runners.inprocess import load_adapter

    spec = load_spec(MethodSpec, REPO / "images" / family / "method.yaml")
    assert spec.code_folders == [REPO / "images" / family, REPO / "images" / "_vit"] and spec.include == ["../_vit"]
    assert all(spec.variant(v).code_folders == spec.code_folders for v in spec.variants)
    assert generated_dockerfile(spec).splitlines()[-2:] == [
        "COPY images/_vit/*.py /method/",
        f"COPY images/{family}/*.py /method/",
    ]
    method = load_adapter(spec)
    assert (
        isinstance(method, vit().ViTBackbone)
        and type(method).__name__ == {"dino": "Dino", "dinov2": "Dinov2", "neco": "Neco"}[family]
    )
    assert "_vit" not in [m.name for m in load_all("method")]


def test_read_state_dict_builds_only_the_classes_it_is_allowed(tmp_path):
    """weights_only: a full DINO checkpoint's argparse.Namespace only where the adapter allows it (DINO's load)."""
    torch.save({"args": argparse.Namespace(arch="vit_small"), "w": torch.ones(1)}, tmp_path / "full.pth")
    with pytest.raises(ValueError, match="full.pth: cannot be read as a weights-only torch checkpoint"):
        vit().read_state_dict(str(tmp_path / "full.pth"))
    assert vit().read_state_dict(str(tmp_path / "full.pth"), allowed=(argparse.Namespace,))["args"].arch == "vit_small"


def test_check_keys_takes_exactly_the_expected_keys_and_the_allowed_extras():
    state = {"a": torch.zeros(2), "b": torch.zeros(3, 1), "head.w": torch.zeros(1)}
    taken = vit().check_keys(state, {"a": (2,), "b": (3, 1)}, "f.pth", "net", extra_prefixes=("head.",))
    assert list(taken) == ["a", "b"]
    with pytest.raises(ValueError, match=r"^f\.pth is not a net state dict: 1 unexpected keys \(head\.w\)\. The file"):
        vit().check_keys(state, {"a": (2,), "b": (3, 1)}, "f.pth", "net")


# --- position embeddings ------------------------------------------------------------------------------------------

# family's fixture key -> (adapter, patch, prefix of the input layout, offset, antialias)
FORMULAS = {
    "dino": ("dino", 16, 1, 0.1, False),
    "dinov2": ("dinov2", 14, 1, 0.1, False),
    "dinov2_reg": ("dinov2", 14, 1, 0.0, True),
    "neco": ("neco", 14, 1, 0.1, False),
}


@pytest.mark.parametrize("formula", sorted(FORMULAS))
def test_pos_embed_matches_the_official_interpolation(formula):
    family, patch, prefix, offset, antialias = FORMULAS[formula]
    fixture = np.load(FIXTURE)
    pos = torch.from_numpy(fixture["pos_embed"])
    for h0, w0 in fixture["sizes"]:
        expected = fixture[f"{formula}_{h0}x{w0}"]
        got = vit().interpolate_pos_embed(pos, h0 * patch, w0 * patch, patch, prefix, offset, antialias)
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6, err_msg=f"{formula} {h0}x{w0}")
        if formula == "dinov2_reg":  # the adapter's timm layout: no CLS position on the grid (folded into cls_token)
            grid = vit().interpolate_pos_embed(pos[:, 1:], h0 * patch, w0 * patch, patch, 0, 0.0, True)
            np.testing.assert_allclose(grid.numpy(), expected[:, 1:], rtol=0, atol=1e-6)


def test_timm_resampling_is_not_the_official_interpolation():
    """Why the adapters compute the grid themselves: timm's resampling (size-based, antialiased) differs."""
    from timm.layers import resample_abs_pos_embed

    fixture = np.load(FIXTURE)
    timm_grid = resample_abs_pos_embed(torch.from_numpy(fixture["pos_embed"]), new_size=(8, 8), num_prefix_tokens=1)
    assert np.abs(timm_grid.numpy() - fixture["dino_8x8"]).max() > 1e-2


# --- variants, random init, outputs -------------------------------------------------------------------------------


def test_variant_from_argument_or_environment(monkeypatch):
    dino, dinov2 = adapter("dino"), adapter("dinov2")
    assert (dino.Dino().variant, dino.Dino().embed_dim, dino.Dino().patch_size) == ("vits16", 384, 16)
    assert dino.Dino(variant="vitb16").embed_dim == 768
    monkeypatch.setenv("BENCH_VARIANT", "vitb14_reg")
    method = dinov2.Dinov2()
    assert (method.variant, method.embed_dim, method.arch.timm_name) == (
        "vitb14_reg",
        768,
        "vit_base_patch14_reg4_dinov2",
    )
    monkeypatch.setenv("BENCH_VARIANT", "")
    assert adapter("neco").Neco().variant == "vits14"
    with pytest.raises(ValueError, match="unknown variant 'vits8'; one of vits16, vitb16"):
        dino.Dino(variant="vits8")


@pytest.mark.parametrize("family", ["dino", "dinov2", "neco"])
def test_method_yaml_agrees_with_the_adapter(family):
    """method.yaml's variants (read as plain YAML: the harness's MethodSpec does not take them yet) are the
    adapter's, with its patch size, embed dim and download URL; the top level is the default variant."""
    import yaml

    spec = yaml.safe_load((REPO / "images" / family / "method.yaml").read_text())
    module = adapter(family)
    cls = getattr(module, {"dino": "Dino", "dinov2": "Dinov2", "neco": "Neco"}[family])
    # every architecture but the default, which the top level describes (one leaderboard row per architecture)
    assert list(spec["variants"]) == [v for v in module.VARIANTS if v != module.DEFAULT] and spec["runtime"] == "torch"
    for name, variant in spec["variants"].items():
        method = cls(variant=name)
        assert (variant["patch_size"], variant["embed_dim"]) == (method.patch_size, method.embed_dim), name
        assert variant["weights"]["url"] == method.arch.url and set(variant["weights"]) == {"file", "url", "sha256"}
    default = cls(variant=module.DEFAULT)
    assert (spec["patch_size"], spec["embed_dim"]) == (default.patch_size, default.embed_dim)
    assert spec["weights"]["url"] == default.arch.url
    assert spec["name"] == cls.name == family and str(spec["version"]) == cls.version


def test_random_init_is_seeded_and_said_in_info():
    dino = adapter("dino")
    x = images(n=2, h=32, w=48)
    a, b, c = dino.Dino(), dino.Dino(), dino.Dino()
    assert a.info()["weights"] == "random-init" and a.info()["variant"] == "vits16"
    a.setup(0, {}), b.setup(0, {}), c.setup(1, {})
    assert np.array_equal(a.embed(x), b.embed(x))
    assert not np.allclose(a.embed(x), c.embed(x))


@pytest.mark.parametrize(
    "family, variant, h, w, grid, dim",
    [("dino", "vits16", 32, 48, (2, 3), 384), ("dinov2", "vits14_reg", 28, 42, (2, 3), 384)],
)
def test_outputs_through_the_session(family, variant, h, w, grid, dim):
    """global (N, D) and dense (N, H/p, W/p, D), non-square, registers dropped, the replies validated live."""
    cls = {"dino": "Dino", "dinov2": "Dinov2"}[family]
    session = session_of(getattr(adapter(family), cls)(variant=variant))
    assert session.info.patch_size == h // grid[0] and session.info.embed_dim == dim
    x = images(n=2, h=h, w=w)
    g, d = session.embed(x), session.embed_dense(x)
    assert g.shape == (2, dim) and d.shape == (2, *grid, dim) and g.dtype == d.dtype == np.float32
    assert session.embed_dense(images(n=1, h=h * 2, w=w)).shape == (1, grid[0] * 2, grid[1], dim)  # a second size
    session.shutdown()


def test_inputs_off_the_patch_grid_are_refused():
    method = adapter("dino").Dino()
    method.setup(0, {})
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        method.embed(images(n=1, h=30, w=32))


# --- weights ------------------------------------------------------------------------------------------------------


def random_backbone(family: str, variant: str, seed: int):
    """A seeded random adapter model and its weights in the official format of `family`."""
    torch.manual_seed(seed)
    method = getattr(adapter(family), {"dino": "Dino", "dinov2": "Dinov2", "neco": "Neco"}[family])(variant=variant)
    method.weights = None  # a random init, whatever $BENCH_WEIGHTS says
    method.setup(seed, {})
    state = {k: v.clone() for k, v in method.model.state_dict().items()}
    if family != "dino":
        state["mask_token"] = torch.zeros(1, method.embed_dim)
    if family == "neco":
        for i, (n_in, n_out) in enumerate([(method.embed_dim, 32), (32, 32), (32, 16)]):
            state[f"projection_head.{2 * i}.weight"] = torch.randn(n_out, n_in)
            state[f"projection_head.{2 * i}.bias"] = torch.randn(n_out)
    return method, state


def loaded(family: str, variant: str, path: Path, monkeypatch):
    monkeypatch.setenv("BENCH_WEIGHTS", str(path))
    method = getattr(adapter(family), {"dino": "Dino", "dinov2": "Dinov2", "neco": "Neco"}[family])(variant=variant)
    method.setup(7, {})
    return method


def test_dino_backbone_and_full_checkpoint_load_the_same(tmp_path, monkeypatch):
    source, state = random_backbone("dino", "vits16", seed=3)
    torch.save(state, tmp_path / "backbone.pth")
    head = {"head.mlp.0.weight": torch.randn(8, 384), "head.last_layer.weight_g": torch.randn(8, 1)}
    teacher = {**{f"backbone.{k}": v for k, v in state.items()}, **head}
    student = {f"module.{k}": torch.randn_like(v) for k, v in teacher.items()}  # DDP-wrapped: must not be taken
    full = {"student": student, "teacher": teacher, "epoch": 100, "args": argparse.Namespace(arch="vit_small")}
    torch.save(full, tmp_path / "full.pth")
    x = images(n=2, h=32, w=32)
    expected = source.embed(x)
    backbone = loaded("dino", "vits16", tmp_path / "backbone.pth", monkeypatch)
    assert backbone.info()["weights"] == "backbone.pth"
    np.testing.assert_array_equal(backbone.embed(x), expected)
    np.testing.assert_array_equal(loaded("dino", "vits16", tmp_path / "full.pth", monkeypatch).embed(x), expected)


def test_a_wrong_file_names_itself_and_its_keys(tmp_path, monkeypatch):
    _, state = random_backbone("dino", "vits16", seed=0)
    del state["norm.weight"]
    torch.save({**state, "fc.weight": torch.zeros(2, 2)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError) as e:
        loaded("dino", "vits16", tmp_path / "wrong.pth", monkeypatch)
    message = str(e.value)
    assert str(tmp_path / "wrong.pth") in message and "dino@vits16" in message and "\n" not in message
    assert "1 expected keys missing (norm.weight)" in message and "1 unexpected keys (fc.weight)" in message
    assert message.endswith(
        "The file holds: blocks.* (144), patch_embed.* (2), cls_token, pos_embed, norm.* (1), fc.* (1)"
    )
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="tensor.pth holds a Tensor, not a state dict"):
        loaded("dinov2", "vits14", tmp_path / "tensor.pth", monkeypatch)
    _, state = random_backbone("dino", "vits16", seed=0)
    torch.save(state, tmp_path / "small.pth")
    with pytest.raises(ValueError, match=r"shapes differ: blocks\.0\.attn\.proj\.bias \(384,\) \(expected \(768,\)\)"):
        loaded("dino", "vitb16", tmp_path / "small.pth", monkeypatch)


def test_neco_backbone_loads_and_its_head_is_left_out(tmp_path, monkeypatch):
    source, state = random_backbone("neco", "vits14", seed=5)
    torch.save(state, tmp_path / "neco.ckpt")
    x = images(n=1, h=28, w=42)
    np.testing.assert_array_equal(
        loaded("neco", "vits14", tmp_path / "neco.ckpt", monkeypatch).embed_dense(x), source.embed_dense(x)
    )
    # the same file without mask_token, or into the register architecture, is not a match
    with pytest.raises(ValueError, match="unexpected keys \\(projection_head"):
        loaded("dinov2", "vits14", tmp_path / "neco.ckpt", monkeypatch)


def test_neco_lightning_checkpoint_fails_with_one_clear_message(tmp_path, monkeypatch):
    _, state = random_backbone("neco", "vits14", seed=0)
    lightning = {
        "epoch": 25,
        "global_step": 1000,
        "state_dict": {**{f"model.{k}": v for k, v in state.items()}, **{f"teacher.{k}": v for k, v in state.items()}},
    }
    torch.save(lightning, tmp_path / "last.ckpt")
    with pytest.raises(ValueError) as e:
        loaded("neco", "vits14", tmp_path / "last.ckpt", monkeypatch)
    message = str(e.value)
    assert (
        message.startswith(f"{tmp_path / 'last.ckpt'} is not a neco@vits14 (official file: https://")
        and "\n" not in message
    )
    assert "expected keys missing (blocks.0.attn.proj.bias" in message
    assert (
        "state_dict.model.* (181), state_dict.teacher.* (181), epoch, global_step. This looks like a Lightning"
        in message
    )


def test_dinov2_registers_checkpoint_loads(tmp_path, monkeypatch):
    """The official register layout (register_tokens; CLS and pos_embed[0] apart) converts to timm's."""
    source, state = random_backbone("dinov2", "vits14_reg", seed=2)
    pos0 = torch.randn(1, 1, 384)
    official = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official["register_tokens"] = state["reg_token"]
    official["cls_token"] = state["cls_token"] - pos0  # timm folds pos_embed[0] into cls_token
    official["pos_embed"] = torch.cat([pos0, state["pos_embed"]], dim=1)
    torch.save(official, tmp_path / "reg.pth")
    x = images(n=1, h=28, w=28)
    got = loaded("dinov2", "vits14_reg", tmp_path / "reg.pth", monkeypatch)
    # (cls − pos0) + pos0 rounds in fp32, amplified by 12 random blocks: ~3e-5 (compare_backbones.py: 0 vs official)
    np.testing.assert_allclose(got.embed(x), source.embed(x), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.embed_dense(x), source.embed_dense(x), rtol=0, atol=1e-4)


# --- end to end ---------------------------------------------------------------------------------------------------


def test_evaluate_flowers102_knn_end_to_end(data_root, tmp_path):
    import harness

    result = harness.evaluate(adapter("dino").Dino(), "flowers102_knn", data_root=data_root, results=tmp_path)
    assert result.status == "ok", result
    assert 0 <= result.metrics["top1_best"] <= 100
