"""Dense FUNGI (images/fungi/dense_fungi.py) and the fungi adapter (images/fungi/adapter.py), without the reference
repository: tiny timm ViTs and tiny inputs on CPU. scripts/compare_fungi.py checks the whole computation against
the reference's `combined_token_features` on identical weights."""

from __future__ import annotations

import functools
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import harness
from benchsdk import FitBatch
from harness.runners.inprocess import adapter_module, load_adapter
from harness.specs import MethodSpec, load_spec

from conftest import REPO

FOLDER = REPO / "images" / "fungi"


@functools.cache
def adapter():
    """images/fungi/adapter.py as a module, loaded as the in-process backend loads it (its folder and included folders
    on sys.path); dense_fungi is then sys.modules['dense_fungi']."""
    return adapter_module(load_spec(MethodSpec, FOLDER / "method.yaml"))


def dense_fungi():
    adapter()
    return sys.modules["dense_fungi"]


@pytest.fixture(autouse=True)
def no_bench_env(monkeypatch):
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    monkeypatch.delenv("BENCH_VARIANT", raising=False)
    torch.set_num_threads(1)


def tiny_vit(seed=0, e=16):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=16, embed_dim=e, depth=2, num_heads=2, num_classes=0).eval()


def tiny_fungi(seed=0, scramble=True, support=40):
    """DenseFungi on a tiny ViT (E = 16, 32×32 inputs: T = 1 + 4 tokens) with a random support bank."""
    model = tiny_vit()
    dense = dense_fungi().DenseFungi(model, seed, scramble=scramble, token_chunk=3)
    g = torch.Generator().manual_seed(1)
    dense.add_support(torch.randn(support // 4, 4, 16, generator=g))
    dense.build_index()
    return dense


def pieces(dense, x):
    """What DenseFungi._chunk differentiates, step by step: per-token g (× B) and a, with the batch's tokens."""
    dense._capture = True
    try:
        tokens = dense.model.forward_features(x)
        loss = dense._loss(tokens.detach(), dense.head(tokens))
        (g,) = torch.autograd.grad(loss, dense._y)
    finally:
        dense._capture = False
    return tokens.detach(), g * x.shape[0], dense._a, loss


def test_projection_equals_the_explicit_per_token_gradient_route():
    """einsum('kij,ti,tj->tk', P3, g, [a, 1]) and our chunked GEMM = P @ vec([g ⊗ a | g]) built per token (what the
    reference's autograd_hacks.compute_grad1 + `projection @ grads.T` does), and the per-token terms add up to the
    layer's true parameter gradient (× B) from an ordinary backward with the same loss and keep masks."""
    dense = tiny_fungi()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    state = dense.rng.get_state()
    tokens, g, a, _ = pieces(dense, x)
    b, t, e = g.shape
    g2, a2 = g.reshape(-1, e), a.reshape(-1, e)
    per_token = torch.cat([g2[:, :, None] * a2[:, None, :], g2[:, :, None]], dim=2)  # (B·T, E_out, E_in + 1)
    explicit = dense.scaling * per_token.reshape(b * t, -1) @ dense.projection.T
    torch.testing.assert_close(dense._project(g2, a2), explicit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense.project_einsum(g2, a2), explicit, rtol=1e-5, atol=1e-5)

    layer = dense.layer
    layer.requires_grad_(True)
    dense.rng.set_state(state)
    out = dense.model.forward_features(x)
    dense._loss(out.detach(), dense.head(out)).backward()
    torch.testing.assert_close(per_token[:, :, :e].sum(0), layer.weight.grad * b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(per_token[:, :, e].sum(0), layer.bias.grad * b, rtol=1e-4, atol=1e-6)
    layer.requires_grad_(False)

    dense.rng.set_state(state)
    features = dense.features(x)
    projected = F.normalize(explicit.reshape(b, t, -1)[:, 1:], dim=-1)
    expected = F.normalize(torch.cat([F.normalize(tokens[:, 1:], dim=-1), projected], -1), dim=-1)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_scrambled_and_unscrambled_neighbour_readings():
    """rows[token, k, e] = 100 k + e: the first 2 true neighbours, or the reference's strided mix (negative n,
    element e = flat(K × E block)[K e + n])."""
    d = dense_fungi()
    b, t, k, e = 2, 3, 5, 7
    rows = (100 * torch.arange(k)[:, None] + torch.arange(e)[None, :]).float().expand(b * t, k, e).clone()
    rows += 1000 * torch.arange(b * t).float()[:, None, None]  # the token id
    plain = d.scramble_neighbours(rows, b, t, 2, scramble=False)
    assert plain.shape == (b, t, 2, e)
    torch.testing.assert_close(plain, rows.reshape(b, t, k, e)[:, :, :2])
    mixed = d.scramble_neighbours(rows, b, t, 2, scramble=True)
    flat = rows.reshape(b, t, k * e)
    for n in range(2):
        for j in range(e):
            torch.testing.assert_close(mixed[:, :, n, j], flat[:, :, k * j + n])
    assert not torch.equal(mixed, plain)
    assert mixed[0, 0, 0, 1].item() == 5  # element 1 of "negative 0" is element 5 of neighbour 0


def test_scramble_option_changes_the_features():
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    a, b = tiny_fungi(scramble=True).features(x), tiny_fungi(scramble=False).features(x)
    assert (a - b).abs().max() > 1e-4


def test_info_nce_is_finite_where_the_reference_form_is_nan_with_the_same_gradient():
    """The reference subtracts diag(diag(cos/T)) in float16: -inf - -inf = NaN on the diagonal, so its loss is NaN;
    its gradient (written here from that formula) equals ours, whose loss is finite."""
    d = dense_fungi()
    g = torch.Generator().manual_seed(4)
    negatives, positives = torch.randn(9, 8, generator=g), torch.randn(6, 8, generator=g)

    def reference_form(neg, pos, tau=0.07):
        f = F.normalize(torch.cat([neg, pos]).to(torch.float16), dim=-1)
        n, m = pos.shape[0], neg.shape[0]
        cos = F.cosine_similarity(f[m:, None, :], f[None, :, :], dim=-1)
        cos = torch.diagonal_scatter(cos, torch.full((n,), -10e3, dtype=cos.dtype), m)
        pcs = cos[:, m:] / tau
        nll = -(pcs - torch.diag(torch.diag(pcs))).sum(dim=1) / (n - 1)
        return (nll + torch.logsumexp(cos, dim=-1)).mean()

    p1, p2 = positives.clone().requires_grad_(), positives.clone().requires_grad_()
    ours, theirs = d.info_nce(negatives, p1), reference_form(negatives, p2)
    assert torch.isnan(theirs) and torch.isfinite(ours) and ours.dtype == torch.float16
    (g1,), (g2,) = torch.autograd.grad(ours, p1), torch.autograd.grad(theirs, p2)
    assert torch.isfinite(g1).all()
    torch.testing.assert_close(g1, g2, rtol=2e-2, atol=2e-4)  # float16 cosines: one matmul vs the broadcast


def test_chunk_size_does_not_change_the_features(monkeypatch):
    """The ×B of the per-example gradients and the mean over the chunk cancel: 5 images in chunks of 4 (4 + 1) or
    of 1 give the same features (with the same keep-mask draws, image after image)."""
    d = dense_fungi()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    a = tiny_fungi().features(x)
    monkeypatch.setattr(d, "CHUNK_IMAGES", 1)
    b = tiny_fungi().features(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(d, "CHUNK_IMAGES", 2)
    dense = tiny_fungi()
    dense.rng.manual_seed(99)  # other keep masks: other features
    assert (dense.features(x) - a).abs().max() > 1e-4


def test_exact_search_is_the_true_top5_best_first():
    d = dense_fungi()
    g = torch.Generator().manual_seed(6)
    bank = F.normalize(torch.randn(300, 8, generator=g), dim=-1)
    queries = torch.randn(11, 8, generator=g)
    got = d.ExactTopK(bank, block=64).search(queries)
    torch.testing.assert_close(got, (queries @ bank.T).topk(5, dim=1).indices)


def test_scann_option_is_an_approximate_top5():
    pytest.importorskip("scann")
    d = dense_fungi()
    g = torch.Generator().manual_seed(6)
    bank = F.normalize(torch.randn(2000, 8, generator=g), dim=-1)
    queries = torch.randn(50, 8, generator=g)
    got = d.ScannTopK(bank).search(queries)
    exact = (queries @ bank.T).topk(5, dim=1).indices
    assert got.shape == (50, 5) and got.dtype == torch.int64 and 0 <= got.min() and got.max() < 2000
    # approximate (a tree of √N leaves searched in proportion, 4-dimension AH blocks on 8 dimensions), far from random
    assert (got[:, 0] == exact[:, 0]).float().mean() > 0.3


def fitted(seed=0, size=32, **options):
    method = adapter().Fungi(**options)
    method.setup(seed, {"name": "voc_hummingbird", "version": "1", "output": "dense", "seed": seed})
    train = np.random.default_rng(7).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    method.fit(iter([FitBatch(train[:2], None, np.array([[0, 3], [1, 2]])), FitBatch(train[2:])]))
    return method


QUERIES = np.random.default_rng(8).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


def test_one_seed_gives_identical_features_another_seed_other_features():
    a = fitted(0).embed_dense(QUERIES)
    np.testing.assert_array_equal(a, fitted(0).embed_dense(QUERIES))
    assert np.abs(a - fitted(1).embed_dense(QUERIES)).max() > 1e-3


def test_feature_shape_norm_and_token_half_is_dino():
    """(N, H/16, W/16, 768), unit rows, each half of norm 1/√2, the first half DINO's dense tokens (images/dino on
    the same seeded random init) normalised."""
    method = fitted(0)
    out = method.embed_dense(QUERIES)
    assert out.shape == (3, 2, 2, 768) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[..., :384], axis=-1), 1 / math.sqrt(2), atol=1e-5)
    ref = load_adapter(load_spec(MethodSpec, REPO / "images" / "dino" / "method.yaml"))
    ref.setup(0, {})
    tokens = ref.embed_dense(QUERIES)
    tokens /= np.linalg.norm(tokens, axis=-1, keepdims=True)
    np.testing.assert_allclose(out[..., :384] * math.sqrt(2), tokens, atol=1e-5)


def test_fit_builds_the_support_bank_from_the_patches_sent():
    """The bank = the L2-normalised raw DINO patch tokens of the fit images at the patch indices sent (all of them
    where patches is None), in order; embed_dense then searches it."""
    method = adapter().Fungi()
    method.setup(0, {"name": "voc_hummingbird", "version": "1", "output": "dense", "seed": 0})
    train = np.random.default_rng(9).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    patches = np.array([[3, 0], [1, 1]])
    method.fit(iter([FitBatch(train[:2], None, patches), FitBatch(train[2:], None, None)]))
    raw = method._tokens(train)[:, 1:]
    expected = torch.cat([raw[0, [3, 0]], raw[1, [1, 1]], raw[2]])
    torch.testing.assert_close(method.dense.bank, F.normalize(expected, dim=-1))
    assert method.embed_dense(train[:1]).shape == (1, 2, 2, 768)


def test_info_declares_the_dense_width_the_global_width_the_fit_stage_and_the_weights():
    method = adapter().Fungi()
    info = method.info()
    assert (info["name"], info["embed_dim"], info["global_dim"], info["patch_size"]) == ("fungi", 768, 1536, 16)
    assert info["weights"] == "random-init" and info["outputs"] == ["global", "dense"] and info["fit"] is True
    spec = load_spec(MethodSpec, FOLDER / "method.yaml")
    assert (spec.embed_dim, spec.patch_size, spec.fit) == (768, 16, True)


def test_global_fit_sets_the_negatives_up_and_embed_gives_cls_and_three_gradient_blocks(capfd):
    """A knn session: fit takes training images for fungivision's SimCLR negatives (a split smaller than 64: all of
    them, said on stderr), then embed gives (N, 4E) with four unit-norm blocks, the first the DINO CLS."""
    from benchsdk import FitBatch

    method = adapter().Fungi()
    method.setup(0, {"name": "flowers102_knn", "version": "1", "output": "global", "seed": 0})
    rng = np.random.default_rng(3)
    method.fit(iter([FitBatch(rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))]))
    assert "only 2 training images for the 64 SimCLR negatives" in capfd.readouterr().err
    query = rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    out = method.embed(query)
    assert out.shape == (1, 1536) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.reshape(4, 384), axis=1), 1, atol=1e-5)
    cls = method.global_.embed(query).numpy()
    np.testing.assert_allclose(out[0, :384], cls[0] / np.linalg.norm(cls[0]), atol=1e-6)
    with pytest.raises(RuntimeError, match="set up for 'global' output"):
        method.embed_dense(QUERIES)


