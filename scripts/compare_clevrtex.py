"""Run ClevrTex's official CLEVRTEX_Evaluator side by side with the harness's objseg protocol on identical inputs.

    .venv/bin/python scripts/compare_clevrtex.py --reference /path/to/clevrtex-checkout [--scale small]

The checkout is karazijal/clevrtex (only `ool/clevrtex_eval.py` is imported; it needs torch, torchvision, scipy,
scikit-learn and Pillow, all in the harness's environment). On the procedural ClevrTex stand-ins of every variant:
1. the official CLEVRTEX loader (crop, resize) and our reader + `center_crop_resize` must give identical images
   and masks;
2. for several kinds of predicted masks and reconstructions (made once from the official loader's images and masks),
   the official evaluator (fed in batches, as its notebook does) and our protocol run end to end (fed through an
   in-process session) must agree: |ours − official| ≤ --tol on every metric (percent; MSE relative).
Prints one table row per variant and prediction kind, then the largest difference per metric; exit 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.data import open_dataset  # noqa: E402
from harness.data.clevrtex import VARIANTS  # noqa: E402
from harness.protocols.base import RunContext  # noqa: E402
from harness.protocols.objseg import ObjsegParams, ObjsegProtocol, load_objseg_sample  # noqa: E402

# ours -> the official evaluator's statistic, and whether it is reported in percent
METRICS = {
    "miou_fg": ("mIoU_fg", True),
    "ari_fg": ("ARI_FG", True),
    "miou": ("mIoU", True),
    "miou_corrected": ("mIoU_gt", True),
    "ari": ("ARI", True),
    "dice": ("DICE", True),
    "dice_fg": ("DICE_FG", True),
    "acc": ("acc", True),
    "msc": ("mSC", True),
    "mse": ("MSE", False),
}
SLOTS = 11


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return (labels[:, None] == np.arange(k)[None, :, None, None]).astype(np.float32)


def mean_colours(images: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N, 3, H, W): every pixel painted with the mean colour of its segment."""
    out = np.empty_like(images)
    for i in range(len(images)):
        counts = np.bincount(labels[i].ravel(), minlength=k)
        for c in range(3):
            sums = np.bincount(labels[i].ravel(), weights=images[i, c].ravel(), minlength=k)
            out[i, c] = (sums / np.maximum(counts, 1))[labels[i]]
    return out


