"""dino: DINO ViT-S/16 and ViT-B/16 (facebookresearch/dino 7c446df), on timm.

Variant ($BENCH_VARIANT, or `Dino(variant=...)`; unset = vits16): vits16, vitb16, built as timm's
vit_{small,base}_patch16_224 at the official 224 grid (14×14).
Weights: $BENCH_WEIGHTS = the official backbone file (dino_deitsmall16_pretrain.pth, dino_vitbase16_pretrain.pth:
the plain state dict hubconf.py loads strict=True), or a training checkpoint (`*_full_checkpoint.pth`, main_dino.py
L278-288), of which the `teacher` entry is taken with `module.` and `backbone.` removed, as
`utils.load_pretrained_weights` does (L71-82); its `head.*` (the DINO head) is the one part left out. The keys must be
exactly the architecture's (shapes checked); timm's `checkpoint_filter_fn` passes them through and they load
strict=True. Without $BENCH_WEIGHTS: a random init seeded in setup (info says `weights: random-init`).
Preprocessing: uint8 / 255, ImageNet mean/std, as DINO's evaluations (eval_knn.py, eval_linear.py).
global: the CLS token after the final norm (`VisionTransformer.forward`). dense: the patch tokens after the final
norm (`get_intermediate_layers(x, 1)[0][:, 1:]`), row-major (N, H/16, W/16, D).
Position embeddings follow `VisionTransformer.interpolate_pos_encoding` (vision_transformer.py L174-194) at every
input size: bicubic by scale factor ((H/16 + 0.1)/14, (W/16 + 0.1)/14), no antialias, computed once per input size
and set on the model with its patch embedding resized to that size (scripts/compare_backbones.py checks it against
the official forward); timm's own resampling (dynamic_img_size, or img_size= at load) is antialiased and size-based,
which differs at every size but 224.
Deliberate differences: timm's attention is scaled_dot_product_attention where DINO's is explicit (q·kᵀ, softmax):
about 2e-6 apart in fp32; fp32.
The pos-embedding formula, the key check, preprocessing and outputs are images/_vit/vit_backbone.py's, shared with
images/dinov2 and images/neco (method.yaml: `include: [../_vit]`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from vit_backbone import Arch as ViTArch
from vit_backbone import ViTBackbone, read_state_dict

from benchsdk import serve

URL = "https://dl.fbaipublicfiles.com/dino"


@dataclass(frozen=True)
class Arch(ViTArch):
    base: str  # the official file's name without .pth

    @property
    def file(self) -> str:
        return f"{self.base}.pth"

    @property
    def url(self) -> str:
        return f"{URL}/{self.base}/{self.file}"


VARIANTS = {
    "vits16": Arch("vit_small_patch16_224", 384, "dino_deitsmall16_pretrain"),
    "vitb16": Arch("vit_base_patch16_224", 768, "dino_vitbase16_pretrain"),
}
DEFAULT = "vits16"
CHECKPOINT_KEY = "teacher"  # utils.load_pretrained_weights' default checkpoint_key in the evaluations


class Dino(ViTBackbone):
    name, version = "dino", "1.0"
    VARIANTS, DEFAULT = VARIANTS, DEFAULT
    patch_size = 16

    def load(self, model, path: str) -> None:
        """The official backbone state dict, or a full checkpoint's teacher, at `path` into the timm model, every key
        checked (see the module docstring)."""
        state, extra = read_state_dict(path, allowed=(argparse.Namespace,)), ()  # a full checkpoint's `args`
        if CHECKPOINT_KEY in state:
            state, extra = state[CHECKPOINT_KEY], ("head.",)
            state = {k.replace("module.", "").replace("backbone.", ""): v for k, v in state.items()}
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # DINO's keys are timm's
        self.load_checked(model, state, path, shapes, extra)


if __name__ == "__main__":
    serve(Dino())
