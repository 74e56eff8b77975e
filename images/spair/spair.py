"""SPAIR (Crawford & Pineau, AAAI 2019, "Spatially Invariant Unsupervised Object Detection with Convolutional Neural
Networks").

Written from the paper, with the behaviour and hyper-parameters of the ClevrTex benchmark's re-implementation
(karazijal/clevrtex fe982ab, ool/picture/models/spair.py and ool_base.py, no licence stated: read, nothing copied)
in its ClevrTex configuration (experiments/spair.py defaults and the README's command `--large --bg_dim 4 --std
'itr_lin(50000,0.5,0.15)' --prior 'itr_lin(50000,1e-4,.99)'`): the 'large' backbone (6 convs, 5 of stride 2: a 4x4
grid of 32-pixel cells at 128x128, one object per cell), z_what 64, z_bg 4, glimpses and object patches 24x24,
anchor 48, 100 pass-through features, a 3x3 context window, all four object KLs weighted 2.7, relaxed-Bernoulli
presence (temperature 1) with the Bernoulli KL against SPAIR's count prior, no REINFORCE (rein=False).

- Backbone: 5 conv3x3 (stride 2, 2, 2, 2, 2) + conv1x1, each followed by CELU and GroupNorm -> 100 features per cell.
- Cells are visited in raster order; cell (h, w) sees its features and the latents of the cells above-left, above,
  above-right and left (70 numbers each: z_pres, z_where, z_depth, z_what; a learned `empty` vector off the grid).
  where: an MLP (100, 100) gives N(mu, softplus) over 4 numbers and 100 pass-through features; a sample s gives
  box = (sigmoid(s)[:2], 2 sigmoid(s)[2:] - 0.5): size w, h = box * anchor / image, centre ((col, row) + offset) *
  32 / image in [-1, 1]. what: the 24x24 glimpse (bilinear, zeros outside) with the cell's features and the box,
  an MLP (256, 128), N(mu, softplus) over 64. depth: an MLP on features, context, box, z_what and the pass-through ->
  z_depth = sigmoid(clamp(sample, -10, 10)) and new pass-through features. pres: an MLP on all of those + z_depth ->
  q = sigmoid; z_pres ~ RelaxedBernoulli(1, clamp(q, 1e-6, 1 - 1e-6)) (in eval mode rounded, straight-through).
  The object: a spatial-broadcast decoder of z_what (32x32 grid, 4 valid conv3x3) -> sigmoid RGB + alpha, placed on
  the image by the inverse affine grid; mask = placed alpha * z_pres.
- Background: a conv encoder of the image (4 stride-2 conv3x3, average pool, MLP) -> N(mu, softplus) over 4, a
  broadcast decoder at (H+8)x(W+8) -> sigmoid RGB.
- Render: importance = max(mask / z_depth, 0.01); canvas = sum_k importance_k (patch_k mask_k + bg (1 - mask_k)) /
  max(sum_k importance_k, 1e-6).
- Loss (per image, averaged over the batch): - sum_pixels log N(x; canvas, std) + sum_cells 2.7 (KL_where + KL_what
  + KL_depth + KL_pres) + KL_bg. Priors: where N((-2.197, -2.197, 0, 0), (0.5, 0.5, 1, 1)); what, depth N(0, 1); bg
  N(0, 3). KL_pres = Bernoulli KL(q || p_i) with p_i from SPAIR's count prior: a geometric prior over the number of
  objects, p(count = n) prop. to (1 - p) p^n on 0..cells, conditioned on the rounded z_pres of the cells before.
- Schedules: `prior` (p of the count prior) and `std` (the likelihood's sigma) are (steps, start, stop): the value at
  step t is linspace(start, stop, steps)[min(t, steps - 1)], as the reference's `itr_lin` (which its trainer sets
  before every training step from global_step). A number is a constant. step None (evaluation) = the final value:
  the reference at evaluation keeps the prior buffer of its checkpoint (the final p after 50k steps) and computes no
  loss (its std attribute would be the initial 0.5, but it enters nothing it returns at evaluation).
- Outputs: masks = the reference's out['steps']['mask'] (what the ClevrTex evaluator is given, bg=False), (B, cells,
  H, W), each in [0, 1]; they are not normalised: overlapping objects can sum past 1, as in the reference (the
  evaluator prepends 1 - sum and takes the argmax). canvas = the rendered image (the likelihood's mean).
- Sampling: the reference draws rsample() at evaluation too; so does this model, every draw from the passed
  generator, in the reference's order: per cell where (B, 4), what (B, 64), depth (B, 1) normals, then the
  presence uniform (B, 1); after the cells the background normal (B, 4).

Deliberate differences: the loss and its terms are computed in eval mode too (the reference returns none there),
with the rounded z_pres in the count prior; the reference's unused parts are not written (bounding boxes, the
REINFORCE log-probability and its baseline's forward, the 'render2' and 'simple'/'broadcast' variants, several
anchors per cell, whose context path is broken in the reference); the REINFORCE baseline's Linear(450, 1) is kept
unused so that the parameters and the optimiser groups match the reference's (model at lr, baseline at 10 lr).
The reference's `rein` default (False) and its loss without REINFORCE are what its ClevrTex run used.

Training recipe (experiments/spair.py + experiments/framework/base_experiment.py, README's ClevrTex command; read, not
run): Adam at 1e-4 (the baseline's group at 1e-3, `param_groups`), ReduceLROnPlateau on the validation MSE ('min',
factor 0.1, patience 3, min_lr 5e-5), batch 128, 250k steps, gradient_clip_val 1.0 (Lightning: norm clipping), data
'clevrtex:full-crop-(128,128)'; its schedules are set before every training step from global_step
(on_train_batch_start), as `step` here.

scripts/compare_spair.py runs the reference on the same weights and noise (128x128 with 16 cells and 96x96 with 9;
train at steps 0, 30000, 60000 and eval; init and perturbed weights): masks, canvas, presence counts and the loss are
bit-identical in float32 and float64; the KL terms differ by <= 1e-7 relative in float32 (summation order),
gradients by <= 2.3e-8 of the largest (float64 <= 2.6e-17). CPU (2 threads, nice'd, on a loaded 2-core machine):
batch 8 at 128x128 with the defaults, ~0.4 s per Adam step (forward ~0.15 s), ~0.13 s per eval forward.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from object_model import ObjectModel, ObjectOutput, build_model
from torch import nn

DEFAULTS = {
    "image_size": 128,
    "what_dim": 64,
    "bg_dim": 4,
    "patch_size": 24,
    "anchor": 48.0,
    "passthrough": 100,
    "context_grid": 1,
    "beta_where": 2.7,
    "beta_what": 2.7,
    "beta_depth": 2.7,
    "beta_pres": 2.7,
    "beta_bg": 1.0,
    "temperature": 1.0,
    "prior": (50000, 1e-4, 0.99),
    "std": (50000, 0.5, 0.15),
    "where_prior_loc": (-2.197, -2.197, 0.0, 0.0),
    "where_prior_scale": (0.5, 0.5, 1.0, 1.0),
    "bg_prior_scale": 3.0,
}

FEATURES = 100  # backbone channels per cell
CELL = 32  # pixels per cell of the backbone (2^5)
SCALE_EPS = 1e-21  # the reference clamps every posterior scale to [1e-21, 1e19]
PRES_EPS = 1e-6


def schedule(spec: float | Sequence, step: int | None) -> float:
    """A constant, or (steps, start, stop): linspace(start, stop, steps)[min(step, steps - 1)]; step None: the last."""
    if isinstance(spec, (int, float)):
        return float(spec)
    steps, start, stop = spec
    steps = int(steps)
    if steps <= 0:
        return float(start)
    i = steps - 1 if step is None else min(max(int(step), 0), steps - 1)
    if i == steps - 1:
        return float(stop)  # numpy's linspace sets its last point to stop exactly
    return float(np.linspace(float(start), float(stop), steps)[i])


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def _backbone() -> nn.Sequential:
    layers, cin = [], 3
    for cout, groups, stride, k in ((16, 4, 2, 3), (32, 8, 2, 3), (64, 8, 2, 3), (128, 16, 2, 3), (256, 32, 2, 3),
                                    (FEATURES, 10, 1, 1)):  # fmt: skip
        layers += [nn.Conv2d(cin, cout, k, stride, k // 2), nn.CELU(), nn.GroupNorm(groups, cout)]
        cin = cout
    return nn.Sequential(*layers)


def _broadcast_decoder(z_dim: int, out_ch: int) -> nn.Sequential:
    layers, cin = [], z_dim + 2
    for _ in range(4):
        layers += [nn.Conv2d(cin, 32, 3), nn.ReLU()]
        cin = 32
    return nn.Sequential(*layers, nn.Conv2d(cin, out_ch, 1))


def broadcast_decode(net: nn.Sequential, z: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """z tiled on an (h+8)x(w+8) grid with (row, column) coordinates in [-1, 1] -> net -> sigmoid, (N, C, h, w)."""
    h, w = h + 8, w + 8
    n = z.shape[0]
    rows = torch.linspace(-1, 1, h, device=z.device, dtype=z.dtype)
    cols = torch.linspace(-1, 1, w, device=z.device, dtype=z.dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))[None].expand(n, 2, h, w)
    return torch.sigmoid(net(torch.cat([z[:, :, None, None].expand(-1, -1, h, w), grid], 1)))


def _bg_encoder(z_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 2 * z_dim),
    )  # fmt: skip


def kl_normal(loc: torch.Tensor, scale: torch.Tensor, p_loc: torch.Tensor, p_scale: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, scale) || N(p_loc, p_scale)) elementwise."""
    var_ratio = (scale / p_scale).pow(2)
    t1 = ((loc - p_loc) / p_scale).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


