"""NeCo's overclustering evaluation on VOC val (vpariza/NeCo experiments/overcluster, docs/protocols.md §2).

Images squashed to S×S (448); the dense patch features of the whole split are standardised per dimension
(sklearn StandardScaler), reduced by PCA (faiss PCAMatrix) to 50 dimensions and clustered into K groups by faiss
k-means (100 iterations, best of 5 restarts) with seeds 0..4 (run seed s: 5s..5s+4), the reference's calls.
Clusters are fitted on the patch features, not on upsampled pixels; each patch's cluster id is nearest-upsampled
to 100×100 and scored against the mask (PIL-nearest resized to S×S, then torch-nearest to 100×100), ignoring 255.
K ≠ C: each cluster goes to the class holding most of its pixels (many-to-one); K = C: Hungarian matching.
mIoU over all C classes (absent ones count 0), averaged over the seeds.

As the reference, faiss trains k-means on a random subsample of at most 256·K points (its max_points_per_centroid).
The reference pinned faiss-cpu 1.10.0; later faiss versions can end k-means in a slightly different optimum.
Deliberate differences: every eval image counts (the reference's loader, batch 32 with drop_last, skips the last
1449 mod 32 = 9 VOC val images); PCA keeps all dimensions of a method with fewer than pca_dim (faiss refuses);
K above the number of patch features is a clear error. `miou_heldout` is our correction: with many clusters,
matching them to classes with the same labels that are scored lets small clusters name themselves, so each half
of the images (even / odd index) is scored with the mapping fitted on the other half (a cluster absent from the
other half goes to class 0, as the reference sends unmatched clusters to background).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from sklearn.preprocessing import StandardScaler

from harness.data.base import DatasetReader, SegmentationSplit
from harness.errors import UserError
from harness.protocols.base import Outcome, Protocol, ProtocolParams, RunContext, dense_geometry
from harness.protocols.common import neco_eval_sample
from harness.protocols.metrics import (
    contingency,
    hungarian_mapping,
    many_to_one_mapping,
    miou_crossfit,
    miou_identity,
    remap_confusion,
)

if TYPE_CHECKING:
    import faiss

SCALER_CHUNK = 100_000  # rows standardised at a time, in place


class OverclusterParams(ProtocolParams):
    eval_split: str = "val"
    input_size: PositiveInt = 448  # rounded down to a multiple of the patch size
    mask_size: PositiveInt = 100
    k: PositiveInt = 500
    pca_dim: PositiveInt = 50
    num_seeds: PositiveInt = 5
    kmeans_iters: PositiveInt = 100
    kmeans_restarts: PositiveInt = 5


def standardize_and_project(features: np.ndarray, pca_dim: int) -> np.ndarray:
    """(n, D) float32 -> (n, min(pca_dim, D)) float32: per-dimension standardisation (in place), then PCA."""
    import faiss  # only this protocol needs it

    scaler = StandardScaler()
    for start in range(0, len(features), SCALER_CHUNK):  # chunked, as the reference, to bound float64 temporaries
        scaler.partial_fit(features[start : start + SCALER_CHUNK])
    for start in range(0, len(features), SCALER_CHUNK):
        features[start : start + SCALER_CHUNK] = scaler.transform(features[start : start + SCALER_CHUNK])
    pca = faiss.PCAMatrix(features.shape[1], min(pca_dim, features.shape[1]))
    pca.train(features)
    return pca.apply_py(features)


def kmeans_model(dim: int, k: int, iters: int, restarts: int, seed: int) -> "faiss.Kmeans":
    """faiss k-means as the reference builds it: Euclidean, `iters` iterations, best of `restarts` runs."""
    import faiss

    return faiss.Kmeans(dim, k, niter=iters, nredo=restarts, seed=seed, spherical=False, gpu=False)


def kmeans(points: np.ndarray, k: int, iters: int, restarts: int, seed: int) -> tuple[np.ndarray, float]:
    """The cluster of each point and the inertia (sum of squared distances to the final centroids)."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    model = kmeans_model(points.shape[1], k, iters, restarts, seed)
    model.train(points)
    distances, labels = model.index.search(points, 1)
    return labels[:, 0].astype(np.int64), float(distances.sum(dtype=np.float64))


def upsample_clusters(labels: np.ndarray, n: int, grid: int, size: int) -> np.ndarray:
    """(n, size, size) cluster maps from one id per patch (n·grid² row-major), torch-nearest upsampled."""
    maps = torch.from_numpy(labels.reshape(n, 1, grid, grid).astype(np.float32))
    return F.interpolate(maps, size=(size, size), mode="nearest")[:, 0].numpy().astype(np.int64)


