#!/usr/bin/env python
"""Run our evaluators and the official ones on identical inputs and print a table of both numbers.

    python scripts/compare_reference.py --hbird /path/to/open-hummingbird-eval --dino /path/to/dino [--out table.md]
                                        [--only hbird|knn] [--data-root DIR] [--size 224] [--seed 0]

--hbird: a checkout of vpariza/open-hummingbird-eval (HEAD 5e79da2); --dino: a checkout of facebookresearch/dino,
or of adriarm/separating_knowledge (its dino/ folder is found), whose eval_knn.py `knn_classifier` is the
reference. Both checkouts are imported and run as they are; nothing in them is edited. The Python that runs this
script needs the harness's dependencies plus faiss-cpu and pytorch-lightning (imported by the reference's data
modules; opencv-python-headless too for the separating_knowledge copy), e.g. a venv with
`pip install torch torchvision timm scipy pydantic pyyaml tqdm faiss-cpu pytorch-lightning`; the harness is
imported from this checkout.

HummingBird. Inputs are built once, with the harness's own preprocessing, on the procedural VOC stand-in
(scale "small": 600 trainaug and 200 val images, 21 classes): augmented memory images and masks for each
augmentation epoch with our per-sample generators, the same sample's patch-sampling noise, squashed val images and
nearest-resized masks. Dense features come from a fixed function of the pixels (each 16×16 patch, centred, with
its mean colour, through a seeded random tanh layer and projection to 64 dimensions), computed once per image and looked up by the image's bytes, so each side
gets the same features for the same image and an image that reached only one side is an error. Ours is the
HummingBird protocol itself (`HummingbirdProtocol.run`, exact search) with a method session that answers from
that table. The reference is `HbirdEvaluation` fed with loaders that yield exactly those tensors as ToTensor
would (x = image/255, y = mask/255) and a feature extractor wrapper that answers from the same table; at run
time only (the module attributes are restored afterwards):
  - `hbird.nn.search_faiss.NearestNeighborSearchFaiss` becomes a subclass that builds faiss-cpu's flat
    `IndexFlatIP` (the reference's exact search is Faiss-GPU only); its add and search methods are the
    reference's own;
  - with a bounded memory, `torch.rand` inside `HbirdEvaluation._sample_features` returns our per-image noise
    (as float32, the dtype of torch.rand) instead of fresh random numbers, so both sides score the same
    patches with the same noise; the selected indices are compared image by image;
  - `PredsmIoU` is subclassed to keep the metric object, whose `compute(linear_probe=True)` gives the
    identity mIoU beside `evaluate`'s Hungarian one.
Cases: unbounded memory, and a bounded memory of 25,000 rows (20 of the 196 patches per image; the reference
pre-allocates 25,000 rows and trims to the 24,000 it fills), each with the Hungarian `miou` and `miou_identity`.
Besides the numbers it compares the memory banks row by row, the 30 neighbours found for every query patch (our
protocol's search calls and the reference's faiss calls are recorded, not altered) and the predicted class of
every scored pixel. Two exact searches in float32 can disagree where the 30th and 31st candidates tie to float32
rounding (faiss-cpu's BLAS and torch round the inner products differently; the reference also searches with
unnormalised queries): a handful of the 39,200 query patches swap such a row, reported with the float64 gap. With
these features no predicted pixel changes; features whose 30 neighbours crowd within ~1e-2 of one another
(e.g. dominated by one common direction) make such swaps frequent enough to flip a few pixels, which moves mIoU
by ~1e-4 per pixel: a property of float32 search, not of either evaluator.

DINO kNN. Flowers102-shaped features (102 classes, 10 training images per class, 1,020 queries; class centres
plus Gaussian noise, 64 dimensions) go to `knn_classifier` L2-normalised, as DINO's `__main__` normalises them,
with its default num_classes (1000, as both DINO and separating_knowledge call it), and raw to our
`weighted_knn`; k ∈ {1, 2, 3, 4, 5, 10, 20, 100, 200}, T = 0.07, top-1 and top-5. DINO's chunking takes
imgs_per_chunk = num_test // 100 queries at a time: with fewer than 100 queries that is 0 and facebookresearch's
loop crashes (`range` step 0; separating_knowledge clamps it to 1); with 1,020 queries it is 10, and the
`min(idx + chunk, N)` slicing covers any remainder, so the query count changes nothing else. Our protocol's own
path (neighbours searched once at the largest k, then `knn_accuracy` per k) is checked against `weighted_knn`.

Every number is printed with its absolute difference; a case counts as equal when |diff| ≤ 1e-4 (percent).
Times are each side's evaluator only (ours: the protocol's "evaluator" phase; the reference: its constructor,
evaluate and metric, minus the time spent in our loaders and feature look-up). Exit status 1 when a case differs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.contract import MethodInfo  # noqa: E402
from harness.data import open_dataset  # noqa: E402
from harness.data.base import DatasetReader  # noqa: E402
from harness.protocols import PROTOCOLS, hummingbird  # noqa: E402
from harness.protocols.base import RunContext  # noqa: E402
from harness.protocols.hummingbird import (  # noqa: E402
    HummingbirdParams,
    load_eval_sample,
    load_train_sample,
    memory_entries,
    patch_class_counts,
    patches_per_image,
    select_patches,
)
from harness.protocols.knn import knn_accuracy, knn_neighbours, weighted_knn  # noqa: E402

TOLERANCE = 1e-4
PATCH = 16
FEATURE_DIM = 64
HIDDEN = 256
HBIRD = dict(aug_epochs=2, k=30, temperature=0.02)
BOUNDED_MEMORY = 25_000
KNN_KS = (1, 2, 3, 4, 5, 10, 20, 100, 200)
KNN_T = 0.07


# --- identical inputs ----------------------------------------------------------------------------------------------


class PatchFeatures:
    """A fixed, seeded dense feature function of uint8 images (B, S, S, 3) -> float32 (B, S/16, S/16, D):
    each 16×16 RGB patch (its pixels minus their mean, and 4 × the mean colour) through a random tanh layer
    and a random projection."""

    def __init__(self, seed: int = 0, dim: int = FEATURE_DIM):
        g = torch.Generator().manual_seed(seed)
        n_in = PATCH * PATCH * 3 + 3
        self.w1 = torch.randn(n_in, HIDDEN, generator=g) / n_in**0.5 * 4
        self.w2 = torch.randn(HIDDEN, dim, generator=g) / HIDDEN**0.5
        self.dim = dim

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        b, height, width, _ = images.shape
        h, w = height // PATCH, width // PATCH
        x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255 - 0.5
        patches = x.reshape(b, h, PATCH, w, PATCH, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, PATCH * PATCH, 3)
        mean = patches.mean(3)
        inputs = torch.cat([(patches - mean[..., None, :]).flatten(3), 4 * mean], dim=-1)
        return (torch.tanh(inputs @ self.w1) @ self.w2).numpy()


def image_key(image: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).digest() + bytes(image.shape)


@dataclass
class FeatureTable:
    """Dense features of every input image, looked up by the image's bytes; counts who asked for what."""

    features: dict[bytes, np.ndarray] = field(default_factory=dict)
    served: dict[str, set[bytes]] = field(default_factory=dict)
    seconds: float = 0.0  # time spent looking up (not evaluator time)

    def add(self, images: np.ndarray, features: np.ndarray) -> None:
        for image, feature in zip(images, features):
            self.features[image_key(image)] = feature

    def lookup(self, images: np.ndarray, who: str) -> np.ndarray:
        t0 = time.perf_counter()
        keys = [image_key(image) for image in images]
        missing = sum(key not in self.features for key in keys)
        if missing:
            raise RuntimeError(f"{who} asked for features of {missing} image(s) that are not among the shared inputs")
        self.served.setdefault(who, set()).update(keys)
        out = np.stack([self.features[key] for key in keys])
        self.seconds += time.perf_counter() - t0
        return out


