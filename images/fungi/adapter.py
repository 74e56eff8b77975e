"""fungi: FUNGI, "No Train, all Gain: Self-Supervised Gradients Improve Deep Frozen Representations" (Simoncini
et al., arXiv 2407.10964; code WalterSimoncini/no-train-all-gain 7ad3b75, MIT), on DINO ViT-S/16.

Backbone: exactly images/dino's (images/_vit/dino_vit.py, `DinoFamily`): timm ViT-S/16, the official backbone file
dino_deitsmall16_pretrain.pth at $BENCH_WEIGHTS (else a seeded random init, info `weights: random-init`), uint8 / 255
and ImageNet mean/std, and DINO's own position-embedding interpolation at every input size (512 for HummingBird).

dense (embed_dim 2E = 768): images/fungi/dense_fungi.py (its docstring: what is computed, the seeded draws, the
options, the deliberate differences). The support bank is built in `fit`: the raw patch tokens (after the final
norm, no CLS) of the training images the harness sends (for HummingBird tasks the memory's augmented training
images, every augmentation epoch), at the patch indices it sends (the memory's label-driven sampling;
`FitBatch.patches`, None = every patch), L2-normalised.
global (global_dim 4E = 1536): images/fungi/global_fungi.py (fungivision's KL, DINO and SimCLR gradients next to the
CLS), whose SimCLR negatives are the first 64 training images `fit` receives (the knn protocol sends them in a seeded
shuffled order; fit then returns and the harness stops sending), all of a smaller training split.

Which one `fit` prepares follows `task["output"]` ("dense" or "global"). Options (constructor): `search` ("exact",
default, or "scann", the reference's support index), `scramble` (True: the reference's neighbour reading).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from dense_fungi import DenseFungi
from dino_vit import VARIANTS, DinoFamily
from global_fungi import GlobalFungi

from benchsdk import serve

VARIANTS = {"vits16": VARIANTS["vits16"]}  # the paper's HummingBird backbone


class Fungi(DinoFamily):
    name, version = "fungi", "1.0"
    outputs = ("global", "dense")
    VARIANTS, DEFAULT = VARIANTS, "vits16"
    patch_size = 16
    fit_stage = True

    def __init__(self, variant: str | None = None, search: str = "exact", scramble: bool = True):
        super().__init__(variant)
        self.backbone_dim = self.arch.embed_dim
        self.embed_dim, self.global_dim = 2 * self.backbone_dim, 4 * self.backbone_dim
        self.search, self.scramble = search, scramble
        self.dense = self.global_ = None

    def info(self):
        return dict(super().info(), search=self.search, scramble=self.scramble)  # global_dim: benchsdk's

    def setup(self, seed, task):
        super().setup(seed, task)
        self.seed, self.task = int(seed), dict(task or {})
        self.output = self.task.get("output") or "dense"
        if self.output == "dense":
            self.dense = DenseFungi(self.model, self.seed, search=self.search, scramble=self.scramble)
        else:
            self.global_ = GlobalFungi(self.model, self.seed, device=self.device)

    def fit(self, batches):
        if self.output == "dense":
            for batch in batches:
                with torch.inference_mode():  # batch: benchsdk.FitBatch(images, labels, patches)
                    tokens = self._tokens(np.asarray(batch.images))[:, self.model.num_prefix_tokens :]
                self.dense.add_support(tokens, batch.patches)
            self.dense.build_index()
            return
        for batch in batches:  # the first 64 images, then return: the harness stops sending
            if not self.global_.fit_negatives(np.asarray(batch.images)):
                return
        used = self.global_.finish_negatives()  # a training split of fewer than 64 images: all of them
        print(
            f"fungi: only {used} training images for the {self.global_.num_negatives} SimCLR negatives", file=sys.stderr
        )

    def embed_dense(self, images):
        if self.dense is None:
            raise RuntimeError(f"fungi was set up for {self.output!r} output; dense features need output 'dense'")
        n, h, w, _ = images.shape
        out = self.dense.features(self.prepare(images))
        return out.reshape(n, h // self.patch_size, w // self.patch_size, -1).float().cpu().numpy()

    def embed(self, images):
        if self.global_ is None:
            raise RuntimeError(f"fungi was set up for {self.output!r} output; global features need output 'global'")
        return self.global_.features(images)


if __name__ == "__main__":
    serve(Fungi())
