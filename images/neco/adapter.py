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
This folder is self-contained (its code hash and image cover only it), so images/dino and images/dinov2 repeat the
few lines of pos-embedding and key checking they share with it.
"""

from __future__ import annotations

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
URL = "https://huggingface.co/FunAILab/NeCo/resolve/main"


@dataclass(frozen=True)
class Arch:
    timm_name: str
    embed_dim: int
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


def interpolate_pos_embed(
    pos_embed: torch.Tensor, h: int, w: int, patch: int, prefix: int, offset: float, antialias: bool
) -> torch.Tensor:
    """NeCo's (DINOv2's) `interpolate_pos_encoding` for an h×w input: `pos_embed` (1, prefix + M², D) on an
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
    """torch.load without arbitrary unpickling (weights_only), on CPU."""
    try:
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


class Neco(Method):
    name, version = "neco", "1.0"
    outputs = ("global", "dense")
    patch_size = 14
    extra_prefixes = ("projection_head.",)  # the training head, in every NeCo backbone file

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

    def official_shapes(self, model) -> dict:
        """Key -> shape of the official state dict of this architecture, from the timm model's."""
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        shapes["mask_token"] = (1, self.embed_dim)  # the only key timm has not
        return shapes

    def load(self, model, path: str) -> None:
        """A NeCo backbone state dict at `path` into the timm model, every key checked (see the module docstring)."""
        state = read_state_dict(path)
        what = f"{self.name}@{self.variant} (official file: {self.arch.url})"
        try:
            state = check_keys(state, self.official_shapes(model), path, what, self.extra_prefixes)
        except ValueError as e:
            if not isinstance(state.get("state_dict"), dict):
                raise
            raise ValueError(
                f"{e}. This looks like a Lightning training checkpoint: its student backbone is the state_dict's "
                "`model.*` entries without the prefix (NeCo's experiments/utils.py get_backbone_weights)"
            ) from None
        model.load_state_dict(checkpoint_filter_fn(dict(state), model), strict=True)

    def setup(self, seed, task):
        torch.manual_seed(seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = timm.create_model(self.arch.timm_name, pretrained=False, num_classes=0, init_values=1.0)
        if self.weights:
            self.load(model, self.weights)
        self.model = model.eval().to(self.device)
        self.native = model.pos_embed.detach().clone()  # the 37×37 grid and the CLS position, resampled per input size
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
    serve(Neco())