@dataclass
class HbirdInputs:
    size: int
    seed: int
    batch_size: int
    train: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]  # per epoch, per batch: images, masks, noise
    val: list[tuple[np.ndarray, np.ndarray]]  # per batch: images, masks
    table: FeatureTable
    num_classes: int
    n_train: int
    seconds: float


def build_hbird_inputs(data: DatasetReader, size: int, seed: int, batch_size: int, aug_epochs: int) -> HbirdInputs:
    """The memory and query samples exactly as the protocol loads them (same functions, same seeds), batched."""
    t0 = time.perf_counter()
    train, val = data.split("trainaug"), data.split("val")
    ids, n_patches = np.arange(len(train)), (size // PATCH) ** 2
    featurize, table = PatchFeatures(seed), FeatureTable()
    epochs = []
    for epoch in range(aug_epochs):
        batches = []
        for start in range(0, len(ids), batch_size):
            samples = [
                load_train_sample(train, ids, size, seed, epoch, n_patches, i)
                for i in range(start, min(start + batch_size, len(ids)))
            ]
            images, masks, noise = (np.stack(column) for column in zip(*samples))
            table.add(images, featurize(images))
            batches.append((images, masks, noise))
        epochs.append(batches)
    val_batches = []
    for start in range(0, len(val), batch_size):
        samples = [load_eval_sample(val, size, i) for i in range(start, min(start + batch_size, len(val)))]
        images, masks = (np.stack(column) for column in zip(*samples))
        table.add(images, featurize(images))
        val_batches.append((images, masks))
    return HbirdInputs(
        size, seed, batch_size, epochs, val_batches, table, train.num_classes, len(train), time.perf_counter() - t0
    )


@contextlib.contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


# --- ours ----------------------------------------------------------------------------------------------------------


class TableSession:
    """A method session whose dense features come from the shared table."""

    def __init__(self, table: FeatureTable):
        self.table = table
        self.info = MethodInfo(name="table", version="0", outputs=["dense"], patch_size=PATCH, embed_dim=FEATURE_DIM)

    def embed_dense(self, images: np.ndarray) -> np.ndarray:
        return self.table.lookup(images, "ours")


@dataclass
class OurRun:
    metrics: dict[str, float]
    seconds: float
    neighbours: np.ndarray  # (queries, k) memory rows found for each query patch
    predictions: np.ndarray  # (images, S, S) predicted class map


def run_ours_hbird(data: DatasetReader, inputs: HbirdInputs, memory_size: int | None) -> OurRun:
    """The protocol itself; its search results and predicted maps are recorded on the way (not altered)."""
    neighbours, predictions = [], []
    make_search, predict_masks = hummingbird.make_search, hummingbird.predict_masks

    def recording_make_search(*args, **kwargs):
        search = make_search(*args, **kwargs)
        search_fn = search.search

        def recording_search(queries, k):
            out = search_fn(queries, k)
            neighbours.append(out[1].cpu().numpy())
            return out

        search.search = recording_search
        return search

    def recording_predict_masks(*args, **kwargs):
        predictions.append(predict_masks(*args, **kwargs))
        return predictions[-1]

    params = HummingbirdParams(input_size=inputs.size, memory_size=memory_size, search="exact", **HBIRD)
    ctx = RunContext(
        session=TableSession(inputs.table),
        seed=inputs.seed,
        batch_size=inputs.batch_size,
        num_workers=0,
        progress=False,
    )
    with (
        patched(hummingbird, "make_search", recording_make_search),
        patched(hummingbird, "predict_masks", recording_predict_masks),
    ):
        outcome = PROTOCOLS["hummingbird"](params).run(data, ctx)
    return OurRun(
        outcome.metrics, ctx.stopwatch.totals["evaluator"], np.concatenate(neighbours), np.concatenate(predictions)
    )


# --- the reference, fed the same tensors ---------------------------------------------------------------------------


def to_tensor_images(images: np.ndarray) -> torch.Tensor:
    """What torchvision's ToTensor makes of uint8 images: float (B, 3, S, S) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)


def to_tensor_masks(masks: np.ndarray) -> torch.Tensor:
    """What ToTensor makes of the reference's mask PILs: float (B, 1, S, S) = id / 255."""
    return torch.from_numpy(masks)[:, None].float().div(255)


class TableExtractor(torch.nn.Module):
    """The reference's feature-extractor interface (forward_features -> (B, N, D), aux; eval_spatial_resolution,
    d_model), answering from the shared table for the uint8 image that x encodes."""

    def __init__(self, table: FeatureTable, grid: int):
        super().__init__()
        self.table, self.eval_spatial_resolution, self.d_model = table, grid, FEATURE_DIM

    def forward_features(self, x: torch.Tensor):
        images = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        features = self.table.lookup(images, "reference")
        return torch.from_numpy(features).flatten(1, 2), None


class Loader:
    """Yields the reference's (x, y) batches; a train loader serves augmentation epoch e on its e-th pass and
    publishes each batch's sampling noise for the noise hook."""

    def __init__(self, epochs: list[list[tuple]], noise_slot: list | None = None):
        self.epochs, self.noise_slot, self.passes, self.seconds = epochs, noise_slot, 0, 0.0

    def __len__(self) -> int:
        return len(self.epochs[0])

    def __iter__(self):
        batches = self.epochs[self.passes]
        self.passes += 1
        for batch in batches:
            t0 = time.perf_counter()
            x, y = to_tensor_images(batch[0]), to_tensor_masks(batch[1])
            if self.noise_slot is not None:
                self.noise_slot[:] = [batch[2]]
            self.seconds += time.perf_counter() - t0
            yield x, y


def import_reference_hbird(path: Path):
    if not (path / "hbird" / "hbird_eval.py").is_file():
        sys.exit(f"--hbird {path}: no hbird/hbird_eval.py there (expected a checkout of open-hummingbird-eval)")
    sys.path.insert(0, str(path))
    hbird_eval = importlib.import_module("hbird.hbird_eval")
    search_faiss = importlib.import_module("hbird.nn.search_faiss")  # imports faiss (faiss-cpu)
    return hbird_eval, search_faiss


@dataclass
class ReferenceRun:
    miou: float
    miou_identity: float
    seconds: float
    feature_memory: torch.Tensor
    label_memory: torch.Tensor
    sampled: list[np.ndarray]
    neighbours: np.ndarray  # (queries, k)
    predictions: np.ndarray  # predicted class of every scored pixel (ground truth ≠ 255), in image order


def run_reference_hbird(hbird_eval, search_faiss, inputs: HbirdInputs, memory_size: int | None) -> ReferenceRun:
    import faiss

    original_search = search_faiss.NearestNeighborSearchFaiss

    class CpuFlatIP(original_search):
        """The reference's Faiss search on faiss-cpu's exact IndexFlatIP instead of GPU replicas."""

        def __init__(self, feature_memory, n_neighbors=30, distance_measure="dot_product", **kwargs):
            if distance_measure != "dot_product":
                raise ValueError("only dot_product is used by HbirdEvaluation")
            self.n_neighbors, self.distance_measure = n_neighbors, distance_measure
            self.embed_d = feature_memory.size(1)
            self.index = faiss.IndexFlatIP(self.embed_d)
            self._add_features_to_index(feature_memory)

        def find_nearest_neighbors(self, q, k=None):
            indices, distances = super().find_nearest_neighbors(q, k)
            neighbours.append(np.array(indices))
            return indices, distances

    neighbours: list[np.ndarray] = []

    metrics: list = []

    class KeptPredsmIoU(hbird_eval.PredsmIoU):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            metrics.append(self)

    noise_slot: list = []
    sampled: list[np.ndarray] = []
    original_sample = hbird_eval.HbirdEvaluation._sample_features

    def sample_with_our_noise(self, features, patchified_gts, num_classes):
        (noise,) = noise_slot
        ours = torch.from_numpy(noise.astype(np.float32).ravel())

        def rand(*size, **kwargs):
            n = int(np.prod(size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size))
            if n != ours.numel():  # every patch holds pixels, so every patch is "non-empty" and gets noise
                raise RuntimeError(f"reference drew {n} noise values, the batch has {ours.numel()}")
            return ours.clone()

        with patched(torch, "rand", rand):
            out = original_sample(self, features, patchified_gts, num_classes)
        sampled.append(out[1].numpy().copy())
        return out

    train = Loader(inputs.train, noise_slot)
    val = Loader([inputs.val])
    grid = inputs.size // PATCH
    lookup_before = inputs.table.seconds
    with (
        patched(search_faiss, "NearestNeighborSearchFaiss", CpuFlatIP),
        patched(hbird_eval, "PredsmIoU", KeptPredsmIoU),
        patched(hbird_eval.HbirdEvaluation, "_sample_features", sample_with_our_noise),
    ):
        t0 = time.perf_counter()
        evaluator = hbird_eval.HbirdEvaluation(
            TableExtractor(inputs.table, grid),
            train,
            num_classes=inputs.num_classes,
            n_neighbours=HBIRD["k"],
            augmentation_epoch=HBIRD["aug_epochs"],
            device="cpu",
            nn_method="faiss",
            memory_size=memory_size,
            dataset_size=inputs.n_train,
        )
        miou = evaluator.evaluate(val, eval_spatial_resolution=grid, ignore_index=255)
        (metric,) = metrics
        miou_identity = metric.compute(is_global_zero=True, linear_probe=True, return_reordered=False)[0]
        seconds = time.perf_counter() - t0
    seconds -= train.seconds + val.seconds + inputs.table.seconds - lookup_before
    if HBIRD["temperature"] != 0.02:  # the reference's _cross_attention has beta=0.02 built in
        raise RuntimeError("the reference's temperature is fixed at 0.02")
    predictions = torch.cat(metric._pred_chunks).numpy()  # kept by PredsmIoU for its reordered predictions
    return ReferenceRun(
        100 * float(miou),
        100 * float(miou_identity),
        seconds,
        evaluator.feature_memory,
        evaluator.label_memory,
        sampled,
        np.concatenate(neighbours),
        predictions,
    )


# --- function-level checks on the same inputs ----------------------------------------------------------------------


def check_memory(inputs: HbirdInputs, ref: ReferenceRun, memory_size: int | None) -> list[str]:
    """Our selected patches and memory rows (from the protocol's functions) against the reference's."""
    grid = inputs.size // PATCH
    per_image = patches_per_image(memory_size, inputs.n_train, HBIRD["aug_epochs"], grid * grid)
    feats, labels, keeps = [], [], []
    for epoch in inputs.train:
        for images, masks, noise in epoch:
            counts = patch_class_counts(masks, PATCH, inputs.num_classes)
            keep = None if memory_size is None else select_patches(counts, per_image, noise)
            f, lab = memory_entries(inputs.table.lookup(images, "check"), counts, keep, "cpu")
            feats.append(f), labels.append(lab), keeps.append(keep)
    feats, labels = torch.cat(feats), torch.cat(labels)
    lines = []
    if memory_size is not None:
        ours, theirs = np.concatenate(keeps), np.concatenate(ref.sampled)
        same_set = (np.sort(ours, 1) == np.sort(theirs, 1)).all(1)
        same_order = (ours == theirs).all(1)
        lines.append(
            f"selected patches: the same set in {same_set.sum()}/{len(ours)} memory images, "
            f"in the same order in {same_order.sum()}/{len(ours)} ({per_image} of {grid * grid} per image)"
        )
    if feats.shape != ref.feature_memory.shape or labels.shape != ref.label_memory.shape:
        lines.append(f"memory shape differs: ours {tuple(feats.shape)}, reference {tuple(ref.feature_memory.shape)}")
    else:
        lines.append(
            f"memory ({len(feats)} rows): max |feature diff| "
            f"{(feats - ref.feature_memory).abs().max().item():.1e}, max |soft-label diff| "
            f"{(labels - ref.label_memory).abs().max().item():.1e}"
        )
    return lines


def check_search(inputs: HbirdInputs, ref: ReferenceRun, ours: OurRun) -> list[str]:
    """Neighbours found and pixels predicted, query by query and pixel by pixel."""
    k = HBIRD["k"]
    if ours.neighbours.shape != ref.neighbours.shape:
        return [f"neighbour arrays differ in shape: ours {ours.neighbours.shape}, reference {ref.neighbours.shape}"]
    same = (np.sort(ours.neighbours, 1) == np.sort(ref.neighbours, 1)).all(1)
    line = f"neighbour search: the same {k} memory rows for {same.sum():,}/{len(same):,} query patches"
    if not same.all():
        queries = np.concatenate([inputs.table.lookup(images, "check") for images, _ in inputs.val])
        queries = queries.reshape(-1, FEATURE_DIM).astype(np.float64)
        bank = ref.feature_memory.double().numpy()  # the same rows as ours (checked above)
        closest = 0.0
        for j in np.flatnonzero(~same):
            cosines = bank[np.setxor1d(ours.neighbours[j], ref.neighbours[j])] @ (
                queries[j] / np.linalg.norm(queries[j])
            )
            closest = max(closest, float(cosines.max() - cosines.min()))
        line += (
            f"; the other {(~same).sum()} swap rows at rank {k} whose cosines (float64) differ by at most "
            f"{closest:.1e}, a float32 near-tie that the two matrix products round differently"
        )
    scored = np.concatenate([masks for _, masks in inputs.val]).ravel() != 255
    ours_scored = ours.predictions.ravel()[scored]
    if ours_scored.shape != ref.predictions.shape:
        return [line, f"scored pixels differ: ours {ours_scored.size}, reference {ref.predictions.size}"]
    same_pixels = int((ours_scored == ref.predictions).sum())
    return [line, f"predicted class: identical for {same_pixels:,}/{ours_scored.size:,} scored pixels"]


# --- DINO kNN ------------------------------------------------------------------------------------------------------


def import_reference_knn(path: Path):
    folder = next((p for p in (path, path / "dino") if (p / "eval_knn.py").is_file()), None)
    if folder is None:
        sys.exit(
            f"--dino {path}: no eval_knn.py there or in dino/ (expected a checkout of facebookresearch/dino "
            "or adriarm/separating_knowledge)"
        )
    sys.path.insert(0, str(folder))
    module = importlib.import_module("eval_knn")
    knn = module.knn_classifier
    if "train_filenames" in inspect.signature(knn).parameters:  # separating_knowledge's variant

        def call(train_f, train_l, test_f, test_l, k, T):
            return knn(train_f, train_l, None, test_f, test_l, None, k, T)

        return call, f"{folder}/eval_knn.py (separating_knowledge signature)"
    return knn, f"{folder}/eval_knn.py"


def knn_inputs(
    seed: int, num_classes: int = 102, per_class: int = 10, n_test: int = 1020, dim: int = 64, spread: float = 2.0
):
    """Flowers102-shaped global features: Gaussian clouds around random class centres."""
    rng = np.random.default_rng([seed, 1])
    centres = rng.normal(size=(num_classes, dim))
    train_labels = np.repeat(np.arange(num_classes), per_class)
    test_labels = rng.integers(0, num_classes, n_test)
    train = (centres[train_labels] + spread * rng.normal(size=(len(train_labels), dim))).astype(np.float32)
    test = (centres[test_labels] + spread * rng.normal(size=(n_test, dim))).astype(np.float32)
    return train, train_labels, test, test_labels, num_classes


# --- report --------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    reference: float
    ours: float
    ref_seconds: float | None = None
    our_seconds: float | None = None

    @property
    def diff(self) -> float:
        return abs(self.reference - self.ours)

    @property
    def equal(self) -> bool:
        return self.diff <= TOLERANCE


def table(rows: list[Row]) -> str:
    def secs(s):
        return "" if s is None else f"{s:.2f}"

    lines = [
        "| case | reference | ours | abs diff | equal (≤ 1e-4) | reference s | ours s |",
        "|---|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.reference:.4f} | {r.ours:.4f} | {r.diff:.1e} | {'yes' if r.equal else 'NO'} "
            f"| {secs(r.ref_seconds)} | {secs(r.our_seconds)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hbird", type=Path, help="checkout of vpariza/open-hummingbird-eval")
    parser.add_argument("--dino", type=Path, help="checkout of facebookresearch/dino (or separating_knowledge)")
    parser.add_argument("--only", choices=["hbird", "knn"], help="run only the HummingBird or only the kNN cases")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("BENCH_DATA", REPO / "data")),
        help="where the procedural VOC stand-in is generated (default $BENCH_DATA or ./data)",
    )
    parser.add_argument("--size", type=int, default=224, help="HummingBird input size S (multiple of 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    for flag, needed in (("--hbird", args.only != "knn"), ("--dino", args.only != "hbird")):
        if needed and getattr(args, flag[2:]) is None:
            parser.error(f"{flag} is required" + ("" if args.only else " (or use --only)"))
    started = time.perf_counter()
    rows: list[Row] = []
    checks: list[str] = []
    problems = 0  # failed checks besides the table's rows
    if args.only != "knn":
        problems += compare_hbird(args, rows, checks)
    if args.only != "hbird":
        problems += compare_knn(args, rows, checks)

    report = table(rows)
    differ = [r for r in rows if not r.equal]
    summary = (
        f"{len(rows) - len(differ)}/{len(rows)} cases equal to 1e-4; "
        f"total run time {time.perf_counter() - started:.0f} s"
    )
    text = "\n".join([report, "", *[f"- {c}" for c in checks], "", summary])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if differ or problems else 0


def compare_hbird(args: argparse.Namespace, rows: list[Row], checks: list[str]) -> int:
    """Append the HummingBird rows and checks; return the number of failed checks."""
    hbird_eval, search_faiss = import_reference_hbird(args.hbird.resolve())
    hbird_eval.tqdm = lambda iterable, *a, **kw: iterable  # progress bars off (a display setting only)
    for name in ("hbird", "hbird.hbird_eval", "hbird.models"):
        logging.getLogger(name).setLevel(logging.WARNING)
    data = open_dataset("voc", args.data_root, synthetic=True, scale="small")
    inputs = build_hbird_inputs(data, args.size, args.seed, args.batch_size, HBIRD["aug_epochs"])
    problems = 0
    checks.append(
        f"HummingBird inputs: {inputs.n_train} memory images × {HBIRD['aug_epochs']} augmentation epochs "
        f"and {sum(len(b[0]) for b in inputs.val)} queries at S={args.size}, built in {inputs.seconds:.1f} s; "
        f"reference {args.hbird}"
    )

    for label, memory_size in (("unbounded memory", None), (f"memory {BOUNDED_MEMORY:,}", BOUNDED_MEMORY)):
        print(f"HummingBird, {label} ...", file=sys.stderr, flush=True)
        inputs.table.served.clear()
        ref = run_reference_hbird(hbird_eval, search_faiss, inputs, memory_size)
        ours = run_ours_hbird(data, inputs, memory_size)
        served = inputs.table.served
        same_inputs = served.get("reference") == served.get("ours") == set(inputs.table.features)
        checks.append(
            f"HummingBird {label}: both sides were served all {len(inputs.table.features)} input images"
            if same_inputs
            else f"HummingBird {label}: the two sides saw different images"
        )
        checks += [f"HummingBird {label}: {line}" for line in check_memory(inputs, ref, memory_size)]
        checks += [f"HummingBird {label}: {line}" for line in check_search(inputs, ref, ours)]
        rows.append(
            Row(f"HummingBird {label}, miou (Hungarian)", ref.miou, ours.metrics["miou"], ref.seconds, ours.seconds)
        )
        rows.append(Row(f"HummingBird {label}, miou_identity", ref.miou_identity, ours.metrics["miou_identity"]))
        problems += not same_inputs
    return problems


def compare_knn(args: argparse.Namespace, rows: list[Row], checks: list[str]) -> int:
    """Append the kNN rows and checks; return the number of failed checks."""
    knn_classifier, knn_source = import_reference_knn(args.dino.resolve())
    problems = 0
    print("DINO kNN ...", file=sys.stderr, flush=True)
    train, train_labels, test, test_labels, num_classes = knn_inputs(args.seed)
    ref_train, ref_test = (F.normalize(torch.from_numpy(f), dim=1, p=2) for f in (train, test))
    ref_train_labels, ref_test_labels = torch.from_numpy(train_labels), torch.from_numpy(test_labels)
    sims, index = knn_neighbours(torch.from_numpy(train), torch.from_numpy(test), max(KNN_KS))
    for k in KNN_KS:
        t0 = time.perf_counter()
        ref_top1, ref_top5 = knn_classifier(ref_train, ref_train_labels, ref_test, ref_test_labels, k, KNN_T)
        ref_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        top1, top5 = weighted_knn(train, train_labels, test, test_labels, k, KNN_T, num_classes)
        our_seconds = time.perf_counter() - t0
        protocol_path = knn_accuracy(sims, index, ref_train_labels, ref_test_labels, k, KNN_T, num_classes)
        if protocol_path != (top1, top5):
            problems += 1
            checks.append(
                f"kNN k={k}: the protocol's shared-neighbour path gives {protocol_path}, weighted_knn {(top1, top5)}"
            )
        rows.append(Row(f"DINO kNN k={k}, top-1", ref_top1, top1, ref_seconds, our_seconds))
        rows.append(Row(f"DINO kNN k={k}, top-5", ref_top5, top5))
    checks.append(
        f"kNN: {len(train)} train / {len(test)} test features, {num_classes} classes, T={KNN_T}; "
        f"reference {knn_source}; the protocol's path (neighbours once at k={max(KNN_KS)}) "
        + (
            "equals weighted_knn for every k"
            if not any("shared-neighbour" in c for c in checks)
            else "DIFFERS (see above)"
        )
    )
    return problems


if __name__ == "__main__":
    sys.exit(main())
