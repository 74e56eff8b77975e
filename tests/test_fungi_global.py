"""images/fungi/global_fungi.py against fungivision 0.0.2's own FUNGIWrapper, called as its README does.

A tiny timm ViT (width 32, 2 blocks, patch 16: fungivision's views are always 224 px) and 4 negatives instead of 64
(`num_negatives`; the 64-image default is checked on its own) keep it fast. The reference builds its wrapper on a
deep copy of the same weights after `torch.manual_seed(seed)`, calls `setup` with a dataset of (PIL image, label)
pairs and then the wrapper on PIL images, re-seeding per image with `view_seed` for views="image" and not at all
(one stream, one batched call) for views="stream".
"""

from __future__ import annotations

import copy
import importlib.util
import sys

import numpy as np
import pytest
import torch

from conftest import REPO

fungivision = pytest.importorskip("fungivision")
timm = pytest.importorskip("timm")

from fungivision.wrapper import FUNGIWrapper  # noqa: E402
from PIL import Image  # noqa: E402

SEED, NEG, LAYER = 7, 4, "blocks.1.attn.proj"
# the reference's direct fungivision calls repeat these on every call (global_fungi.py silences them for its own)
pytestmark = [
    pytest.mark.filterwarnings("ignore:The transform `ToTensor:UserWarning"),
    pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Using a non-full backward hook:FutureWarning"),
    pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning"),
]


def module():
    name = "test_fungi_global_module"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "images" / "fungi" / "global_fungi.py")
        sys.modules[name] = mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, embed_dim=32, depth=2, num_heads=2).eval()


def batch(n: int, seed: int) -> np.ndarray:
    """Smooth random uint8 images (224×224), so that crops differ from one another."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (n, 14, 14, 3)).astype(np.uint8)
    return np.repeat(np.repeat(low, 16, axis=1), 16, axis=2) // 2 + rng.integers(0, 128, (n, 224, 224, 3), np.uint8)


@pytest.fixture(scope="module")
def data():
    return batch(NEG, 1), batch(3, 2)


def ours(model, negatives, views="image", seed=SEED, per_call=1):
    gf = module().GlobalFungi(model, seed, views=views, images_per_call=per_call, target_layer=LAYER, num_negatives=NEG)
    assert gf.fit_negatives(negatives[:2]) is True and gf.needs_more
    assert gf.fit_negatives(negatives[2:]) is False and not gf.needs_more
    return gf


def reference(model, negatives, queries, views):
    """fungivision's README flow on `model` (already a private copy), plus its embedding step."""
    mod = module()
    torch.manual_seed(SEED)
    wrapper = FUNGIWrapper(
        model=model, target_layer=LAYER, device=torch.device("cpu"), extractor_configs=mod.extractor_configs(NEG)
    )
    wrapper.setup(dataset=[(Image.fromarray(a), 0) for a in negatives])
    if views == "image":
        grads = []
        for a in queries:
            torch.manual_seed(mod.view_seed(SEED, a))
            grads.append(wrapper([Image.fromarray(a)]))
        grads = torch.cat(grads)
    else:
        grads = wrapper([Image.fromarray(a) for a in queries])
    x = torch.from_numpy(queries).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(x), dim=-1)
    return torch.cat([emb, grads.detach()], dim=-1).numpy()


@pytest.mark.parametrize("views, per_call", [("image", 1), ("image", 3), ("stream", 2)])
def test_features_equal_fungivision_wrapper_output(data, views, per_call):
    """The reference calls the wrapper once per image for views="image" and once on all three for "stream"; ours
    calls it on per_call images at a time."""
    negatives, queries = data
    model = tiny_vit()
    ref = reference(copy.deepcopy(model), negatives, queries, views)
    state = torch.manual_seed(12345).get_state()  # not where the reference left it, which is where ours ends
    got = ours(model, negatives, views, per_call=per_call).features(queries)
    assert torch.equal(torch.get_rng_state(), state), "GlobalFungi moved the caller's global RNG"
    assert got.shape == ref.shape == (3, 4 * 32) and got.dtype == np.float32
    diff = np.abs(got - ref).max()
    print(f"views={views} images_per_call={per_call}: max abs diff {diff:.3g}")
    assert diff <= 1e-5


