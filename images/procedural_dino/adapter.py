"""procedural_dino: DINO trained on procedural images only ("Separating Knowledge and Perception with Procedural
Data", adriarm/separating_knowledge b126018), trained by `bench train` and evaluated as images/dino evaluates DINO.

Variants ($BENCH_VARIANT; unset = vits16): vits16 (ViT-S/16, the paper's), vitt16 (ViT-Ti/16, the `tiny` CPU recipe's).
No trained encoders are published: the weights are what `bench train --method procedural_dino --recipe R` exports,
main_dino.py's checkpoint layout (`teacher`: backbone.* and head.*), loaded as images/dino loads a full checkpoint
(the teacher backbone; head.* the only keys left out). Without them, a seeded random init (`weights: random-init`).
Evaluation: images/_vit (`DinoFamily`): CLS / patch tokens after the final norm, DINO's position embeddings.

Training (the contract's train_* ops): `Trainer` (dino_train.py: main_dino.py's loop in one process) on images this
method makes itself (procedural.py), chosen by the recipe's `data`:
- `shader_like`: the CPU substitute for shaders21k (shader-like, **not shaders21k**);
- `kml`: Shaders KML (fast2leaves.py) of those; `kml_mixup`: S. KML Mixup (mixup_dataset.py, N=2) of the KML images;
- `folder:<path>` as the source instead of shader_like: real shaders21k images the user mounts.
Generated data: `pool` images are made once at train_start (index i = procedural image i). A folder is read as it
is, image by image (the paper's run reads the S. KML Mixup set made beforehand, as the reference's
data_generation/ scripts make it). Step s trains on images (s·B ... s·B + B−1) mod the dataset's size, so the data
needs no state to resume; the trainer's own RNG state is in every checkpoint. The other params are dino_train.Recipe's (crop sizes, batch, lr, temperatures, out_dim, epochs, ...).
"""

from __future__ import annotations

import numpy as np
import torch
from dino_train import Trainer
from dino_vit import Arch, DinoFamily
from procedural import KML, ImageFolderSource, Mixup, ShaderLike, to_uint8

from benchsdk import serve


class ProceduralArch(Arch):
    @property
    def url(self) -> str:
        return "none published: made by `bench train --method procedural_dino`"


VARIANTS = {
    "vits16": ProceduralArch("vit_small_patch16_224", 384, "procedural_dino_vits16"),
    "vitt16": ProceduralArch("vit_tiny_patch16_224", 192, "procedural_dino_vitt16"),
}
TRAINER_ARCH = {"vits16": "vit_small", "vitt16": "vit_tiny"}
DATA_KEYS = ("data", "pool", "image_size")


def source(data: str, size: int, n: int):
    """The recipe's training images, indexable (3, H, W) floats in [0, 1] (procedural.py's sources)."""
    kind, _, folder = data.partition(":")
    base = ImageFolderSource(folder) if kind == "folder" else ShaderLike(n, size=size)
    if kind in ("shader_like", "folder"):
        return base
    if kind == "kml":
        return KML(base)
    if kind == "kml_mixup":
        return Mixup(KML(base), 2)
    raise ValueError(f"unknown data {data!r}: shader_like, kml, kml_mixup or folder:<path>")


class ProceduralDino(DinoFamily):
    name, version = "procedural_dino", "1.0"
    VARIANTS, DEFAULT = VARIANTS, "vits16"

    def train_start(self, recipe, params, seed, checkpoint):
        data = {k: params[k] for k in DATA_KEYS if k in params}
        size, pool = int(data.get("image_size", 256)), int(data.get("pool", 1024))
        images = source(str(data.get("data", "kml_mixup")), size, pool)
        if isinstance(images, ImageFolderSource):  # read per step: a real dataset does not fit in memory
            self.images = images
        else:  # generated: made once, (P, H, W, 3) uint8
            self.images = np.stack([to_uint8(images[i % len(images)]) for i in range(pool)])
        hyper = {k: v for k, v in params.items() if k not in DATA_KEYS}
        self.trainer = Trainer(dict(hyper, arch=TRAINER_ARCH[self.variant], patch_size=self.patch_size, seed=seed))
        if checkpoint:
            self.trainer.load_state_dict(torch.load(checkpoint, map_location=self.trainer.device, weights_only=True))
        return self.trainer.step_index

    def train_step(self, images):
        b, s = self.trainer.recipe.batch_size, self.trainer.step_index
        picked = np.arange(s * b, s * b + b) % len(self.images)
        if isinstance(self.images, np.ndarray):
            return self.trainer.step(self.images[picked])
        return self.trainer.step([to_uint8(self.images[int(i)]) for i in picked])

    def save_checkpoint(self, path):
        torch.save(self.trainer.state_dict(), path)

    def export_weights(self, path):
        torch.save(self.trainer.teacher_backbone_state(), path)


if __name__ == "__main__":
    serve(ProceduralDino())
