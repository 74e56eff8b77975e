import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_softmax

import benchsdk
from harness.data.base import InMemoryDataset
from harness.errors import DataError, MethodFailure
from harness.protocols import PROTOCOLS
from harness.protocols.base import RunContext
from harness.protocols.linear_probe import LinearProbeParams, fit_probe, l2_rows, probe_accuracy

from colour_coded import ColourClassSplit
from conftest import session_of


def clusters(n, num_classes, dim, spread, seed):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(42).normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, n)
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


def direct_logistic_regression(x, y, num_classes, C):
    """argmin_W,b C · Σ_i −log softmax(W x_i + b)[y_i] + ½‖W‖², by scipy's L-BFGS on the closed-form gradient."""
    n, d = x.shape
    onehot = np.eye(num_classes)[y]

    def objective(theta):
        w, b = theta[: d * num_classes].reshape(num_classes, d), theta[d * num_classes :]
        log_p = log_softmax(x @ w.T + b, axis=1)
        residual = C * (np.exp(log_p) - onehot)
        grad = np.concatenate([(residual.T @ x + w).ravel(), residual.sum(0)])
        return -C * (onehot * log_p).sum() + 0.5 * (w**2).sum(), grad

    theta = minimize(
        objective,
        np.zeros(num_classes * (d + 1)),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-14},
    ).x
    return theta[: d * num_classes].reshape(num_classes, d), theta[d * num_classes :]


@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
def test_probe_equals_direct_penalised_maximum_likelihood(C):
    x, y = clusters(300, 4, 6, 1.5, 0)
    model, converged = fit_probe(x, y, C, 1000)
    w, b = direct_logistic_regression(l2_rows(x), y, 4, C)
    assert converged
    np.testing.assert_allclose(model.coef_, w, atol=2e-3 * max(1, np.abs(w).max()))
    centred = model.intercept_ - model.intercept_.mean()  # softmax ignores a common shift of the intercepts
    np.testing.assert_allclose(centred, b - b.mean(), atol=2e-3 * max(1, np.abs(b).max()))
    test_x, test_y = clusters(400, 4, 6, 1.5, 1)
    direct = (l2_rows(test_x) @ w.T + b).argmax(1)
    assert probe_accuracy(model, test_x, test_y)[0] == pytest.approx(100 * (direct == test_y).mean(), abs=0.5)


def test_l2_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_rows(x), [[0.6, 0.8], [0, 0]])


def test_oracle_features_score_100():
    labels = np.arange(60) % 6
    features = np.eye(6, dtype=np.float32)[labels]
    model, _ = fit_probe(features, labels, 10.0, 1000)
    assert probe_accuracy(model, features, labels) == (100.0, 100.0)


def test_random_features_score_chance():
    rng = np.random.default_rng(3)
    model, _ = fit_probe(rng.normal(size=(1000, 16)), rng.integers(0, 10, 1000), 1.0, 1000)
    top1, top5 = probe_accuracy(model, rng.normal(size=(2000, 16)), rng.integers(0, 10, 2000))
    assert 7 < top1 < 13 and 44 < top5 < 56


def test_non_convergence_is_reported():
    x, y = clusters(200, 3, 5, 3.0, 4)
    assert fit_probe(x, y, 100.0, 2)[1] is False


# --- the protocol end to end -----------------------------------------------------------------------------------------


class ColourData(InMemoryDataset):
    def __init__(self, one_class=False):
        super().__init__(
            {
                "train": ColourClassSplit("train", 30, 0, max_side=300),
                "val": ColourClassSplit("val", 12, 1, max_side=300),
            }
        )
        if one_class:
            self.splits["train"].labels[:] = 0


class MeanColour(benchsdk.Method):
    name, version, outputs = "meancolour", "0", ("global",)
    patch_size, embed_dim = 16, 3

    def __init__(self, broken=False):
        self.broken, self.seen_shapes = broken, set()

    def embed(self, images):
        self.seen_shapes.add(images.shape[1:])
        features = images.mean(axis=(1, 2)).astype(np.float32) - 100
        return features[:-1] if self.broken else features


def run_probe(session, data=None, **params):
    ctx = RunContext(session=session_of(session), seed=0, batch_size=5, num_workers=0, progress=False)
    protocol = PROTOCOLS["linear_probe"](LinearProbeParams(**params))
    outcome = protocol.run(data or ColourData(), ctx)
    assert protocol.main_metric in outcome.metrics
    return outcome, ctx


@pytest.mark.parametrize("preprocess", ["resize_crop", "squash"])
def test_protocol_end_to_end(preprocess):
    session = MeanColour()
    outcome, ctx = run_probe(session, preprocess=preprocess, C=10.0)
    assert session.seen_shapes == {(224, 224, 3)}
    assert outcome.metrics == {"top1": 100.0}
    assert outcome.details["converged"] and outcome.details["train_images"] == 30
    assert set(ctx.stopwatch.totals) >= {"data", "evaluator"}


def test_protocol_errors():
    with pytest.raises(MethodFailure, match="shape"):
        run_probe(MeanColour(broken=True))
    with pytest.raises(DataError, match="two classes"):
        run_probe(MeanColour(), data=ColourData(one_class=True))
