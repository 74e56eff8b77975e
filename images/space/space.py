"""SPACE (Lin, Wu, Peri, Sun, Singh, Deng, Jiang, Ahn, ICLR 2020, "SPACE: Unsupervised Object-Oriented Scene
Representation via Spatial Attention and Decomposition", arXiv 2001.02407).

Written from the paper and the documented behaviour of the ClevrTex benchmark's copy of the authors' code
(karazijal/clevrtex fe982ab, ool/picture/models/thirdparty/space/model.py, GPLv3: read, not copied), in its ClevrTex
configuration (that file's `arch` defaults and experiments/space.py: fg_std = bg_std = 0.15): an 8x8 grid of
foreground cells (64 objects), z_what 32, 32x32 glimpses, K = 5 background components, z_mask = z_comp = 32.

Foreground (one object per grid cell, all cells in parallel):
- Encoder: conv4x4 s2 (16, 32, 64; CELU, GroupNorm), conv3x3 (128), conv3x3 (256), conv1x1 (128) -> (B, 128, G, G)
  features; the last two 3x3 strides are 2 or 1 so that the image is downsampled by S / G (the reference: 128 / G for
  G in 4, 8, 16). A lateral block (2 conv3x3), the concatenation through a conv3x3 (128), then 1x1 heads:
  pres logit = 8.8 tanh(.), depth N(mu, softplus), scale N(mu, softplus + 1e-15), shift N(mu, softplus).
- z_pres = sigmoid of a logistic relaxed-Bernoulli sample at temperature tau: (logit(u) + logit(p)) / tau with u and
  p = sigmoid(logit) clamped to [eps, 1 - eps] (torch's LogitRelaxedBernoulli); in training and evaluation alike (the
  reference never rounds it).
- Where: scale = sigmoid(z_scale) (x, y); centre = (2 / G) (cell (column, row) + 0.5 + tanh(z_shift)) - 1 in [-1, 1].
  A glimpse is read by the affine grid [[sx, 0, cx], [0, sy, cy]] (bilinear, zeros outside, align_corners False);
  the object goes back by its inverse [[1/(sx + 1e-9), 0, -cx/(sx + 1e-9)], ...].
- What: a glimpse CNN (32 -> 1, 256 features) and a linear head -> N(mu, softplus) over z_what; a glimpse decoder
  (1x1 convs + 5 PixelShuffle(2) stages to 32x32, CELU, GroupNorm) -> sigmoid RGB o and sigmoid alpha.
- Per cell at full resolution: alpha = placed(alpha_glimpse * z_pres); importance = placed(alpha_glimpse z_pres 100
  sigmoid(-z_depth)), softmax over the cells; fg = sum_cells softmax * placed(alpha_glimpse z_pres o);
  alpha_map = sum_cells softmax * alpha.
- Boundary loss: a 32x32 kernel 1/32^2 on a 6-pixel border (0 inside), times z_pres, placed, summed over the cells,
  times 1000, times alpha_map; boundary = -sum_pixels log N(that; 0, 0.7) (on while step <= `bl_off_step`).
Background (K components, a stick-breaking mixture):
- Encoder: 4 conv3x3 s2 (64; BatchNorm, ELU), a linear (64 features, ELU). A mask LSTMCell (input: the previous
  z_mask, starting at a learned z_mask_0, and the features; learned h0, c0) per step k: z_mask ~ N(linear(h),
  softplus + 1e-4); a mask decoder (1x1 + PixelShuffle 4, 2, 4, S / 32 stages to S x S) -> sigmoid. Stick breaking:
  m_k = mask_k * remaining for k < K, the last the remaining scope.
- Components: a conv encoder (4 conv3x3 s2 on [log(m_k + 1e-5), x]; BatchNorm, ELU; linear) -> N(mu, softplus +
  1e-4) over z_comp; a spatial-broadcast decoder at (S+8)^2 with (column, row) coordinates, 4 valid conv3x3
  (BatchNorm, ELU) and a 1x1 conv -> sigmoid RGB. bg = sum_k m_k comp_k.
- Prior: an LSTMCell over the posterior z_masks (learned h0, c0): p(z_mask_k) = N(linear(h_k), softplus + 1e-4);
  p(z_comp_k | z_mask_k) = an MLP (64, 64, ELU) -> N(mu, softplus + 1e-4). KL_bg = sum_k analytic KLs.
Likelihood and loss (per image, batch mean): log_like = sum_pixels,channels logsumexp(log N(x; fg, fg_sigma) +
log(alpha_map + 1e-5), logsumexp_k[log N(x; comp_k, bg_sigma) + log(m_k + 1e-5)] + log(1 - alpha_map + 1e-5));
kl = KL_what + KL_where (scale + shift) + KL_pres (Bernoulli, eps 1e-15) + KL_depth + KL_bg; loss = mean(-(log_like -
kl) + boundary). Priors: what, depth N(0, 1); scale N(scale_mean(step), 0.1); shift N(0, 1); pres Bernoulli(p(step)).
Schedules (the reference's linear_annealing, `(start_step, end_step, start, end)`: start up to start_step, linear in
between, end from end_step): pres prior p (4000, 10000, 0.1, 0.01), scale mean (10000, 20000, -1, -2), tau (0, 10000,
2.5, 2.5). step None (evaluation) = the end values: the reference at evaluation is called with its checkpoint's
global step (evaluation.ipynb, `step=True`), 160k, past every schedule.
Outputs: masks = the reference's out['steps']['mask'] (`patch_masks`: each cell's placed alpha times z_pres, what the
ClevrTex evaluator reads with bg=False), (B, G^2, S, S), each in [0, 1], not normalised (the evaluator prepends 1 -
sum); canvas = alpha_map fg + (1 - alpha_map) bg. The background components (the reference's `layers`) are not
returned.
Sampling: every draw from the passed generator, at evaluation too, in the reference's order (background first):
per step k a (B, z_mask) normal; a (B K, z_comp) normal; then the foreground: the presence uniform (B, G^2, 1), the
depth (B, G^2, 1), scale (B, G^2, 2) and shift (B, G^2, 2) normals, the (B G^2, z_what) normal.

Optimisers (experiments/space.py): RMSprop at 1e-5 over the foreground, Adam at 1e-3 over the background (one
"MultipleOptimizer"), batch 16, gradient_clip_val 1.0 (Lightning: the norm over all parameters), 160k steps, no lr
schedule; data 'clevr-crop-(128, 128)' by default (the README gives only the CLEVR command for SPACE; the ClevrTex run
would pass 'clevrtex:full-crop-(128,128)' as SPAIR's). `param_groups(lr)`: the foreground at `fg_lr_factor` (1e-2)
lr by RMSprop, the background at lr by Adam (each group names its optimiser: the trainer makes one of each), so the
recipe's lr 1e-3 gives both reference rates. Deliberate difference: one forward/backward per step. [inferred, read not run] The reference's MultipleOptimizer.step(closure) passes Lightning's
(1.2.9, environment.yml) training-step-and-backward closure to each inner optimiser, so each training step runs the
model twice: RMSprop steps the foreground on the first pass's gradients, then Adam the background on the sum of both
passes' (no zero_grad in between; the second pass sees the updated foreground and fresh noise).

Deliberate differences: image sizes other than 128 (tests) scale the mask decoder's last PixelShuffle (S / 32) and the
flattened 16x-downsampled features of the background encoders; the glimpse is always 32x32 (the glimpse CNN and
decoder are built for it); the four placements by the inverse transform (importance, object, alpha, boundary) run as
one 6-channel grid_sample (the same per-channel arithmetic); the reference's K = 1 strong component decoder, its
bounding-box drawing, the `fix_alpha` trick (off: fix_alpha_steps 0) and the ipdb trap on a NaN loss are not written.

scripts/compare_space.py runs the reference on the same weights (BatchNorm statistics included) and noise (128x128,
batch 2; train at steps 0 (init weights), 7000, 15000 and G=4 at 12000, eval (reference global_step 160000) in float32
and float64): masks, canvas, presence counts, the loss and every term but KL_bg, and the BatchNorm running statistics
after a training forward are bit-identical; KL_bg differs by <= 1.1e-7 relative in float32 (2e-16 in float64),
gradients by <= 3e-6 of the largest |grad| in float32 (3e-15 in float64). Both have 5,307,651 parameters. CPU (2
threads, nice'd, on a loaded 2-core machine), batch 8 at 128x128 with the defaults: ~21-25 s per Adam step (forward
~8-12 s), ~6-7 s per eval forward; the reference measured alongside: ~19-26 s per step (forward ~9-12 s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from object_model import ObjectModel, ObjectOutput, build_model
from torch import nn

DEFAULTS = {
    "image_size": 128,
    "G": 8,
    "fg_sigma": 0.15,
    "bg_sigma": 0.15,
    "fg_dim": 128,
    "what_dim": 32,
    "pres_prior": (4000, 10000, 0.1, 0.01),
    "scale_prior_mean": (10000, 20000, -1.0, -2.0),
    "scale_prior_std": 0.1,
    "tau": (0, 10000, 2.5, 2.5),
    "boundary_loss": True,
    "bl_off_step": 100_000_000,
    "K": 5,
    "bg_dim": 64,
    "mask_dim": 32,
    "comp_dim": 32,
    "rnn_dim": 64,
    "comp_prior_dim": 64,
    "fg_lr_factor": 1e-2,
}

GLIMPSE = 32
BOUNDARY_WIDTH = 6


def anneal(spec: float | Sequence, step: int | None) -> float:
    """A constant, or (start_step, end_step, start, end): start while step <= start_step, end from end_step on
    (and for step None: evaluation), linear in between (the reference's linear_annealing)."""
    if isinstance(spec, (int, float)):
        return float(spec)
    s0, s1, v0, v1 = spec
    if step is None:
        return float(v1)
    if step <= s0:
        return float(v0)
    if step < s1:
        return float(v0 + (v1 - v0) / (s1 - s0) * (step - s0))
    return float(v1)


def _conv_gn(cin: int, cout: int, k: int, stride: int, pad: int, groups: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, pad), nn.CELU(), nn.GroupNorm(groups, cout)]