def test_dense_without_a_fit_is_an_error():
    method = adapter().Fungi()
    method.setup(0, {"name": "voc_hummingbird", "version": "1", "output": "dense", "seed": 0})
    with pytest.raises(RuntimeError, match="support bank"):
        method.embed_dense(QUERIES)


def test_a_small_hummingbird_task_runs_with_its_fit_stage(data_root, tmp_path):
    """The whole harness path on the procedural stand-in, at 64² (4 of 16 patches kept per memory image): the fit
    stage gets the memory's images and patches, builds the bank, and the dense features are scored."""
    from harness import specs

    task = specs.get("task", "voc_hummingbird").with_overrides(
        {"input_size": 64, "memory_size": 240, "aug_epochs": 2, "k": 5}
    )
    method = adapter().Fungi()
    result = harness.evaluate(method, task, data_root=data_root, results=tmp_path)
    assert result.status == "ok", result.error
    assert len(method.dense.bank) == 240  # memory_size: every kept patch of every memory image, no more


def test_the_adapter_serves_a_small_hummingbird_task_over_the_wire(data_root, tmp_path):
    """The local backend: images/fungi/adapter.py in its own process (its folder and images/_vit on the path, the
    SDK's fit loop), same small task; the handshake accepts info (dense 768, global 1536, fit)."""
    from harness import specs
    from harness.results import ResultStore
    from harness.run import RunOptions, run_cell

    task = specs.get("task", "voc_hummingbird").with_overrides(
        {"input_size": 64, "memory_size": 240, "aug_epochs": 2, "k": 5}
    )
    opts = RunOptions(synthetic=True, data_root=data_root, progress=False, num_workers=0)
    spec = load_spec(MethodSpec, FOLDER / "method.yaml")
    result = run_cell(spec, task, 0, opts, ResultStore(tmp_path))
    assert result.status == "ok", result.error
    info = result.provenance.method_info
    assert (info["embed_dim"], info["global_dim"], info["fit"]) == (768, 1536, True) and result.timings.fit_s > 0
