"""dinov2: DINOv2 ViT-S/14 and ViT-B/14, with and without registers (facebookresearch/dinov2 b8931f7), on timm.

Variant ($BENCH_VARIANT, or `Dinov2(variant=...)`; unset = vits14): vits14, vitb14, vits14_reg, vitb14_reg, built as
timm's vit_{small,base}_patch14[_reg4]_dinov2 at the official 518 grid (37×37).
Weights: $BENCH_WEIGHTS = the official file (dinov2_vits14_pretrain.pth, dinov2_vits14_reg4_pretrain.pth, ...), the
plain state dict `hub/backbones.py:_make_dinov2_model` loads strict=True. Its keys must be exactly the official
architecture's (mask_token and register_tokens included, shapes checked), then timm's `checkpoint_filter_fn` converts
them (registers: cls_token + pos_embed[0] into cls_token, the model is no-embed-class) and they load strict=True.
Without $BENCH_WEIGHTS: a random init seeded in setup (info says `weights: random-init`).
Preprocessing: uint8 / 255, ImageNet mean/std, as the official evaluation transforms.
global: the CLS token after the final norm (`x_norm_clstoken`). dense: the patch tokens after the final norm without
CLS and registers (`x_norm_patchtokens`), row-major (N, H/14, W/14, D).
Position embeddings follow `DinoVisionTransformer.interpolate_pos_encoding` (vision_transformer.py L180-212) at every
input size: without registers bicubic by scale factor ((H/14 + 0.1)/37, (W/14 + 0.1)/37), no antialias; with
registers (the hub passes interpolate_offset=0, interpolate_antialias=True) bicubic to the size, antialiased. The
grid is computed once per input size and set on the model with its patch embedding resized to that size, the route
that matches the official forward (scripts/compare_backbones.py); timm's own resampling (dynamic_img_size, or
img_size= at load) is antialiased and size-based, which differs from the non-register models at every size but 518.
Deliberate differences: timm's attention (scaled_dot_product_attention, as DINOv2 without xFormers); fp32.
The pos-embedding formula, the key check, preprocessing and outputs are images/_vit/vit_backbone.py's, shared with
images/dino and images/neco (method.yaml: `include: [../_vit]`).
"""

from __future__ import annotations

from dataclasses import dataclass

from vit_backbone import Arch as ViTArch
from vit_backbone import ViTBackbone, read_state_dict

from benchsdk import serve

URL = "https://dl.fbaipublicfiles.com/dinov2"


@dataclass(frozen=True)
class Arch(ViTArch):
    registers: bool
    base: str  # the official model name (dinov2/hub/utils.py:_make_dinov2_model_name) without the registers

    @property
    def file(self) -> str:
        return f"{self.base}{'_reg4' if self.registers else ''}_pretrain.pth"

    @property
    def url(self) -> str:
        return f"{URL}/{self.base}/{self.file}"


VARIANTS = {
    "vits14": Arch("vit_small_patch14_dinov2", 384, False, "dinov2_vits14"),
    "vitb14": Arch("vit_base_patch14_dinov2", 768, False, "dinov2_vitb14"),
    "vits14_reg": Arch("vit_small_patch14_reg4_dinov2", 384, True, "dinov2_vits14"),
    "vitb14_reg": Arch("vit_base_patch14_reg4_dinov2", 768, True, "dinov2_vitb14"),
}
DEFAULT = "vits14"


class Dinov2(ViTBackbone):
    name, version = "dinov2", "1.0"
    VARIANTS, DEFAULT = VARIANTS, DEFAULT
    patch_size = 14
    create_kwargs = {"init_values": 1.0}  # DINOv2's LayerScale
    extra_prefixes: tuple[str, ...] = ()  # keys a checkpoint may hold beyond the backbone's (NeCo: its head)

    def official_shapes(self, model) -> dict:
        """Key -> shape of the official state dict of this architecture, from the timm model's."""
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        shapes["mask_token"] = (1, self.embed_dim)
        if self.arch.registers:  # timm: reg_token, cls_token with pos_embed[0] folded in, pos_embed without it
            shapes["register_tokens"] = shapes.pop("reg_token")
            n = shapes["pos_embed"][1]
            shapes["pos_embed"] = (1, n + 1, self.embed_dim)
        return shapes

    def load(self, model, path: str) -> None:
        """The official state dict at `path` into the timm model, every key checked (see the module docstring)."""
        self.load_checked(model, read_state_dict(path), path, self.official_shapes(model), self.extra_prefixes)

    def pos_embed_settings(self) -> tuple[int, float, bool]:
        """Without registers the official offset, no antialias; with registers (the hub's interpolate_offset=0,
        interpolate_antialias=True) bicubic to the size, antialiased, on timm's grid without the CLS position."""
        return (0, 0.0, True) if self.arch.registers else (1, 0.1, False)


if __name__ == "__main__":
    serve(Dinov2())
