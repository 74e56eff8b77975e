"""Logistic-regression linear probe on global features, for any classification dataset.

Features are L2-normalised; sklearn's LogisticRegression (multinomial, lbfgs, L2 penalty with inverse strength C,
unpenalised intercept, max_iter 1000) is fitted on the training split; top-1 (and top-5 over min(5, C) classes) on
the evaluation split, in percent. Images go through DINO's kNN preprocessing (shorter side 256, centre crop 224) or
are squashed to 224×224 (`preprocess: squash`, as docs/protocols.md §7 for Imagenette).
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Literal

import numpy as np
from pydantic import PositiveFloat, PositiveInt
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from harness.data.base import DatasetReader
from harness.errors import DataError
from harness.protocols.base import Outcome, Protocol, ProtocolParams, RunContext
from harness.protocols.common import embed_split, load_knn_image, squashed_image

SQUASH_SIZE = 224


class LinearProbeParams(ProtocolParams):
    train_split: str = "train"
    eval_split: str = "val"
    C: PositiveFloat = 1.0
    max_iter: PositiveInt = 1000
    preprocess: Literal["resize_crop", "squash"] = "resize_crop"


def l2_rows(features: np.ndarray) -> np.ndarray:
    """Unit-length rows in float64; an all-zero row stays zero."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def fit_probe(features: np.ndarray, labels: np.ndarray, C: float, max_iter: int) -> tuple[LogisticRegression, bool]:
    """The fitted classifier on L2-normalised features, and whether lbfgs converged within max_iter."""
    model = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(l2_rows(features), labels)
    return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def probe_accuracy(model: LogisticRegression, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(top-1, top-5 over min(5, classes)) in percent; a label the training split never had counts as a miss."""
    scores = model.predict_proba(l2_rows(features))
    ranked = model.classes_[np.argsort(-scores, axis=1, kind="stable")[:, : min(5, len(model.classes_))]]
    hits = ranked == np.asarray(labels)[:, None]
    return 100 * float(hits[:, 0].mean()), 100 * float(hits.any(1).mean())


class LinearProbeProtocol(Protocol):
    name = "linear_probe"
    Params = LinearProbeParams
    output = "global"
    main_metric = "top1"
    params: LinearProbeParams

    def run(self, data: DatasetReader, ctx: RunContext) -> Outcome:
        p = self.params
        train, test = data.split(p.train_split), data.split(p.eval_split)
        if len(test) == 0:
            raise DataError(f"split {p.eval_split!r} is empty")
        if len(np.unique(train.labels)) < 2:
            raise DataError(f"split {p.train_split!r} needs images of at least two classes")
        load = load_knn_image if p.preprocess == "resize_crop" else partial(squashed_image, size=SQUASH_SIZE)
        train_feats = embed_split(train, load, ctx, "linear_probe train")
        test_feats = embed_split(test, load, ctx, "linear_probe eval", dim=train_feats.shape[1])
        with ctx.evaluating():
            model, converged = fit_probe(train_feats, train.labels, p.C, p.max_iter)
            top1, top5 = probe_accuracy(model, test_feats, test.labels)
        details = {
            "top5": top5,
            "iterations": int(np.max(model.n_iter_)),
            "converged": converged,
            "train_images": len(train),
            "eval_images": len(test),
        }
        notes = [] if converged else [f"lbfgs did not converge in max_iter={p.max_iter} iterations"]
        return Outcome(metrics={"top1": top1}, details=details, notes=notes)
