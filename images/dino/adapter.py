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
images/dinov2 and images/neco (method.yaml: `include: [../_vit]`); the architectures, files and checkpoint loading
above are images/_vit/dino_vit.py's (`DinoFamily`), shared with images/fungi, whose backbone this is.
"""

from __future__ import annotations

from dino_vit import DEFAULT, VARIANTS, DinoFamily  # noqa: F401  (the variants, as every family adapter lists them)

from benchsdk import serve


class Dino(DinoFamily):
    """DINO ViT-S/16 or ViT-B/16 (the family's code: images/_vit/dino_vit.py)."""


if __name__ == "__main__":
    serve(Dino())
