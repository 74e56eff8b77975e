"""What the two trainers (images/procedural_dino/dino_train.py, images/neco/neco_train.py) share: their recipes'
checks, DINO's cosine schedule, torchvision's RandomResizedCrop box drawn from a numpy generator, and their own
random state (torch's generators set to a run's state for a block and saved after it, the caller's restored, so two
trainers in one process do not interfere and a checkpoint can carry the state a resumed run continues from)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import fields

import numpy as np
import torch


def recipe_from_dict(cls, recipe: dict, what: str):
    """The dataclass `cls` of a trainer's recipe from `recipe`: unknown keys and crop sizes that are not multiples of
    the patch size are a ValueError; the crop scales become tuples (as a checkpoint's recipe compares)."""
    unknown = set(recipe) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} recipe keys: {', '.join(sorted(unknown))}")
    r = cls(**recipe)
    r.global_crops_scale, r.local_crops_scale = tuple(r.global_crops_scale), tuple(r.local_crops_scale)
    for size in (r.global_size, r.local_size):
        if size % r.patch_size:
            raise ValueError(f"crop size {size} is not a multiple of the patch size {r.patch_size}")
    return r


def cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0.0) -> np.ndarray:
    """One value per iteration: a linear warm-up from `start_warmup_value` to `base` over `warmup_epochs`, then a
    cosine from `base` to `final`, the last value one step short of it (DINO's utils.cosine_scheduler; NeCo's
    experiments/utils.py is the same without the warm-up)."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, schedule))


def random_resized_crop_box(height, width, scale, rng, ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop.get_params, drawn from `rng`: 10 tries at an area
    fraction in `scale` and a log-uniform aspect ratio, else the centre crop clamped to `ratio`."""
    area, log_ratio = height * width, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    if width / height < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class OwnRng:
    """Mixin for a trainer with `device` and `rng` ({"torch": state, "cuda": state on CUDA})."""

    @contextlib.contextmanager
    def _own_rng(self):
        """torch's generators set to this run's state for the block and saved after it; the caller's are restored
        (timm's drop path draws from the global generators)."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.set_rng_state(self.rng["torch"])
            if cuda:
                torch.cuda.set_rng_state(self.rng["cuda"], self.device)
            yield
            self.rng = {"torch": torch.get_rng_state()}
            if cuda:
                self.rng["cuda"] = torch.cuda.get_rng_state(self.device)