def blocks(rng: np.random.Generator, n: int, size: int, k: int, cell: int) -> np.ndarray:
    coarse = rng.integers(0, k, size=(n, size // cell, size // cell))
    return np.kron(coarse, np.ones((1, cell, cell), dtype=np.int64))


def predictions(kind: str, images: np.ndarray, gt: np.ndarray, rng: np.random.Generator, pixels):
    """(masks (N, K, H, W), reconstructions (N, 3, H, W) or None, masks_have_background) of one kind."""
    n, _, size, _ = images.shape
    noisy = np.clip(images + rng.normal(0, 0.05, images.shape), 0, 1).astype(np.float32)
    if kind == "oracle":
        return one_hot(gt, SLOTS), images, True
    if kind == "oracle_fg_slots":  # the reference prepends the background
        return one_hot(gt, SLOTS)[:, 1:], noisy, False
    if kind == "one_mask":
        return np.ones((n, 1, size, size), np.float32), mean_colours(images, np.zeros_like(gt), 1), True
    if kind == "soft_noisy_gt":
        logits = torch.from_numpy(3 * one_hot(gt, SLOTS) + rng.normal(0, 1.5, (n, SLOTS, size, size)))
        return torch.softmax(logits, 1).float().numpy(), noisy, True
    if kind == "blocks_7":  # fewer slots than GT ids: padding
        labels = blocks(rng, n, size, 7, 16)
        return one_hot(labels, 7), mean_colours(images, labels, 7), True
    if kind == "split_merge_16":  # objects merged in pairs, extra slots from random blocks: the mIoU_fg quirk
        labels = np.where(blocks(rng, n, size, 3, 32) == 0, 11 + blocks(rng, n, size, 5, 8), (gt + 1) // 2)
        return one_hot(labels, 16), mean_colours(images, labels, 16), True
    if kind == "soft_random_no_bg":
        soft = rng.dirichlet(np.ones(8), size=(n, size, size)).transpose(0, 3, 1, 2).astype(np.float32)
        return 0.9 * soft, None, False
    if kind == "pixels_kmeans":
        masks, recon = pixels.segment((images.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8))
        return masks, recon, True
    raise ValueError(kind)


KINDS = (
    "oracle",
    "oracle_fg_slots",
    "one_mask",
    "soft_noisy_gt",
    "blocks_7",
    "split_merge_16",
    "soft_random_no_bg",
    "pixels_kmeans",
)


class ReplaySession:
    """Serves precomputed outputs in order, checking it receives the official loader's images."""

    def __init__(self, images, masks, recon, have_background):
        self.images, self.masks, self.recon, self.at = images, masks, recon, 0
        self.info = {"masks_have_background": have_background}

    def segment(self, batch):
        part = slice(self.at, self.at + len(batch))
        expected = (self.images[part].transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
        if not np.array_equal(batch, expected):
            raise AssertionError("the protocol sent other images than the official loader gives")
        self.at += len(batch)
        return self.masks[part], None if self.recon is None else self.recon[part]


def official(reference, images, gt, masks, recon, have_background, batch_size):
    """The official statistics, and how many images it scored with fewer slots than we do: it pads the slots to
    max(K, 1 + the largest GT id of the batch), we to max(K, 11, 1 + the image's largest GT id)."""
    evaluator = reference.CLEVRTEX_Evaluator(masks_have_background=have_background)
    recon = images if recon is None else recon  # MSE is always computed there; ignored below when recon is None
    slots, fewer_slots = masks.shape[1] + (not have_background), 0
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        evaluator.update(
            torch.from_numpy(recon[part]),
            torch.from_numpy(masks[part]),
            torch.from_numpy(images[part]),
            torch.from_numpy(gt[part, None]),
        )
        fewer_slots += len(gt[part]) * (max(slots, gt[part].max() + 1) < max(slots, SLOTS))
    stats = {ours: evaluator.statistic(name) * (100 if percent else 1) for ours, (name, percent) in METRICS.items()}
    return stats, fewer_slots


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True, help="checkout of karazijal/clevrtex")
    ap.add_argument("--data-root", type=Path, default=Path("/tmp/compare-clevrtex-data"))
    ap.add_argument("--scale", default="small", choices=["tiny", "small"])
    ap.add_argument("--split", default="test", help="split compared (outd has only 'test': all its images)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="batch size fed to the official evaluator; at least 2 (with 1, its .squeeze() breaks mSC)",
    )
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    if args.batch_size < 2:
        ap.error("--batch-size must be at least 2: the official evaluator's mSC fails on batches of one")

    reference = load_module(args.reference / "ool" / "clevrtex_eval.py", "clevrtex_eval")
    pixels = load_module(REPO / "images" / "pixels" / "adapter.py", "pixels_adapter").Pixels()
    pixels.setup(0, {})
    rng = np.random.default_rng(0)
    worst = dict.fromkeys(METRICS, 0.0)
    header = f"{'variant':8} {'predictions':18} {'n':>4} {' '.join(f'{m:>16}' for m in METRICS)} pad<11   max|diff|"
    failed = False
    for variant in args.variants.split(","):
        dataset = open_dataset(f"clevrtex_{variant}", args.data_root, synthetic=True, scale=args.scale)
        split = args.split if variant != "outd" else "test"
        with contextlib.redirect_stdout(io.StringIO()):  # the official loader prints as it indexes
            loader = reference.CLEVRTEX(dataset.root, dataset_variant=variant, split=split, return_metadata=False)
        items = [loader[i] for i in range(len(loader))]
        images = torch.stack([item[1] for item in items]).numpy()
        gt = torch.cat([item[2] for item in items]).numpy().astype(np.int64)
        ours = dataset.split(split)
        if len(ours) != len(items):
            print(f"{variant}: official loader has {len(items)} images, ours {len(ours)}")
            return 1
        ours_views = [load_objseg_sample(ours, 0.8, 128, "pil", i) for i in range(len(ours))]
        same_images = np.array_equal(
            np.stack([v[0] for v in ours_views]), (images.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
        )
        same_masks = np.array_equal(np.stack([v[1] for v in ours_views]), gt)
        print(
            f"{variant:8} preprocessing: images {'identical' if same_images else 'DIFFER'}, "
            f"masks {'identical' if same_masks else 'DIFFER'}"
        )
        failed |= not (same_images and same_masks)
        print(header + "\n" + "-" * len(header))
        for kind in KINDS:
            masks, recon, have_background = predictions(kind, images, gt, rng, pixels)
            ref, fewer_slots = official(reference, images, gt, masks, recon, have_background, args.batch_size)
            session = ReplaySession(images, masks, recon, have_background)
            ctx = RunContext(session=session, seed=0, batch_size=7, num_workers=0, progress=False)
            got = ObjsegProtocol(ObjsegParams(eval_split=split)).run(dataset, ctx).metrics
            diffs = {}
            for metric, value in ref.items():
                if metric not in got:
                    continue
                scale = max(abs(value), 1.0) if metric == "mse" else 1.0
                diffs[metric] = abs(got[metric] - value) / scale
                worst[metric] = max(worst[metric], diffs[metric])
            cells = " ".join(f"{got[m]:7.3f}/{ref[m]:8.3f}" if m in got else f"{'(none)':>16}" for m in METRICS)
            bad = max(diffs.values()) > args.tol
            failed |= bad
            print(
                f"{variant:8} {kind:18} {len(items):4d} {cells} {fewer_slots:6d}   {max(diffs.values()):.1e}"
                + ("  MISMATCH" if bad else "")
            )
    print("\nlargest |ours - official| per metric (percent points; MSE relative):")
    print("  " + "  ".join(f"{m} {v:.1e}" for m, v in worst.items()))
    print(
        "cells: ours/official; pad<11: images the official evaluator scored with fewer than 11 slots (it pads to "
        "its batch's largest GT id, we to at least 11)"
    )
    print("MISMATCH" if failed else f"all equal within {args.tol}")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
