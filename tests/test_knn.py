import numpy as np
import pytest

import benchsdk
from harness.data.base import InMemoryDataset
from harness.errors import MethodFailure, UserError
from harness.protocols import PROTOCOLS
from harness.protocols.base import RunContext
from harness.protocols.knn import KnnParams, weighted_knn

from colour_coded import ColourClassSplit
from conftest import session_of


def direct_knn(train_feats, train_labels, test_feats, test_labels, k, temperature, num_classes):
    """DINO's rule written out one query at a time, except that a class no neighbour voted for is never a top-5 hit."""
    train = train_feats / np.linalg.norm(train_feats, axis=1, keepdims=True)
    top1 = top5 = 0
    for feat, label in zip(test_feats, test_labels):
        sims = train @ (feat / np.linalg.norm(feat))
        neighbours = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for n in neighbours:
            votes[train_labels[n]] += np.exp(sims[n] / temperature)
        ranked = sorted(range(num_classes), key=lambda c: (-votes[c], c))
        top1 += ranked[0] == label
        top5 += label in ranked[:5] and label in train_labels[neighbours]
    return 100 * top1 / len(test_labels), 100 * top5 / len(test_labels)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_weighted_knn_equals_direct_implementation(k):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(7, 16))
    train_labels, test_labels = rng.integers(0, 7, 300), rng.integers(0, 7, 80)
    train = (centres[train_labels] + 1.5 * rng.normal(size=(300, 16))).astype(np.float32)
    test = (centres[test_labels] + 1.5 * rng.normal(size=(80, 16))).astype(np.float32)
    ours = weighted_knn(train, train_labels, test, test_labels, k, 0.07, 7)
    assert ours == pytest.approx(direct_knn(train, train_labels, test, test_labels, k, 0.07, 7), abs=1e-4)


@pytest.mark.parametrize("k", [2, 3])
def test_top5_never_counts_a_class_without_votes(k):
    """All k neighbours are class 1; class 0 (the truth, with no vote) would come next in index order."""
    train = np.array([[1, 0], [1, 0.1], [1, -0.1], [-1, 0], [0, -1]], dtype=np.float32)
    train_labels = np.array([1, 1, 1, 0, 2])
    test, test_labels = np.array([[1, 0.05]], dtype=np.float32), np.array([0])
    assert weighted_knn(train, train_labels, test, test_labels, k, 0.07, 3) == (0.0, 0.0)
    assert weighted_knn(train, train_labels, test, np.array([1]), k, 0.07, 3) == (100.0, 100.0)


def test_oracle_one_hot_features_score_100():
    labels = np.arange(50) % 5
    features = np.eye(5, dtype=np.float32)[labels]
    assert weighted_knn(features, labels, features, labels, 10, 0.07, 5) == (100.0, 100.0)


def test_random_features_score_near_chance():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(2000, 32)).astype(np.float32), rng.normal(size=(1000, 32)).astype(np.float32)
    top1, top5 = weighted_knn(train, rng.integers(0, 10, 2000), test, rng.integers(0, 10, 1000), 20, 0.07, 10)
    assert 6 < top1 < 14 and 42 < top5 < 58


class ColourLabelData(InMemoryDataset):
    def __init__(self):
        super().__init__({"train": ColourClassSplit("train", 30, 0), "val": ColourClassSplit("val", 12, 1)})


class MeanColour(benchsdk.Method):
    name, version, outputs = "meancolour", "0", ("global",)
    patch_size, embed_dim = 16, 3

    def __init__(self, broken=None):
        self.broken = broken
        self.seen_shapes = set()

    def embed(self, images):
        self.seen_shapes.add(images.shape[1:])
        features = images.mean(axis=(1, 2)).astype(np.float32) - 100
        if self.broken == "rows":
            return features[:-1]
        return features


def run_knn(session, **params):
    protocol = PROTOCOLS["knn"](KnnParams(**params))
    ctx = RunContext(session=session_of(session), seed=0, batch_size=5, num_workers=0, progress=False)
    outcome = protocol.run(ColourLabelData(), ctx)
    assert protocol.main_metric in outcome.metrics
    return outcome, ctx


def test_protocol_end_to_end():
    session = MeanColour()
    outcome, ctx = run_knn(session)
    assert session.seen_shapes == {(224, 224, 3)}
    assert outcome.metrics == {"top1_best": 100.0, "top1_k20": 100.0}
    assert set(outcome.details["per_k"]) == {"10", "20"}
    assert any("k=100 skipped" in note for note in outcome.notes)
    assert set(ctx.stopwatch.totals) >= {"data", "evaluator"}


def test_protocol_errors():
    with pytest.raises(UserError, match="exceeds"):
        run_knn(MeanColour(), ks=[100])
    with pytest.raises(MethodFailure, match="shape"):
        run_knn(MeanColour(broken="rows"))
