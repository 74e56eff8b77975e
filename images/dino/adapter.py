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
This folder is self-contained (its code hash and image cover only it), so images/dinov2 and images/neco repeat the
few lines of pos-embedding and key checking they share with it.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import checkpoint_filter_fn

from benchsdk import Method, serve

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
URL = "https://dl.fbaipublicfiles.com/dino"


@dataclass(frozen=True)
class Arch:
    timm_name: str
    embed_dim: int
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


def interpolate_pos_embed(
    pos_embed: torch.Tensor, h: int, w: int, patch: int, prefix: int, offset: float, antialias: bool
) -> torch.Tensor:
    """DINO's (and DINOv2's) `interpolate_pos_encoding` for an h×w input: `pos_embed` (1, prefix + M², D) on an
    M×M grid -> (1, prefix + (h/p)(w/p), D). Unchanged when the grid is M×M and h == w, as the official code. With an
    offset: bicubic by scale factor ((h/p + offset)/M, (w/p + offset)/M); without: bicubic to the size. prefix: the
    leading tokens that are not on the grid (1, the CLS position, in the official layout; 0 in timm's no-embed-class
    one)."""
    n = pos_embed.shape[1] - prefix
    m, h0, w0 = math.isqrt(n), h // patch, w // patch
    assert m * m == n, f"pos_embed holds {n} grid positions, not a square"
    if h0 * w0 == n and h == w:
        return pos_embed
    grid = pos_embed[:, prefix:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    size = {"scale_factor": ((h0 + offset) / m, (w0 + offset) / m)} if offset else {"size": (h0, w0)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **size)
    assert grid.shape[-2:] == (h0, w0), (grid.shape, h0, w0)
    grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
    return torch.cat((pos_embed[:, :prefix].float(), grid), dim=1).to(pos_embed.dtype)


def read_state_dict(path: str) -> dict:
    """torch.load without arbitrary unpickling (weights_only), on CPU; a full checkpoint's `args` (an
    argparse.Namespace of plain values) is the one class allowed."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as a weights-only torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def describe_keys(state: dict) -> str:
    """What a checkpoint holds, for an error message: its keys grouped by their first dotted part (by the first two
    for a nested dict, as a training checkpoint's `state_dict` holding `model.*` and `teacher.*`)."""
    groups: dict[str, list] = {}
    for key, value in state.items():
        for name in [f"{key}.{sub}" for sub in value] if isinstance(value, dict) else [key]:
            parts = str(name).split(".")
            depth = 2 if isinstance(value, dict) else 1
            group = groups.setdefault(".".join(parts[:depth]), [0, False])
            group[0], group[1] = group[0] + 1, group[1] or len(parts) > depth
    shown = [f"{g}.* ({n})" if dotted else g for g, (n, dotted) in sorted(groups.items(), key=lambda i: -i[1][0])]
    return ", ".join(shown[:10]) + (f", ... ({len(shown)} groups)" if len(shown) > 10 else "")


def check_keys(state: dict, expected: dict, path: str, what: str, extra_prefixes: tuple[str, ...] = ()) -> dict:
    """The entries of `state` that the model takes, after asserting that every expected key is there with its shape
    and that nothing else is, except keys under `extra_prefixes` (a training head). Raises one ValueError naming the
    file, what was wrong and what the file holds."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.startswith(extra_prefixes))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
        for k in set(expected) & set(state)
        if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or shapes:
        problems = [
            f"{len(missing)} expected keys missing ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
            if missing
            else "",
            f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''})"
            if unexpected
            else "",
            f"shapes differ: {', '.join(shapes[:3])}" if shapes else "",
        ]
        raise ValueError(
            f"{path} is not a {what} state dict: {'; '.join(p for p in problems if p)}. "
            f"The file holds: {describe_keys(state)}"
        )
    return {k: state[k] for k in expected}


class Dino(Method):
    name, version = "dino", "1.0"
    outputs = ("global", "dense")
    patch_size = 16

    def __init__(self, variant: str | None = None):
        self.variant = variant or os.environ.get("BENCH_VARIANT") or DEFAULT
        if self.variant not in VARIANTS:
            raise ValueError(f"{self.name}: unknown variant {self.variant!r}; one of {', '.join(VARIANTS)}")
        self.arch = VARIANTS[self.variant]
        self.embed_dim = self.arch.embed_dim
        self.weights = os.environ.get("BENCH_WEIGHTS") or None

    def info(self):
        weights = os.path.basename(self.weights) if self.weights else "random-init"
        return dict(super().info(), variant=self.variant, weights=weights)

    def load(self, model, path: str) -> None:
        """The official backbone state dict, or a full checkpoint's teacher, at `path` into the timm model, every key
        checked (see the module docstring)."""
        state, extra = read_state_dict(path), ()
        if CHECKPOINT_KEY in state:
            state, extra = state[CHECKPOINT_KEY], ("head.",)
            state = {k.replace("module.", "").replace("backbone.", ""): v for k, v in state.items()}
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # DINO's keys are timm's
        what = f"{self.name}@{self.variant} (official file: {self.arch.url})"
        state = check_keys(state, shapes, path, what, extra)
        model.load_state_dict(checkpoint_filter_fn(dict(state), model), strict=True)

    def setup(self, seed, task):
        torch.manual_seed(seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = timm.create_model(self.arch.timm_name, pretrained=False, num_classes=0)
        if self.weights:
            self.load(model, self.weights)
        self.model = model.eval().to(self.device)
        self.native = model.pos_embed.detach().clone()  # the 14×14 grid and the CLS position, resampled per input size
        self.pos_embeds: dict[tuple[int, int], torch.nn.Parameter] = {}

    def pos_embed(self, h: int, w: int) -> torch.nn.Parameter:
        if (h, w) not in self.pos_embeds:
            pos = interpolate_pos_embed(self.native, h, w, self.patch_size, prefix=1, offset=0.1, antialias=False)
            self.pos_embeds[(h, w)] = torch.nn.Parameter(pos, requires_grad=False)
        return self.pos_embeds[(h, w)]

    @torch.inference_mode()
    def _tokens(self, images: np.ndarray) -> torch.Tensor:
        n, h, w, _ = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}×{w} is not a multiple of the patch size {self.patch_size}")
        self.model.patch_embed.set_input_size(img_size=(h, w))  # timm's input-size check follows the input
        self.model.pos_embed = self.pos_embed(h, w)
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        x = (x - MEAN.to(x.device)) / STD.to(x.device)
        return self.model.forward_features(x)  # (N, prefix + h·w, D), final norm applied

    def embed(self, images):
        return self._tokens(images)[:, 0].float().cpu().numpy()

    def embed_dense(self, images):
        n, h, w, _ = images.shape
        tokens = self._tokens(images)[:, self.model.num_prefix_tokens :]
        return tokens.reshape(n, h // self.patch_size, w // self.patch_size, -1).float().cpu().numpy()


if __name__ == "__main__":
    serve(Dino())
