import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import benchsdk
from harness.data.base import ClassificationSplit, InMemoryDataset
from harness.errors import DataError, MethodFailure
from harness.protocols import PROTOCOLS
from harness.protocols.base import RunContext
from harness.protocols.frozen_head import FrozenHeadParams, flatten_patch_grid, make_head, predict, top1, train_head

from conftest import session_of

FAST = {"epochs": 15, "train_batch_size": 32, "lr": 1e-2}


def grid_problem(n, num_classes, noise, seed, grid=3, dim=8):
    """Patch features (n, grid, grid, dim): a class-specific pattern per patch position plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(99).normal(size=(num_classes, grid, grid, dim))
    labels = rng.integers(0, num_classes, n)
    features = patterns[labels] + noise * rng.normal(size=(n, grid, grid, dim))
    return torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(labels)


def test_flatten_normalises_each_patch_then_flattens_row_major():
    features = torch.randn(2, 3, 4, 5)
    expected = np.stack([
        np.concatenate([v / np.linalg.norm(v) for row in image for v in row]) for image in features.numpy()
    ])  # fmt: skip
    np.testing.assert_allclose(flatten_patch_grid(features).numpy(), expected, rtol=1e-6)


def test_head_in_eval_mode_is_layernorm_then_linear():
    torch.manual_seed(0)
    head = make_head(12, 4, dropout=0.5)
    torch.nn.init.normal_(head[0].weight)
    torch.nn.init.normal_(head[0].bias)
    x = torch.randn(6, 12)
    gamma, beta, w, b = (t.detach().numpy() for t in (head[0].weight, head[0].bias, head[2].weight, head[2].bias))
    xn = x.numpy()
    standardised = (xn - xn.mean(1, keepdims=True)) / np.sqrt(xn.var(1, keepdims=True) + 1e-5)
    expected = (standardised * gamma + beta) @ w.T + b
    head.eval()
    np.testing.assert_allclose(head(x).detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    head.train()
    assert not torch.allclose(head(x), head(x))  # dropout is active while training


def test_oracle_features_score_100():
    x, y = grid_problem(200, 5, noise=0.0, seed=0)
    test_x, test_y = grid_problem(100, 5, noise=0.0, seed=1)
    head, history = train_head(flatten_patch_grid(x), y, 5, FrozenHeadParams(**FAST), seed=0)
    assert top1(predict(head, flatten_patch_grid(test_x)), test_y) == 100
    assert history[-1]["loss"] < history[0]["loss"]


def test_noise_features_score_chance():
    x, y = torch.randn(600, 3, 3, 8), torch.randint(0, 10, (600,))
    test_x, test_y = torch.randn(2000, 3, 3, 8), torch.randint(0, 10, (2000,))
    head, _ = train_head(flatten_patch_grid(x), y, 10, FrozenHeadParams(**FAST), seed=0)
    assert 7 < top1(predict(head, flatten_patch_grid(test_x)), test_y) < 13


def test_head_is_as_good_as_a_logistic_regression():
    """On a noisy linearly separable problem, the trained head matches sklearn's logistic regression on the same
    (LayerNorm-equivalent: standardised) inputs within a few points."""
    x, y = grid_problem(800, 6, noise=3.0, seed=2)
    test_x, test_y = grid_problem(1000, 6, noise=3.0, seed=3)
    train_f, test_f = flatten_patch_grid(x), flatten_patch_grid(test_x)
    head, _ = train_head(train_f, y, 6, FrozenHeadParams(**FAST), seed=0)
    ours = top1(predict(head, test_f), test_y)

    def standardise(f):
        f = f.numpy()
        return (f - f.mean(1, keepdims=True)) / f.std(1, keepdims=True)

    reference = 100 * LogisticRegression(max_iter=1000).fit(standardise(train_f), y).score(standardise(test_f), test_y)
    assert 40 < reference < 95  # neither trivial nor hopeless
    assert abs(ours - reference) < 6


def test_training_depends_on_the_seed_only():
    x, y = grid_problem(100, 4, noise=2.0, seed=4)
    f = flatten_patch_grid(x)
    runs = [train_head(f, y, 4, FrozenHeadParams(**FAST), seed=s)[1] for s in (7, 7, 8)]
    torch.manual_seed(123)  # the global RNG is neither used nor disturbed
    assert runs[0] == runs[1] and runs[0] != runs[2]


# --- the protocol end to end -----------------------------------------------------------------------------------------

PALETTE = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]], dtype=np.uint8)


class StripeSplit(ClassificationSplit):
    """Class c: PALETTE[c] on the top half, grey below; sizes vary."""

    num_classes = 3

    def __init__(self, name, n, seed):
        rng = np.random.default_rng(seed)
        self.name, self.ids = name, [f"{name}_{i}" for i in range(n)]
        self.labels = rng.integers(0, 3, n)
        self.shapes = [(int(rng.integers(40, 90)), int(rng.integers(40, 90))) for _ in range(n)]

    def image(self, i):
        h, w = self.shapes[i]
        img = np.full((h, w, 3), 128, dtype=np.uint8)
        img[: h // 2] = PALETTE[self.labels[i]]
        return img


class StripeData(InMemoryDataset):
    def __init__(self, val_classes=3):
        super().__init__({"train": StripeSplit("train", 24, 0), "val": StripeSplit("val", 12, 1)})
        self.splits["val"].num_classes = val_classes


class PatchMean(benchsdk.Method):
    name, version, outputs = "patchmean", "0", ("dense",)
    patch_size, embed_dim = 16, 3

    def __init__(self, broken=False):
        self.broken, self.seen_shapes = broken, set()

    def embed_dense(self, images):
        self.seen_shapes.add(images.shape[1:])
        n, h, w, _ = images.shape
        features = images.reshape(n, h // 16, 16, w // 16, 16, 3).mean((2, 4)).astype(np.float32) - 100
        return features[:, :-1] if self.broken else features


def run_head(session, data=None, **params):
    params = {"input_size": 64, **FAST, **params}
    ctx = RunContext(session=session_of(session), seed=0, batch_size=5, num_workers=0, progress=False)
    protocol = PROTOCOLS["frozen_head"](FrozenHeadParams(**params))
    outcome = protocol.run(data or StripeData(), ctx)
    assert protocol.main_metric in outcome.metrics
    return outcome, ctx


def test_protocol_end_to_end():
    session = PatchMean()
    outcome, ctx = run_head(session)
    assert session.seen_shapes == {(64, 64, 3)}  # squashed, no crop
    assert outcome.metrics == {"top1": 100.0}
    assert outcome.details["head_inputs"] == 4 * 4 * 3 and len(outcome.details["epochs"]) == FAST["epochs"]
    assert set(ctx.stopwatch.totals) >= {"data", "evaluator"}
    half, _ = run_head(PatchMean(), feature_dtype="float16")
    assert half.metrics == {"top1": 100.0}


def test_protocol_errors():
    with pytest.raises(MethodFailure, match="shape"):
        run_head(PatchMean(broken=True))
    with pytest.raises(DataError, match="classes"):
        run_head(PatchMean(), data=StripeData(val_classes=4))