class CountPrior:
    """SPAIR's prior on z_pres: p(count = n) prop. to (1 - p) p^n on 0..cells; cell i is present with probability
    E[(count - C_i) / (cells - i)], C_i = the rounded presences before it (the count's posterior updated as it goes)."""

    def __init__(self, n: int, cells: int, p: float, like: torch.Tensor):
        self.cells = cells
        self.support = torch.arange(0, cells + 1, device=like.device, dtype=like.dtype)
        p = torch.tensor(p, device=like.device, dtype=like.dtype).view(1, 1)
        prior = (1 - p) * p**self.support
        self.prior = (prior / prior.sum()).repeat(n, 1)
        self.counts = like.new_zeros(n, 1)

    def _given(self, i: int) -> torch.Tensor:
        return (self.support[None, :] - self.counts).clamp(min=0) / (self.cells - i)

    def probs(self, i: int) -> torch.Tensor:
        return (self.prior[:, None, :] @ self._given(i)[:, :, None])[:, :, 0].clamp(PRES_EPS, 1 - PRES_EPS)

    def update(self, z_pres: torch.Tensor, i: int) -> None:
        given = self._given(i)
        z = torch.round(z_pres).detach()
        prior = self.prior * (z * given + (1 - z) * (1 - given))
        self.prior = (prior / prior.sum(1, keepdim=True).clamp(min=PRES_EPS, max=1e6)).detach()
        self.counts = self.counts + z


