"""The adapter every ClevrTex model shares (images/_objseg): `masks` output, trained in the fit stage or loaded.

- Weights: `$BENCH_WEIGHTS` (what `export_weights` or a fit writes: {"model", "params", "state_dict"}, the build
  params travelling with the weights) is loaded in `setup`, and `fit` then returns at once. Without it, `fit` trains
  the recipe the harness sends with setup (method.yaml `fit_recipe`; trainer.py) on the fit stage's images: the
  training split's 128x128 crops, held in memory (uint8), images only.
- `segment`: uint8 -> [0, 1] floats at the model's size, the model in eval mode with `step=None`, every draw from a
  generator seeded by the setup seed afresh for each request (a reply depends only on the seed and the request's
  images: the feature cache's rule); masks (N, K, 128, 128) and the canvas clamped to [0, 1], resized bilinearly to
  the request's size where the model runs at another (each says so in its method.yaml).
- A subclass names its model's module (`build(params) -> ObjectModel`), class, `name` and `version`.
"""

from __future__ import annotations

import os
import sys
import time
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from object_model import ObjectModel
from trainer import Recipe, Trainer, to_float

from benchsdk import Method

LOG_EVERY = 25  # training steps between progress lines on stderr


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ObjsegMethod(Method):
    outputs = ("masks",)
    fit_stage = True
    model_module: ModuleType  # the model's module: build(params) -> ObjectModel
    model_class: type[ObjectModel]  # what build makes: its masks_have_background goes into the info

    def info(self) -> dict:
        return {**super().info(), "masks_have_background": self.model_class.masks_have_background}

    def setup(self, seed: int, task: dict) -> None:
        self.seed, self.device = seed, device()
        self.model: ObjectModel | None = None
        if weights := os.environ.get("BENCH_WEIGHTS"):
            saved = torch.load(weights, map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or saved.get("model") != self.name or "state_dict" not in saved:
                raise ValueError(f"{weights}: not {self.name} weights (expected the file export_weights writes)")
            self.model = self.model_module.build(saved["params"]).to(self.device)
            self.model.load_state_dict(saved["state_dict"])
        elif self.fit_recipe is None:
            raise ValueError(
                f"{self.name} has neither weights ($BENCH_WEIGHTS) nor a fit recipe (method.yaml fit_recipe) to train"
            )

    def fit(self, batches) -> None:
        if self.model is not None:  # weights given: nothing to train
            return
        recipe = Recipe.of(self.fit_recipe["params"])
        images = collect(batches, recipe.max_images)
        trainer = Trainer(self.model_module.build, recipe, images, self.seed, self.device)
        train(trainer, int(self.fit_recipe["steps"]), f"{self.name} fit recipe {self.fit_recipe['name']!r}")
        self.model = trainer.model

    def export_weights(self, path: str) -> None:
        """The trained model as $BENCH_WEIGHTS takes it: {"model": name, "params": build params, "state_dict"}."""
        if self.model is None:
            raise RuntimeError("no trained model to export")
        torch.save({"model": self.name, "params": self.model.params, "state_dict": self.model.state_dict()}, path)

    def segment(self, images: np.ndarray):
        if self.model is None:
            raise RuntimeError("segment before the fit stage trained a model")
        model = self.model.eval()
        x = to_float(images, model.image_size, self.device)
        generator = torch.Generator(self.device).manual_seed(self.seed)
        with torch.no_grad():
            out = model(x, generator, None)
        masks, canvas = out.masks.float(), out.canvas.float().clamp(0, 1)
        size = images.shape[1:3]
        if tuple(masks.shape[-2:]) != tuple(size):
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
            canvas = F.interpolate(canvas, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
        return masks.cpu().numpy(), canvas.cpu().numpy()


def collect(batches, limit: int | None) -> np.ndarray:
    """The fit stage's images (N, H, W, 3) uint8, stopping the stream after `limit` images (None: all of them)."""
    chunks, n = [], 0
    for batch in batches:
        chunks.append(np.asarray(batch.images, dtype=np.uint8))
        n += len(batch.images)
        if limit is not None and n >= limit:
            break
    if not chunks:
        raise ValueError("the fit stage sent no images")
    return np.concatenate(chunks)[:limit]


def train(trainer: Trainer, steps: int, what: str) -> None:
    """`steps` optimisation steps, a progress line (loss, terms, seconds per step) every LOG_EVERY on stderr."""
    print(f"{what}: {steps} steps on {len(trainer.images)} images, batch {trainer.recipe.batch_size}", file=sys.stderr)
    t0 = time.perf_counter()
    while trainer.step_index < steps:
        out = trainer.step()
        if trainer.step_index % LOG_EVERY == 0 or trainer.step_index == steps:
            rate = (time.perf_counter() - t0) / trainer.step_index
            terms = " ".join(f"{k} {v:.4g}" for k, v in out.terms.items() if k != "loss")
            print(f"step {trainer.step_index}/{steps} loss {float(out.loss.detach()):.5g} {terms} ({rate:.2f} s/step)",
                  file=sys.stderr, flush=True)  # fmt: skip