def test_same_seed_same_features_other_seed_other_features(data):
    negatives, queries = data
    a = ours(tiny_vit(), negatives).features(queries)
    b = ours(tiny_vit(), negatives).features(queries)
    c = ours(tiny_vit(), negatives, seed=SEED + 1).features(queries)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[:, 32:] - c[:, 32:]).max() > 1e-3  # other P, heads and crops
    np.testing.assert_array_equal(a[:, :32], c[:, :32])  # the embedding does not depend on the seed


def test_views_image_is_a_function_of_the_image_stream_is_not(data):
    """views="image": the same image, alone or in another batch, gets the same feature; views="stream": its DINO
    crops follow its position (the KL and SimCLR blocks are deterministic)."""
    negatives, queries = data
    gf = ours(tiny_vit(), negatives)
    np.testing.assert_array_equal(gf.features(queries)[2], gf.features(queries[2:])[0])
    gs = ours(tiny_vit(), negatives, "stream")
    first, again = gs.features(queries[:1])[0], gs.features(queries[:1])[0]
    np.testing.assert_array_equal(first[:64], again[:64])
    np.testing.assert_array_equal(first[96:], again[96:])
    assert np.abs(first[64:96] - again[64:96]).max() > 1e-3


def test_shape_and_unit_norm_blocks(data):
    negatives, queries = data
    f = ours(tiny_vit(), negatives).features(queries[:2])
    assert f.shape == (2, 128) and np.isfinite(f).all()
    np.testing.assert_allclose(np.linalg.norm(f.reshape(2, 4, 32), axis=-1), 1.0, atol=1e-5)


def test_embedding_block_is_the_dino_adapters_cls(data):
    """The first block is normalize(images/dino's embed) on the same weights (ViT-S/16, random init)."""
    name = "test_fungi_global_dino"
    if name not in sys.modules:
        sys.path.insert(0, str(REPO / "images" / "_vit"))  # its method.yaml's include
        try:
            spec = importlib.util.spec_from_file_location(name, REPO / "images" / "dino" / "adapter.py")
            sys.modules[name] = mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        finally:
            sys.path.remove(str(REPO / "images" / "_vit"))
    dino = sys.modules[name]
    method = dino.Dino(variant="vits16")
    method.weights = None
    method.setup(0, {})
    queries = data[1][:2]
    expected = method.embed(queries)
    gf = module().GlobalFungi(method.model, SEED)
    assert gf.embed_dim == 384 and gf.feature_dim == 1536
    np.testing.assert_allclose(gf.embed(queries).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(method.embed(queries), expected, atol=1e-6)  # the adapter still works once wrapped


def test_fewer_negatives_than_needed_is_an_error_that_says_so(data):
    negatives, queries = data
    gf = module().GlobalFungi(tiny_vit(), SEED, target_layer=LAYER, num_negatives=NEG)
    assert gf.needs_more and gf.fit_negatives(negatives[: NEG - 1]) is True
    with pytest.raises(RuntimeError, match=rf"needs {NEG} training images .* it has {NEG - 1}"):
        gf.features(queries[:1])
    assert gf.fit_negatives(negatives[NEG - 1 :]) is False
    assert gf.features(queries[:1]).shape == (1, 128)
    assert gf.fit_negatives(negatives) is False  # more are ignored


def test_default_is_64_negatives_and_blocks_11():
    mod = module()
    assert mod.NUM_NEGATIVES == 64 and mod.TARGET_LAYER == "blocks.11.attn.proj"
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, embed_dim=32, depth=12, num_heads=2)
    gf = mod.GlobalFungi(model, SEED)
    simclr = gf.wrapper.extractors[2]
    assert simclr.comparison_batch_size == 64 and gf.needs_more
    assert [type(e).__name__ for e in gf.wrapper.extractors] == [
        "KLGradientsExtractor",
        "DINOGradientsExtractor",
        "SimCLRGradientsExtractor",
    ]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["blocks.11.attn.proj.weight", "blocks.11.attn.proj.bias"]
    with pytest.raises(ValueError, match="already wrapped"):
        mod.GlobalFungi(model, SEED)


def test_bad_inputs_are_refused(data):
    gf = module().GlobalFungi(tiny_vit(), SEED, target_layer=LAYER, num_negatives=NEG)
    with pytest.raises(ValueError, match="uint8 RGB"):
        gf.fit_negatives(data[0].astype(np.float32))
    with pytest.raises(ValueError, match="224×224"):
        gf.embed(data[1][:, :112, :112])
    with pytest.raises(ValueError, match="views"):
        module().GlobalFungi(tiny_vit(), SEED, views="batch")