def score_clusters(masks: np.ndarray, maps: np.ndarray, k: int, num_classes: int, ignore_index: int) -> dict:
    """Reference mIoU (many-to-one, or Hungarian when k == num_classes) and its held-out correction, ×100."""
    halves = [contingency(masks[parity::2], maps[parity::2], num_classes, k, ignore_index) for parity in (0, 1)]
    conf = halves[0] + halves[1]
    matcher = hungarian_mapping if k == num_classes else many_to_one_mapping
    mapping = matcher(conf)
    miou, per_class = miou_identity(remap_confusion(conf, mapping))
    heldout, _ = miou_crossfit(halves[0], halves[1], matcher)
    used = conf.sum(0) > 0
    return {
        "miou": 100 * miou,
        "miou_heldout": 100 * heldout,
        "per_class_iou": 100 * per_class,
        "clusters_to_background": float((mapping[used] == 0).mean()) if used.any() else 0.0,
    }


class OverclusterProtocol(Protocol):
    name = "overcluster"
    Params = OverclusterParams
    output = "dense"
    main_metric = "miou"
    params: OverclusterParams

    def run(self, data: DatasetReader, ctx: RunContext) -> Outcome:
        p = self.params
        patch, dim, size = dense_geometry(ctx.session.info, p.input_size)
        val = data.split(p.eval_split)
        grid, n = size // patch, len(val)
        n_points = n * grid * grid
        if p.k > n_points:
            raise UserError(
                f"params.k={p.k} clusters exceeds the {n_points} patch features that are clustered "
                f"({n} {p.eval_split} images × {grid}×{grid} patches at input_size {size}); lower params.k"
            )
        features, masks = self._collect(val, size, grid, dim, ctx)
        seeds = [ctx.seed * p.num_seeds + i for i in range(p.num_seeds)]  # ctx.seed 0: the reference's 0..4
        with ctx.evaluating():
            points = standardize_and_project(features, p.pca_dim)
            del features
            runs = []
            for seed in seeds:
                labels, inertia = kmeans(points, p.k, p.kmeans_iters, p.kmeans_restarts, seed)
                maps = upsample_clusters(labels, n, grid, p.mask_size)
                runs.append({**score_clusters(masks, maps, p.k, val.num_classes, val.ignore_index), "inertia": inertia})
        hungarian = p.k == val.num_classes
        return self._outcome(runs, seeds, hungarian, points.shape[1], size, grid, n)

    def _collect(
        self, val: SegmentationSplit, size: int, grid: int, dim: int, ctx: RunContext
    ) -> tuple[np.ndarray, np.ndarray]:
        """Patch features (n·grid², D) float32 and masks (n, mask_size, mask_size) uint8 of the whole split."""
        ms = self.params.mask_size
        features = np.empty((len(val) * grid * grid, dim), dtype=np.float32)
        masks = np.empty((len(val), ms, ms), dtype=np.uint8)
        load = partial(neco_eval_sample, val, size, ms)
        filled = 0
        for images, batch_masks in ctx.batches(len(val), load, "overcluster"):
            out = ctx.embed_dense(images, grid, dim)
            features[filled * grid * grid : (filled + len(images)) * grid * grid] = out.reshape(-1, dim)
            masks[filled : filled + len(images)] = batch_masks
            filled += len(images)
        return features, masks

    def _outcome(
        self, runs: list[dict], seeds: list[int], hungarian: bool, pca_dim: int, size: int, grid: int, n: int
    ) -> Outcome:
        p = self.params
        matching = "Hungarian" if hungarian else "many-to-one (majority class)"
        details = {
            "k": p.k,
            "matching": matching,
            "seeds": seeds,
            "miou_per_seed": [round(r["miou"], 4) for r in runs],
            "miou_heldout_per_seed": [round(r["miou_heldout"], 4) for r in runs],
            "miou_std": float(np.std([r["miou"] for r in runs])),
            "kmeans_inertia_per_seed": [r["inertia"] for r in runs],
            "clusters_to_background": float(np.mean([r["clusters_to_background"] for r in runs])),
            "per_class_iou": np.mean([r["per_class_iou"] for r in runs], axis=0).round(4).tolist(),
            "input_size": size,
            "patch_grid": grid,
            "eval_images": n,
            "points_clustered": n * grid * grid,
            "kmeans_train_points": min(n * grid * grid, 256 * p.k),
            "pca_dim": pca_dim,
        }
        notes = [f"faiss k-means, K={p.k}, {matching} matching; miou_heldout names clusters by the other half's labels"]
        if size != p.input_size:
            notes.append(f"input_size {p.input_size} rounded down to {size}, a multiple of the patch size")
        if pca_dim < p.pca_dim:
            notes.append(f"the method has {pca_dim} < pca_dim={p.pca_dim} dimensions: PCA keeps all of them")
        metrics = {
            "miou": float(np.mean([r["miou"] for r in runs])),
            "miou_heldout": float(np.mean([r["miou_heldout"] for r in runs])),
        }
        return Outcome(metrics=metrics, details=details, notes=notes)