class SPAIR(ObjectModel):
    """SPAIR on (B, 3, S, S) images in [0, 1]; one object per backbone cell (ceil(S / 32) squared cells)."""

    masks_have_background = False

    def __init__(self, image_size: int, what_dim: int, bg_dim: int, patch_size: int, anchor: float,
                 passthrough: int, context_grid: int, beta_where: float, beta_what: float, beta_depth: float,
                 beta_pres: float, beta_bg: float, temperature: float, prior, std, where_prior_loc, where_prior_scale,
                 bg_prior_scale: float):  # fmt: skip
        super().__init__()
        if bg_dim < 1:
            raise ValueError(f"bg_dim must be >= 1 (the ClevrTex configuration learns a background), got {bg_dim}")
        self.image_size, self.what_dim, self.bg_dim = image_size, what_dim, bg_dim
        self.patch_size, self.anchor, self.passthrough, self.context_grid = (
            patch_size,
            anchor,
            passthrough,
            context_grid,
        )
        self.betas = {"where": beta_where, "what": beta_what, "depth": beta_depth, "pres": beta_pres}
        self.beta_bg, self.temperature = beta_bg, temperature
        self.prior_schedule, self.std_schedule = prior, std
        self.where_prior = (tuple(where_prior_loc), tuple(where_prior_scale))
        self.bg_prior_scale = bg_prior_scale
        side = image_size
        for _ in range(5):
            side = (side + 1) // 2
        self.grid = side
        latent = 1 + 4 + 1 + what_dim
        ctx = ((2 * context_grid + 1) ** 2 // 2 + 1) * latent  # the cells before this one in the window, + 1 empty

        self.backbone = _backbone()
        self.empty = nn.Parameter(torch.zeros(latent))
        self.baseline = nn.Linear(FEATURES + ctx, 1)  # the reference's REINFORCE baseline: unused (rein=False)
        self.where_net = MLP([FEATURES + ctx, 100, 100, 8 + passthrough])
        self.depth_net = MLP([FEATURES + ctx + 4 + what_dim + passthrough, 100, 100, 2 + passthrough])
        self.pres_net = MLP([FEATURES + ctx + 4 + what_dim + passthrough + 1, 100, 100, 1])
        self.what_enc = MLP([FEATURES + 3 * patch_size * patch_size + 4, 256, 128, 2 * what_dim])
        self.what_dec = _broadcast_decoder(what_dim, 4)
        self.bg_enc = _bg_encoder(bg_dim)
        self.bg_dec = _broadcast_decoder(bg_dim, 3)

    def param_groups(self, lr: float) -> list[dict]:
        """As the reference's trainer: the baseline at 10 lr (it gets no gradient here), the rest at lr."""
        base = set(self.baseline.parameters())
        rest = [p for p in self.parameters() if p not in base]
        return [{"params": rest, "lr": lr}, {"params": list(self.baseline.parameters()), "lr": 10 * lr}]

    def _context(self, states: dict, h: int, w: int, n: int) -> list[torch.Tensor]:
        out = []
        g = self.context_grid
        for dr, dc in itertools.product(range(-g, g + 1), range(-g, g + 1)):
            if dr == 0 and dc == 0:
                break
            out.append(states.get((h + dr, w + dc)))
        out.append(None)  # the reference's slot for earlier anchors of the same cell (one anchor: always empty)
        empty = self.empty[None].expand(n, -1)
        return [empty if c is None else c for c in out]

    def forward(self, images: torch.Tensor, generator: torch.Generator, step: int | None = None) -> ObjectOutput:
        b, c, H, W = images.shape
        if c != 3 or H != self.image_size or W != self.image_size:
            raise ValueError(f"expected (B, 3, {self.image_size}, {self.image_size}) images, got {tuple(images.shape)}")
        dtype, dev, g_dev = images.dtype, images.device, generator.device

        def randn(*shape):
            return torch.randn(shape, generator=generator, device=g_dev, dtype=dtype).to(dev)

        def rand(*shape):
            return torch.rand(shape, generator=generator, device=g_dev, dtype=dtype).to(dev)

        def const(v):
            return torch.tensor(v, device=dev, dtype=dtype).view(1, -1)

        feats = self.backbone(images)
        gh, gw = feats.shape[-2:]
        cells = gh * gw
        prior = CountPrior(b, cells, schedule(self.prior_schedule, step), images)
        std = schedule(self.std_schedule, step)
        img_wh = const([float(W), float(H)])
        box_scale, box_shift = const([1.0, 1.0, 2.0, 2.0]), const([0.0, 0.0, -0.5, -0.5])
        where_loc, where_scale = const(list(self.where_prior[0])), const(list(self.where_prior[1]))
        zero, one = const(0.0), const(1.0)
        temp = const(self.temperature)
        ps = self.patch_size
        finfo = torch.finfo(dtype)

        states: dict[tuple[int, int], torch.Tensor] = {}
        masks, patches, depths, kls = [], [], [], []
        for i, (h, w) in enumerate(itertools.product(range(gh), range(gw))):
            base = feats[:, :, h, w]
            ctx = self._context(states, h, w, b)
            # where
            out = self.where_net(torch.cat([base, *ctx], 1))
            where_mu, where_sd = out[:, :4], F.softplus(out[:, 4:8])
            passf = torch.relu(out[:, 8:])
            where_sd_c = where_sd.clamp(SCALE_EPS, 1e19)
            z_where = where_mu + randn(b, 4) * where_sd_c
            box = box_scale * torch.sigmoid(z_where.clamp(-10, 10)) + box_shift
            cell = const([float(w), float(h)])
            xy = 2 * ((box[:, 2:] + cell) * CELL / img_wh) - 1
            wh = box[:, :2] * self.anchor / img_wh
            sx, sy, x, y = wh[:, 0], wh[:, 1], xy[:, 0], xy[:, 1]
            zeros = torch.zeros_like(sx)
            # what
            theta = torch.stack([sx, zeros, x, zeros, sy, y], 1).view(b, 2, 3)
            grid = F.affine_grid(theta, [b, 3, ps, ps], align_corners=False)
            glimpse = F.grid_sample(images, grid, align_corners=False)
            out = self.what_enc(torch.cat([base, box, glimpse.flatten(1)], 1))
            what_mu, what_sd = out[:, : self.what_dim], F.softplus(out[:, self.what_dim :])
            what_sd_c = what_sd.clamp(SCALE_EPS, 1e19)
            z_what = what_mu + randn(b, self.what_dim) * what_sd_c
            # depth
            out = self.depth_net(torch.cat([base, *ctx, box, z_what, passf], 1))
            depth_mu, depth_sd = out[:, :1], F.softplus(out[:, 1:2])
            passf = torch.relu(out[:, 2:])
            depth_sd_c = depth_sd.clamp(SCALE_EPS, 1e19)
            z_depth = torch.sigmoid((depth_mu + randn(b, 1) * depth_sd_c).clamp(-10, 10))
            # presence: relaxed Bernoulli (logistic noise / temperature, clipped sigmoid)
            q = torch.sigmoid(self.pres_net(torch.cat([base, *ctx, box, z_what, z_depth, passf], 1)))
            q = q.clamp(PRES_EPS, 1 - PRES_EPS)
            qc = q.clamp(finfo.eps, 1 - finfo.eps)
            u = rand(b, 1).clamp(finfo.eps, 1 - finfo.eps)
            logit = (u.log() - (-u).log1p() + qc.log() - (-qc).log1p()) / temp
            z_pres = torch.sigmoid(logit).clamp(finfo.tiny, 1 - finfo.eps)
            if not self.training:
                z_pres = (torch.round(z_pres) - z_pres).detach() + z_pres
            # the object, placed by the inverse transform
            obj = broadcast_decode(self.what_dec, z_what, ps, ps)
            inv = torch.stack([1 / sx, zeros, -x / sx, zeros, 1 / sy, -y / sy], 1).view(b, 2, 3)
            grid = F.affine_grid(inv, [b, 4, H, W], align_corners=False)
            placed = F.grid_sample(obj, grid, align_corners=False)
            patches.append(placed[:, :3])
            masks.append(placed[:, 3:] * z_pres[:, :, None, None])
            depths.append(z_depth)
            # KLs
            p_z = prior.probs(i)
            prior.update(z_pres, i)
            kl_pres = q * (q.log() - p_z.log()) + (1 - q) * ((1 - q).log() - (1 - p_z).log())
            kls.append(
                torch.stack([
                    kl_normal(where_mu, where_sd_c, where_loc, where_scale).sum(1) * self.betas["where"],
                    kl_normal(what_mu, what_sd_c, zero, one).sum(1) * self.betas["what"],
                    kl_normal(depth_mu, depth_sd_c, zero, one).sum(1) * self.betas["depth"],
                    kl_pres.sum(1) * self.betas["pres"],
                ], 1)
            )  # fmt: skip
            states[(h, w)] = torch.cat([z_pres, z_where, z_depth, z_what], 1)

        # background
        out = self.bg_enc(images)
        bg_mu, bg_sd = out[:, : self.bg_dim], F.softplus(out[:, self.bg_dim :])
        bg_sd_c = bg_sd.clamp(SCALE_EPS, 1e19)
        z_bg = bg_mu + randn(b, self.bg_dim) * bg_sd_c
        kl_bg = kl_normal(bg_mu, bg_sd_c, zero, const(self.bg_prior_scale)).sum(1) * self.beta_bg
        background = broadcast_decode(self.bg_dec, z_bg, H, W)
        if background.shape[-2:] != (H, W):  # only for sizes the decoder's grid does not give
            background = F.interpolate(background, size=(H, W), mode="nearest")

        # render
        mask = torch.stack(masks, 1)  # (B, K, 1, H, W)
        patch = torch.stack(patches, 1)
        depth = torch.stack(depths, 1)[:, :, :, None, None]
        imp = torch.maximum(mask / depth, torch.tensor(0.01, dtype=dtype, device=dev))
        canvas = ((patch * mask + background[:, None] * (1 - mask)) * imp).sum(1) / imp.sum(1).clamp(min=1e-6)

        # loss
        s = torch.tensor(std, dtype=dtype, device=dev)
        log_lik = -((images - canvas) ** 2) / (2 * s**2) - s.log() - math.log(math.sqrt(2 * math.pi))
        rec = log_lik.sum((1, 2, 3))
        kl = torch.stack(kls, 1)  # (B, K, 4): where, what, depth, pres (each with its beta)
        elbo = rec - kl.sum((1, 2)) - kl_bg
        loss = -elbo.mean()
        parts = torch.cat([torch.stack([loss, rec.mean(), kl.sum((1, 2)).mean(), kl_bg.mean()]), kl.sum(1).mean(0)])
        names = ("loss", "rec", "kl", "kl_bg", "kl_where", "kl_what", "kl_depth", "kl_pres")
        terms = dict(zip(names, parts.detach().cpu().tolist()))
        pres = torch.stack([st[:, 0] for st in states.values()], 1)
        terms["count"] = torch.round(pres).sum(1).mean().item()  # present cells, as the reference's counts
        return ObjectOutput(loss, mask[:, :, 0], canvas, terms)


def build(params: dict) -> SPAIR:
    """SPAIR from a recipe's architecture/loss params; missing keys take the ClevrTex defaults (DEFAULTS)."""
    return build_model(SPAIR, DEFAULTS, params)
