"""The protocols' preprocessing on uint8 images (H, W, 3) and class masks (H, W); every function returns uint8 arrays.

Randomness comes only from the numpy Generator passed in, so a sample's augmentation depends on its own seed alone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

HBIRD_JITTER = 0.1  # strength of each of the four colour jitters
HBIRD_JITTER_P = 0.5
HBIRD_CROP_SCALE = (0.5, 2.0)
HBIRD_CROP_RATIO = (3 / 4, 4 / 3)


def _pil(img: np.ndarray | Image.Image) -> Image.Image:
    return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, dtype=np.uint8))


def squash_resize(img: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Resize to size×size ignoring the aspect ratio (PIL bilinear, as torchvision Resize on a PIL image)."""
    return np.asarray(TF.resize(_pil(img), [size, size], InterpolationMode.BILINEAR))


def resize_mask_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a class mask to size×size with torch's "nearest" (source index floor(dst · in/out)).

    This is what the reference gets from torchvision's resize of a mask tensor; PIL's nearest samples pixel
    centres instead and can differ by one pixel at class borders.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None, None]
    return F.interpolate(tensor, size=(size, size), mode="nearest")[0, 0].numpy()


def random_resized_crop_params(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) by torchvision's RandomResizedCrop.get_params algorithm, drawn from `rng`.

    Ten tries of a uniform area fraction and a log-uniform aspect ratio, rejecting boxes that do not fit;
    then the centred crop of the whole image clamped to the ratio range.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def colour_jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """HummingBird's four independent jitters, each applied with p=0.5, in the order brightness, contrast,
    saturation, hue; factors drawn as torchvision's ColorJitter with strength 0.1."""
    low, high = 1 - HBIRD_JITTER, 1 + HBIRD_JITTER
    adjustments = (
        (TF.adjust_brightness, (low, high)),
        (TF.adjust_contrast, (low, high)),
        (TF.adjust_saturation, (low, high)),
        (TF.adjust_hue, (-HBIRD_JITTER, HBIRD_JITTER)),
    )
    for adjust, factor_range in adjustments:
        if rng.random() < HBIRD_JITTER_P:
            img = adjust(img, float(rng.uniform(*factor_range)))
    return img


def hbird_train_augment(
    img: np.ndarray | Image.Image, mask: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """HummingBird memory augmentation: colour jitter, then one RandomResizedCrop to size×size applied to
    the image (bilinear) and the mask (nearest). No flip."""
    img = colour_jitter(_pil(img), rng)
    top, left, h, w = random_resized_crop_params(img.height, img.width, HBIRD_CROP_SCALE, HBIRD_CROP_RATIO, rng)
    crop = TF.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BILINEAR)
    return np.asarray(crop), resize_mask_nearest(np.asarray(mask)[top : top + h, left : left + w], size)


def dino_eval_transform(img: np.ndarray | Image.Image) -> np.ndarray:
    """DINO's kNN preprocessing: shorter side to 256 (bicubic), then the centred 224×224 crop."""
    resized = TF.resize(_pil(img), 256, InterpolationMode.BICUBIC)
    return np.asarray(TF.center_crop(resized, [224, 224]))


def squash_resize_linear(img: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Resize to size×size ignoring the aspect ratio with plain bilinear interpolation and no antialiasing
    (pixel centres aligned), as OpenCV's cv2.resize default INTER_LINEAR: seed 000's COCO loader. Rounded to
    uint8; OpenCV's fixed-point arithmetic can differ from this by one grey level."""
    tensor = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


@contextmanager
def one_torch_thread():
    """Run torch's CPU kernels on one thread: its bilinear resize rounds differently on two threads than on one (40 of
    49,152 uint8 values of a 128x128 image differ after rounding), so a sample would depend on whether it was loaded
    in a data-loader worker (one thread, as the reference's DataLoader) or in the main process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def center_crop_resize(
    img: np.ndarray | Image.Image, mask: np.ndarray, fraction: float, size: int, resample: str = "pil"
) -> tuple[np.ndarray, np.ndarray]:
    """The centred square of side c = int(fraction · min(W, H)) at ((W − c)//2, (H − c)//2), resized to size×size.

    resample "pil": PIL bilinear image (antialiased) and PIL nearest mask (pixel centres), as ClevrTex's official
    CLEVRTEX loader. "tensor": torch bilinear without antialiasing (align_corners=False) on the image in [0, 1],
    rounded back to uint8, and torch nearest mask (`resize_mask_nearest`), as the ClevrTex repository's
    CentreCrop + Resize pipeline for its other datasets (CLEVR with masks), torchvision 0.9's tensor resize."""
    img = _pil(img)
    side = int(fraction * float(min(img.width, img.height)))
    left, top = (img.width - side) // 2, (img.height - side) // 2
    mask = np.asarray(mask, dtype=np.uint8)[top : top + side, left : left + side]
    if resample == "tensor":
        crop = torch.from_numpy(np.array(img)[top : top + side, left : left + side]).permute(2, 0, 1)[None]
        with one_torch_thread():
            resized = F.interpolate(crop.float() / 255, size=(size, size), mode="bilinear", align_corners=False)
        image = (resized[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        return np.ascontiguousarray(image), resize_mask_nearest(mask, size)
    if resample != "pil":
        raise ValueError(f"resample must be 'pil' or 'tensor', got {resample!r}")
    image = img.crop((left, top, left + side, top + side)).resize((size, size), resample=Image.Resampling.BILINEAR)
    labels = Image.fromarray(mask).resize((size, size), resample=Image.Resampling.NEAREST)
    return np.asarray(image), np.asarray(labels)
