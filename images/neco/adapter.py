"""neco: NeCo (vpariza/NeCo 3932160) ViT-S/14 and ViT-B/14 backbones: the DINOv2 architecture without registers.

Variant ($BENCH_VARIANT, or `Neco(variant=...)`; unset = vits14): vits14, vitb14, built as timm's
vit_{small,base}_patch14_dinov2 at the 518 grid (37×37), the hub models the NeCo README loads its files into.
Weights: $BENCH_WEIGHTS = a NeCo backbone state dict (the README's "student" downloads; the paper's model is
NeCo on DINOv2R-XR, `neco_on_dinov2r_xr_vit14_model.ckpt`): the DINOv2 keys (mask_token included) plus the
training projection head `projection_head.*`, which the README's `load_state_dict(strict=False)` leaves unexpected.
Here the load asserts exactly that: every DINOv2 key present with its shape, nothing else but `projection_head.*`;
anything else (a Lightning training checkpoint, whose keys are `model.*` / `teacher.*` under `state_dict`, or a file
with registers) is one error naming the file and what it holds, never a silent partial load. timm's
`checkpoint_filter_fn` converts the keys (drops mask_token) and they load strict=True. Without $BENCH_WEIGHTS: a
random init seeded in setup (info says `weights: random-init`).
Preprocessing: uint8 / 255, ImageNet mean/std (NeCo's evaluation transforms). global: the CLS token after the final
norm (`x_norm_clstoken`; NeCo trains no CLS objective). dense: the patch tokens after the final norm,
`forward_backbone(x)[:, 1:]` of src/models/vit_v2.py (L399-407), the features NeCo's evaluations take, row-major
(N, H/14, W/14, D).
Position embeddings follow NeCo's `interpolate_pos_encoding` (vit_v2.py L204-232, the DINOv2 no-register formula, its
antialias argument commented out): bicubic by scale factor ((H/14 + 0.1)/37, (W/14 + 0.1)/37), no antialias,
computed once per input size and set on the model with its patch embedding resized to that size
(scripts/compare_backbones.py checks it against NeCo's forward).
Deliberate differences: timm's attention is scaled_dot_product_attention where NeCo's (without xFormers) is
explicit (q·kᵀ, softmax): about 3e-6 apart in fp32; no projection head (it only serves training); fp32. No `fit`
stage: NeCo's fine-tuning is not reproduced here.
The pos-embedding formula, the key check, preprocessing and outputs are images/_vit/vit_backbone.py's, shared with
images/dino and images/dinov2 (method.yaml: `include: [../_vit]`).
"""

from __future__ import annotations

from dataclasses import dataclass

from vit_backbone import Arch as ViTArch
from vit_backbone import ViTBackbone, read_state_dict

from benchsdk import serve

URL = "https://huggingface.co/FunAILab/NeCo/resolve/main"


@dataclass(frozen=True)
class Arch(ViTArch):
    folder: str  # where the README's download sits under URL

    file = "neco_on_dinov2r_xr_vit14_model.ckpt"  # the student of NeCo on DINOv2R-XR, the paper's model

    @property
    def url(self) -> str:
        return f"{URL}/{self.folder}/dinov2-architectures/{self.file}"


VARIANTS = {
    "vits14": Arch("vit_small_patch14_dinov2", 384, "vit-small"),
    "vitb14": Arch("vit_base_patch14_dinov2", 768, "vit-base"),
}
DEFAULT = "vits14"


class Neco(ViTBackbone):
    name, version = "neco", "1.0"
    VARIANTS, DEFAULT = VARIANTS, DEFAULT
    patch_size = 14
    create_kwargs = {"init_values": 1.0}  # DINOv2's LayerScale
    extra_prefixes = ("projection_head.",)  # the training head, in every NeCo backbone file

    def official_shapes(self, model) -> dict:
        """Key -> shape of the official state dict of this architecture, from the timm model's."""
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        shapes["mask_token"] = (1, self.embed_dim)  # the only key timm has not
        return shapes

    def load(self, model, path: str) -> None:
        """A NeCo backbone state dict at `path` into the timm model, every key checked (see the module docstring)."""
        state = read_state_dict(path)
        try:  # a file that passes the key check has no `state_dict` entry: only the check's errors are extended
            self.load_checked(model, state, path, self.official_shapes(model), self.extra_prefixes)
        except ValueError as e:
            if not isinstance(state.get("state_dict"), dict):
                raise
            raise ValueError(
                f"{e}. This looks like a Lightning training checkpoint: its student backbone is the state_dict's "
                "`model.*` entries without the prefix (NeCo's experiments/utils.py get_backbone_weights)"
            ) from None


if __name__ == "__main__":
    serve(Neco())