def _shuffle_up(cin: int, cout: int, r: int, groups: int) -> list[nn.Module]:
    """1x1 conv to cout r^2, PixelShuffle(r), CELU, GN, conv3x3, CELU, GN."""
    return [nn.Conv2d(cin, cout * r * r, 1), nn.PixelShuffle(r), nn.CELU(), nn.GroupNorm(groups, cout),
            *_conv_gn(cout, cout, 3, 1, 1, groups)]  # fmt: skip


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 2, pad: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, pad), nn.BatchNorm2d(cout), nn.ELU()]


def kl_normal(loc: torch.Tensor, scale: torch.Tensor, p_loc, p_scale) -> torch.Tensor:
    """KL(N(loc, scale) || N(p_loc, p_scale)) elementwise."""
    var_ratio = (scale / p_scale).pow(2)
    t1 = ((loc - p_loc) / p_scale).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


def normal_log_prob(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return -((x - loc) ** 2) / (2 * scale**2) - scale.log() - math.log(math.sqrt(2 * math.pi))


def _softplus_scale(t: torch.Tensor, n: int, bias: float) -> tuple[torch.Tensor, torch.Tensor]:
    return t[:, :n], F.softplus(t[:, n:]) + bias


class SPACE(ObjectModel):
    """SPACE on (B, 3, S, S) images in [0, 1]: G x G foreground cells and K background components."""

    masks_have_background = False

    def __init__(self, image_size: int, G: int, fg_sigma: float, bg_sigma: float, fg_dim: int, what_dim: int,
                 pres_prior, scale_prior_mean, scale_prior_std: float, tau, boundary_loss: bool, bl_off_step: int,
                 K: int, bg_dim: int, mask_dim: int, comp_dim: int, rnn_dim: int, comp_prior_dim: int,
                 fg_lr_factor: float):  # fmt: skip
        super().__init__()
        down = image_size // G if image_size % G == 0 else 0
        if down not in (8, 16, 32) or image_size % 32:
            raise ValueError(f"image_size {image_size} / G {G} must be 8, 16 or 32, image_size a multiple of 32")
        if K < 2:
            raise ValueError(f"K must be >= 2 (the reference's K = 1 strong decoder is not written), got {K}")
        self.image_size, self.G, self.K = image_size, G, K
        self.fg_sigma, self.bg_sigma = fg_sigma, bg_sigma
        self.what_dim, self.mask_dim, self.comp_dim = what_dim, mask_dim, comp_dim
        self.pres_prior, self.scale_prior_mean, self.scale_prior_std, self.tau = (
            pres_prior,
            scale_prior_mean,
            scale_prior_std,
            tau,
        )
        self.boundary_loss, self.bl_off_step, self.fg_lr_factor = boundary_loss, bl_off_step, fg_lr_factor

        # foreground
        fg = self.fg = nn.Module()
        s4, s5 = {8: (1, 1), 16: (1, 2), 32: (2, 2)}[down]
        fg.encoder = nn.Sequential(
            *_conv_gn(3, 16, 4, 2, 1, 4), *_conv_gn(16, 32, 4, 2, 1, 8), *_conv_gn(32, 64, 4, 2, 1, 8),
            *_conv_gn(64, 128, 3, s4, 1, 16), *_conv_gn(128, 256, 3, s5, 1, 32), *_conv_gn(256, fg_dim, 1, 1, 0, 16),
        )  # fmt: skip
        fg.lateral = nn.Sequential(*_conv_gn(fg_dim, fg_dim, 3, 1, 1, 16), *_conv_gn(fg_dim, fg_dim, 3, 1, 1, 16))
        fg.merge = nn.Sequential(*_conv_gn(2 * fg_dim, 128, 3, 1, 1, 16))
        fg.scale_head = nn.Conv2d(128, 4, 1)
        fg.shift_head = nn.Conv2d(128, 4, 1)
        fg.pres_head = nn.Conv2d(128, 1, 1)
        fg.depth_head = nn.Conv2d(128, 2, 1)
        fg.what_encoder = nn.Sequential(
            *_conv_gn(3, 16, 3, 1, 1, 4), *_conv_gn(16, 32, 4, 2, 1, 8), *_conv_gn(32, 32, 3, 1, 1, 4),
            *_conv_gn(32, 64, 4, 2, 1, 8), *_conv_gn(64, 128, 4, 2, 1, 8), *_conv_gn(128, 256, 4, 1, 0, 16),
        )  # fmt: skip
        fg.what_head = nn.Linear(256, 2 * what_dim)
        fg.glimpse_decoder = nn.Sequential(
            *_conv_gn(what_dim, 256, 1, 1, 0, 16), *_shuffle_up(256, 128, 2, 16), *_shuffle_up(128, 128, 2, 16),
            *_shuffle_up(128, 64, 2, 8), *_shuffle_up(64, 32, 2, 8), *_shuffle_up(32, 16, 2, 4),
        )  # fmt: skip
        fg.glimpse_rgb = nn.Conv2d(16, 3, 3, 1, 1)
        fg.glimpse_alpha = nn.Conv2d(16, 1, 3, 1, 1)
        rows, cols = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
        self.register_buffer("cells", torch.stack([cols, rows], -1).view(G * G, 2).float(), persistent=False)
        kernel = torch.full((GLIMPSE, GLIMPSE), 1.0 / GLIMPSE**2)
        kernel[BOUNDARY_WIDTH:-BOUNDARY_WIDTH, BOUNDARY_WIDTH:-BOUNDARY_WIDTH] = 0.0
        self.register_buffer("boundary_kernel", kernel, persistent=False)

        # background
        bg = self.bg = nn.Module()
        embed = (image_size // 16) ** 2
        bg.encoder = nn.Sequential(
            *_conv_bn(3, 64), *_conv_bn(64, 64), *_conv_bn(64, 64), *_conv_bn(64, 64),
            nn.Flatten(), nn.Linear(64 * embed, bg_dim), nn.ELU(),
        )  # fmt: skip
        bg.mask_rnn = nn.LSTMCell(mask_dim + bg_dim, rnn_dim)
        bg.mask_h0 = nn.Parameter(torch.zeros(rnn_dim))
        bg.mask_c0 = nn.Parameter(torch.zeros(rnn_dim))
        bg.z_mask0 = nn.Parameter(torch.zeros(mask_dim))
        bg.mask_head = nn.Linear(rnn_dim, 2 * mask_dim)
        bg.mask_decoder = nn.Sequential(
            *_conv_gn(mask_dim, 256, 1, 1, 0, 16), *_shuffle_up(256, 256, 4, 16), *_shuffle_up(256, 128, 2, 16),
            *_shuffle_up(128, 64, 4, 8), *_shuffle_up(64, 16, image_size // 32, 4),
            *_conv_gn(16, 16, 3, 1, 1, 4), nn.Conv2d(16, 1, 3, 1, 1),
        )  # fmt: skip
        bg.comp_encoder = nn.Sequential(
            *_conv_bn(4, 32), *_conv_bn(32, 32), *_conv_bn(32, 64), *_conv_bn(64, 64),
            nn.Flatten(), nn.Linear(64 * embed, 2 * comp_dim),
        )  # fmt: skip
        bg.comp_decoder = nn.Sequential(
            *_conv_bn(comp_dim + 2, 32, 3, 1, 0), *_conv_bn(32, 32, 3, 1, 0), *_conv_bn(32, 32, 3, 1, 0),
            *_conv_bn(32, 32, 3, 1, 0), nn.Conv2d(32, 3, 1, 1),
        )  # fmt: skip
        bg.prior_rnn = nn.LSTMCell(mask_dim, rnn_dim)
        bg.prior_h0 = nn.Parameter(torch.zeros(rnn_dim))
        bg.prior_c0 = nn.Parameter(torch.zeros(rnn_dim))
        bg.prior_mask_head = nn.Linear(rnn_dim, 2 * mask_dim)
        bg.prior_comp = nn.Sequential(
            nn.Linear(mask_dim, comp_prior_dim), nn.ELU(), nn.Linear(comp_prior_dim, comp_prior_dim), nn.ELU(),
            nn.Linear(comp_prior_dim, 2 * comp_dim),
        )  # fmt: skip

    def param_groups(self, lr: float) -> list[dict]:
        """The reference's two optimisers: the foreground by RMSprop at fg_lr_factor lr (1e-5 there), the background by
        Adam at lr (1e-3 there)."""
        return [
            {"params": list(self.fg.parameters()), "lr": lr * self.fg_lr_factor, "optimizer": "rmsprop"},
            {"params": list(self.bg.parameters()), "lr": lr, "optimizer": "adam"},
        ]

    # ---------------------------------------------------------------- background
    def _background(self, x: torch.Tensor, randn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        bg, b, K, S = self.bg, x.shape[0], self.K, self.image_size
        feats = bg.encoder(x)
        z_mask = bg.z_mask0.expand(b, -1)
        h, c = bg.mask_h0.expand(b, -1), bg.mask_c0.expand(b, -1)
        z_masks, mask_post, raw = [], [], []
        for _ in range(K):
            h, c = bg.mask_rnn(torch.cat([z_mask, feats], 1), (h, c))
            loc, scale = _softplus_scale(bg.mask_head(h), self.mask_dim, 1e-4)
            z_mask = loc + randn(b, self.mask_dim) * scale
            z_masks.append(z_mask)
            mask_post.append((loc, scale))
            raw.append(torch.sigmoid(bg.mask_decoder(z_mask[:, :, None, None])))
        remaining = torch.ones_like(raw[0])
        masks = []
        for k in range(K):
            m = raw[k] * remaining if k < K - 1 else remaining
            remaining = remaining - m
            masks.append(m)
        masks = torch.stack(masks, 1)  # (B, K, 1, S, S)
        flat = masks.view(b * K, 1, S, S)
        xk = x[:, None].expand(b, K, 3, S, S).reshape(b * K, 3, S, S)
        loc, scale = _softplus_scale(bg.comp_encoder(torch.cat([(flat + 1e-5).log(), xk], 1)), self.comp_dim, 1e-4)
        z_comp = loc + randn(b * K, self.comp_dim) * scale
        comp_post = (loc.view(b, K, -1), scale.view(b, K, -1))
        side = S + 8
        lin = torch.linspace(-1, 1, side, device=x.device, dtype=x.dtype)
        rows, cols = torch.meshgrid(lin, lin, indexing="ij")
        coords = torch.stack([cols, rows])[None].expand(b * K, 2, side, side)
        zc = torch.cat([z_comp[:, :, None, None].expand(-1, -1, side, side), coords], 1)
        comps = torch.sigmoid(bg.comp_decoder(zc)).view(b, K, 3, S, S)
        sigma = torch.full_like(comps, self.bg_sigma)
        log_lik = normal_log_prob(x[:, None].expand_as(comps), comps, sigma) + (masks + 1e-5).log()
        bg_log_lik = torch.logsumexp(log_lik, 1)
        background = (comps * masks).sum(1)
        # the autoregressive prior, conditioned on the posterior z_masks
        h, c = bg.prior_h0.expand(b, -1), bg.prior_c0.expand(b, -1)
        kl_bg = x.new_zeros(b)
        for k in range(K):
            p_loc, p_scale = _softplus_scale(bg.prior_mask_head(h), self.mask_dim, 1e-4)
            pc_loc, pc_scale = _softplus_scale(bg.prior_comp(z_masks[k]), self.comp_dim, 1e-4)
            kl_m = kl_normal(*mask_post[k], p_loc, p_scale).sum(1)
            kl_c = kl_normal(comp_post[0][:, k], comp_post[1][:, k], pc_loc, pc_scale).sum(1)
            kl_bg = kl_bg + kl_m + kl_c
            h, c = bg.prior_rnn(z_masks[k], (h, c))
        return bg_log_lik, background, kl_bg, masks

    # ---------------------------------------------------------------- foreground
    def forward(self, images: torch.Tensor, generator: torch.Generator, step: int | None = None) -> ObjectOutput:
        b, ch, H, W = images.shape
        S, G = self.image_size, self.G
        if ch != 3 or H != S or W != S:
            raise ValueError(f"expected (B, 3, {S}, {S}) images, got {tuple(images.shape)}")
        dtype, dev, g_dev = images.dtype, images.device, generator.device

        def randn(*shape):
            return torch.randn(shape, generator=generator, device=g_dev, dtype=dtype).to(dev)

        def rand(*shape):
            return torch.rand(shape, generator=generator, device=g_dev, dtype=dtype).to(dev)

        def const(v):
            return torch.tensor(v, device=dev, dtype=dtype)

        x = images
        bg_log_lik, background, kl_bg, _ = self._background(x, randn)

        fg, n, cells = self.fg, G * G, b * G * G
        tau = const(anneal(self.tau, step))
        pres_p = const(anneal(self.pres_prior, step))
        scale_mean = const(anneal(self.scale_prior_mean, step))
        enc = fg.encoder(x)
        enc = fg.merge(torch.cat([enc, fg.lateral(enc)], 1))

        def per_cell(t):  # (B, D, G, G) -> (B, G^2, D)
            return t.permute(0, 2, 3, 1).reshape(b, n, t.shape[1])

        pres_logit = per_cell(8.8 * torch.tanh(fg.pres_head(enc)))
        depth_loc, depth_scale = per_cell(fg.depth_head(enc)).chunk(2, -1)
        depth_scale = F.softplus(depth_scale)
        scale_loc, scale_scale = per_cell(fg.scale_head(enc)).chunk(2, -1)
        scale_scale = F.softplus(scale_scale) + 1e-15
        shift_loc, shift_scale = per_cell(fg.shift_head(enc)).chunk(2, -1)
        shift_scale = F.softplus(shift_scale)

        eps = torch.finfo(dtype).eps
        p = torch.sigmoid(pres_logit).clamp(eps, 1 - eps)
        u = rand(b, n, 1).clamp(eps, 1 - eps)
        z_pres = torch.sigmoid((u.log() - (-u).log1p() + p.log() - (-p).log1p()) / tau)
        z_depth = depth_loc + randn(b, n, 1) * depth_scale
        z_scale = torch.sigmoid(scale_loc + randn(b, n, 2) * scale_scale)
        z_shift = (2.0 / G) * (self.cells.to(dtype) + 0.5 + torch.tanh(shift_loc + randn(b, n, 2) * shift_scale)) - 1

        # glimpses and z_what
        sx, sy = z_scale.reshape(cells, 2).unbind(1)
        cx, cy = z_shift.reshape(cells, 2).unbind(1)
        zeros = torch.zeros_like(sx)
        theta = torch.stack([sx, zeros, cx, zeros, sy, cy], 1).view(cells, 2, 3)
        grid = F.affine_grid(theta, [cells, 3, GLIMPSE, GLIMPSE], align_corners=False)
        x_rep = torch.repeat_interleave(x, n, dim=0)
        glimpses = F.grid_sample(x_rep, grid, align_corners=False)
        what_loc, what_scale = fg.what_head(fg.what_encoder(glimpses).flatten(1)).chunk(2, -1)
        what_scale = F.softplus(what_scale)
        z_what = what_loc + randn(cells, self.what_dim) * what_scale
        dec = fg.glimpse_decoder(z_what[:, :, None, None])
        o_att, alpha_att = torch.sigmoid(fg.glimpse_rgb(dec)), torch.sigmoid(fg.glimpse_alpha(dec))
        pres_c = z_pres.reshape(cells, 1, 1, 1)
        alpha_hat = alpha_att * pres_c
        importance = alpha_hat * 100.0 * torch.sigmoid(-z_depth.reshape(cells, 1, 1, 1))
        boundary = self.boundary_kernel.to(dtype)[None, None] * pres_c

        # everything back to the image by the inverse transform, in one grid_sample
        inv = torch.stack([1 / (sx + 1e-9), zeros, -cx / (sx + 1e-9), zeros, 1 / (sy + 1e-9), -cy / (sy + 1e-9)], 1)
        inv = inv.view(cells, 2, 3)
        grid = F.affine_grid(inv, [cells, 6, H, W], align_corners=False)
        placed = F.grid_sample(torch.cat([importance, alpha_hat * o_att, alpha_hat, boundary], 1), grid,
                               align_corners=False).view(b, n, 6, H, W)  # fmt: skip
        weights = torch.softmax(placed[:, :, :1], 1)
        y_cells, alpha_cells, boundary_cells = placed[:, :, 1:4], placed[:, :, 4:5], placed[:, :, 5:6]
        foreground = (y_cells * weights).sum(1)
        alpha_map = (alpha_cells * weights).sum(1)

        # KL and the boundary loss
        kl_pres_el = torch.sigmoid(pres_logit)
        kl_pres = (kl_pres_el * ((kl_pres_el + 1e-15).log() - (pres_p + 1e-15).log())
                   + (1 - kl_pres_el) * ((1 - kl_pres_el + 1e-15).log() - (1 - pres_p + 1e-15).log()))  # fmt: skip
        kl_depth = kl_normal(depth_loc, depth_scale, 0.0, 1.0)
        kl_scale = kl_normal(scale_loc, scale_scale, scale_mean, const(self.scale_prior_std))
        kl_shift = kl_normal(shift_loc, shift_scale, 0.0, 1.0)
        kl_what = kl_normal(what_loc.view(b, n, -1), what_scale.view(b, n, -1), 0.0, 1.0)
        kl_pres, kl_depth, kl_scale, kl_shift, kl_what = (
            t.flatten(1).sum(1) for t in (kl_pres, kl_depth, kl_scale, kl_shift, kl_what)
        )
        kl_where = kl_scale + kl_shift
        kl_fg = kl_what + kl_where + kl_pres + kl_depth
        overlap = boundary_cells.sum(1) * 1000 * alpha_map
        bl = -normal_log_prob(overlap, const(0.0), const(0.7)).flatten(1).sum(1)
        if not self.boundary_loss or (step is not None and step > self.bl_off_step):
            bl = bl * 0.0

        # the mixture likelihood and the loss
        fg_log_lik = normal_log_prob(x, foreground, const(self.fg_sigma)) + (alpha_map + 1e-5).log()
        bg_ll = bg_log_lik + (1 - alpha_map + 1e-5).log()
        log_like = torch.logsumexp(torch.stack([fg_log_lik, bg_ll], 1), 1).flatten(1).sum(1)
        canvas = alpha_map * foreground + (1 - alpha_map) * background
        kl = kl_bg + kl_fg
        elbo = log_like - kl
        loss = (-elbo + bl).mean()
        parts = torch.stack([loss, log_like.mean(), elbo.mean(), kl.mean(), kl_fg.mean(), kl_bg.mean(),
                             kl_what.mean(), kl_where.mean(), kl_depth.mean(), kl_pres.mean(), bl.mean(),
                             torch.round(z_pres).flatten(1).sum(1).mean()])  # fmt: skip
        names = ("loss", "rec", "elbo", "kl", "kl_fg", "kl_bg", "kl_what", "kl_where", "kl_depth", "kl_pres",
                 "boundary", "count")  # fmt: skip
        terms = dict(zip(names, parts.detach().cpu().tolist()))
        return ObjectOutput(loss, alpha_cells[:, :, 0], canvas, terms)


def build(params: dict) -> SPACE:
    """SPACE from a recipe's architecture/loss params; missing keys take the ClevrTex defaults (DEFAULTS)."""
    return build_model(SPACE, DEFAULTS, params)
