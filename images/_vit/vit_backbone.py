"""The timm ViT backbone that images/dino, images/dinov2 and images/neco share (their method.yaml: `include: [../_vit]`).

Not a method (no method.yaml): a module the three adapters import. Its folder is part of each one's code hash and
image (the generated Dockerfile copies it into /method/), so a change here is a change of all three.

What it holds: the official position-embedding interpolation (`interpolate_pos_embed`), the weights-only checkpoint
reading and the exact key check (`read_state_dict`, `check_keys`, `describe_keys`), and `ViTBackbone`, the
Method the adapters subclass: variant from $BENCH_VARIANT, weights from $BENCH_WEIGHTS (else a seeded random init),
preprocessing (uint8 / 255, ImageNet mean/std), the position-embedding grid computed once per input size and set on
the model with its patch embedding resized to that size, global = the CLS token after the final norm, dense = the
patch tokens after the final norm without CLS and registers, row-major (N, H/p, W/p, D). Each adapter says which
architectures it has (VARIANTS, DEFAULT), how its checkpoints load (`load`) and its interpolation's settings
(`pos_embed_settings`); its module docstring says what the official code does and where.
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

from benchsdk import Method

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, h: int, w: int, patch: int, prefix: int, offset: float, antialias: bool
) -> torch.Tensor:
    """DINO's, DINOv2's and NeCo's `interpolate_pos_encoding` for an h×w input: `pos_embed` (1, prefix + M², D) on an
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


def read_state_dict(path: str, allowed: tuple[type, ...] = ()) -> dict:
    """torch.load without arbitrary unpickling (weights_only), on CPU; `allowed`: the classes it may build besides
    tensors and plain containers (DINO's full checkpoint: its `args`, an argparse.Namespace of plain values)."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
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


@dataclass(frozen=True)
class Arch:
    """One architecture of a family: the timm model it is built as, its width; a family's own Arch adds where its
    official file is (`url`)."""

    timm_name: str
    embed_dim: int

    @property
    def url(self) -> str:
        raise NotImplementedError


class ViTBackbone(Method):
    """A timm ViT backbone as a Method (see the module docstring). A subclass sets name, version, patch_size,
    VARIANTS (variant -> its Arch), DEFAULT and `create_kwargs` (more arguments of timm.create_model), and defines
    `load`."""

    outputs = ("global", "dense")
    VARIANTS: dict = {}
    DEFAULT = ""
    create_kwargs: dict = {}

    def __init__(self, variant: str | None = None):
        self.variant = variant or os.environ.get("BENCH_VARIANT") or self.DEFAULT
        if self.variant not in self.VARIANTS:
            raise ValueError(f"{self.name}: unknown variant {self.variant!r}; one of {', '.join(self.VARIANTS)}")
        self.arch = self.VARIANTS[self.variant]
        self.embed_dim = self.arch.embed_dim
        self.weights = os.environ.get("BENCH_WEIGHTS") or None

    def info(self):
        weights = os.path.basename(self.weights) if self.weights else "random-init"
        return dict(super().info(), variant=self.variant, weights=weights)

    def load(self, model, path: str) -> None:
        """The checkpoint at `path` into the timm model, every key checked (`load_checked`)."""
        raise NotImplementedError

    def load_checked(self, model, state: dict, path: str, shapes: dict, extra_prefixes: tuple[str, ...] = ()) -> None:
        """`state` into the timm model once check_keys has found exactly the official keys `shapes` in it (and
        nothing else but `extra_prefixes`): through timm's `checkpoint_filter_fn`, strict=True."""
        what = f"{self.name}@{self.variant} (official file: {self.arch.url})"
        state = check_keys(state, shapes, path, what, extra_prefixes)
        model.load_state_dict(checkpoint_filter_fn(dict(state), model), strict=True)

    def setup(self, seed, task):
        torch.manual_seed(seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = timm.create_model(self.arch.timm_name, pretrained=False, num_classes=0, **self.create_kwargs)
        if self.weights:
            self.load(model, self.weights)
        self.model = model.eval().to(self.device)
        self.native = model.pos_embed.detach().clone()  # the official grid (timm layout), resampled per input size
        self.pos_embeds: dict[tuple[int, int], torch.nn.Parameter] = {}

    def pos_embed_settings(self) -> tuple[int, float, bool]:
        """interpolate_pos_embed's prefix, offset and antialias for this model's grid: by default one CLS position
        and the official +0.1 offset, without antialias."""
        return 1, 0.1, False

    def pos_embed(self, h: int, w: int) -> torch.nn.Parameter:
        if (h, w) not in self.pos_embeds:
            prefix, offset, antialias = self.pos_embed_settings()
            pos = interpolate_pos_embed(self.native, h, w, self.patch_size, prefix, offset, antialias)
            self.pos_embeds[(h, w)] = torch.nn.Parameter(pos, requires_grad=False)
        return self.pos_embeds[(h, w)]

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> the normalised input (N, 3, H, W) on the model's device, with the model's input size
        and position embedding set for H×W (a subclass that runs the model itself, images/fungi, starts here)."""
        n, h, w, _ = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}×{w} is not a multiple of the patch size {self.patch_size}")
        self.model.patch_embed.set_input_size(img_size=(h, w))  # timm's input-size check follows the input
        self.model.pos_embed = self.pos_embed(h, w)
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        return (x - MEAN.to(x.device)) / STD.to(x.device)

    @torch.inference_mode()
    def _tokens(self, images: np.ndarray) -> torch.Tensor:
        return self.model.forward_features(self.prepare(images))  # (N, prefix + h·w, D), final norm applied

    def embed(self, images):
        return self._tokens(images)[:, 0].float().cpu().numpy()

    def embed_dense(self, images):
        n, h, w, _ = images.shape
        tokens = self._tokens(images)[:, self.model.num_prefix_tokens :]
        return tokens.reshape(n, h // self.patch_size, w // self.patch_size, -1).float().cpu().numpy()
