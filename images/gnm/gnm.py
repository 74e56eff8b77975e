"""GNM (Jiang & Ahn, NeurIPS 2020, "Generative Neurosymbolic Machines").

Written from the paper, with the behaviour and hyper-parameters of the ClevrTex benchmark's copy of the authors' code
(karazijal/clevrtex fe982ab, ool/picture/models/thirdparty/gnm/model.py and experiments/gnm.py; GPLv3: read for
behaviour, nothing copied) in its ClevrTex configuration: experiments/gnm.py's defaults (4x4 = 16 cells, z_what 64,
z_bg 10) with the README's ClevrTex command `--std 0.5` (the likelihood's sigma; experiments/gnm.py's default is 0.2):
DEFAULTS are that configuration.

- Image encoder: 9 convs (kernels 4/3 alternating, strides 2/1: five of stride 2), each followed by CELU and
  GroupNorm(1): a 4x4 grid of 128 features at 128x128 (one object per cell).
- Global structure (StructDRAW, 4 steps): two conv-LSTMs (1x1 kernels, learned initial h and c) on the 4x4 grid. At
  step i the prior p(z_g^i) = an MLP (512, 512, 64) of the decoder's hidden state flattened (row, column, channel);
  the encoder LSTM reads (features, features - canvas, decoder hidden), q(z_g^i) = an MLP of its hidden state;
  z_g^i ~ q (32 numbers) -> an MLP (512, 1024, 2048; CELU + LayerNorm after every layer) reshaped to (128, 4, 4)
  with the canvas -> the decoder LSTM; canvas += conv3x3(decoder hidden). The final canvas is the global code.
- Local latents per cell: ONE network (two 1x1 conv + CELU + GroupNorm, then 1x1 heads) gives the prior p(z | g)
  from the global code and the posterior q(z | x) from the image features: presence logits 8.8 tanh(.), where
  N(4: scale, ratio, shift x, shift y), depth N(1), what N(64), scales softplus. The where head starts with weights
  U(-0.01, 0.01) and bias (-1, 0, ...).
- Samples from q: z_pres ~ RelaxedBernoulli(tau, logits) (as torch draws it: logistic noise plus the logit of the
  clamped probability, / tau, a clipped sigmoid); where: size s = sigmoid, ratio r = exp, (s / sqrt(r),
  s sqrt(r)); centre = 2 / 4 (cell + 0.5 + tanh(shift)) - 1 in [-1, 1]. z_what -> a sub-pixel decoder (six conv3x3 +
  pixel-shuffle x2: 64x64 glimpse) -> sigmoid RGB o and alpha a.
- Background: q(z_bg | x) = an MLP (512, 256, 20) of the image features flattened (channel, row, column); p(z_bg |
  z_g) = an MLP (128, 64, 20) of the four z_g; z_bg (10) ~ q -> a sub-pixel decoder (1x1 convs, shuffles 4, 2, 4,
  2, 2, then conv3x3) -> sigmoid 128x128 RGB.
- Render: alpha_k = a_k z_pres_k placed by the inverse affine transform (bilinear, zeros outside); importance_k =
  placed(alpha_k sigmoid(-z_depth_k)), normalised over the cells (+1e-15); foreground = sum_k importance_k
  placed(alpha_k o_k); alpha = sum_k alpha_k (its value clamped to [1e-15, 1 - 1e-15], gradient straight through);
  canvas = foreground + (1 - alpha) background.
- Loss (per image, averaged over the batch): - sum_pixels log N(x; canvas, sigma) + the KLs, each summed over cells
  and dimensions: KL(q || p(.|g)) for pres (Bernoulli), where, depth, what (not weighted by z_pres), KL of the four
  z_g (weight beta_global) and of z_bg; plus auxiliary KLs against fixed priors: pres vs Bernoulli(p_pres), where vs
  N((-1.5, 0, 0, 0), (0.1, 0.3, 1, 1)) (weight beta_aux_where), depth and what vs N(0, 1), these three weighted by
  the sampled z_pres clamped to >= 1e-5, and z_bg vs N(0, 1) (weight beta_aux_bg).
- Schedules (the reference's hyperparam_anneal, from the step its trainer passes): (start step, end step, start
  value, end value): start value up to start step, linear in between (exclusive), end value from end step on; an
  end step of 0 means the constant start value (as the reference). beta_global 0 -> 1 over 100k steps, beta_aux_where
  10 -> 1 over 500, beta_aux_bg 50 -> 1 over 50k, tau_pres 1 -> 0.5 over 1000..20000, p_pres 0.1 -> 0.001 over 4000;
  the other betas are 1. Background-alpha curriculum: for 0 < step < 500 alpha = 0.9 everywhere and z_pres is capped at
  0.99 in the render (and so in the masks). step None = evaluation: the reference evaluates with its trainer's
  global step, i.e. a checkpoint trained past every schedule (300k steps): the end values, no curriculum. Eval mode
  changes nothing else (no batch statistics; the reference samples at evaluation too).
- Outputs: masks = the reference's out['steps']['mask'] (what the ClevrTex evaluator gets, bg=False): each cell's
  placed alpha_k, (B, 16, H, W), each in [0, 1], not normalised (the evaluator prepends 1 - sum). canvas = the
  rendered image above (not clamped).
- Sampling: every draw comes from the passed generator, in the reference's order: q(z_bg) normal (B, 10, 1, 1); per
  DRAW step q(z_g) normal (B, 32); p(z_bg | z_g) normal (B, 10, 1, 1) (drawn and discarded, as the reference, whose
  sample is unused); the presence uniform (B, 1, 4, 4); where (B, 4, 4, 4), depth (B, 1, 4, 4), what (B, 64, 4, 4)
  normals.

Deliberate differences: the reference's logging-only computations are not written (the reconstruction from the
prior's latents, the bounding-box image, the NLL importance weights, the unused LocalLatentGenerator module and the
non-overlap render); they enter neither the loss nor the outputs. The architecture lists are parameters so that a
small model can be built for tests (the image encoder must reduce the image to num_cell x num_cell, the background
decoder must upscale 1x1 to the image size).

Training recipe (experiments/gnm.py + the README's ClevrTex command; read, not run): RMSprop at 1e-4, batch 32,
gradient clip 1.0 (norm), 300k steps, data 'clevrtex:full-crop-(128,128)', --std 0.5; the model reads its schedules
from the trainer's global step (as `step` here).

scripts/compare_gnm.py runs the reference on the same weights and noise (128x128, 16 cells; train at steps 0, 250
(curriculum), 2000 and 30000 and eval; init and perturbed weights): masks, canvas, presence counts, the loss and all
its 13 KL / likelihood terms are bit-identical in float32 and float64; gradients differ by <= 1.7e-7 of the largest
in float32 (2.5e-16 in float64). The default model has 8,636,446 parameters, as the reference's. CPU (2 threads,
nice'd, on a loaded 2-core machine): batch 8 at 128x128, ~2.1 s per RMSprop step (forward ~0.9 s), ~0.7 s per eval
forward: the paper's 300k steps at batch 32 are GPU work.
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
    "num_cell": 4,
    "z_what_dim": 64,
    "z_bg_dim": 10,
    "z_global_dim": 32,
    "draw_steps": 4,
    "enc_filters": (16, 16, 32, 32, 64, 64, 128, 128, 128),
    "enc_kernels": (4, 3, 4, 3, 4, 3, 4, 3, 4),
    "enc_strides": (2, 1, 2, 1, 2, 1, 2, 1, 2),
    "what_dec_filters": (128, 64, 32, 16, 8, 4),
    "what_dec_upscales": (2, 2, 2, 2, 2, 2),
    "bg_dec_filters": (128, 64, 32, 16, 8, 3),
    "bg_dec_kernels": (1, 1, 1, 1, 1, 3),
    "bg_dec_upscales": (4, 2, 4, 2, 2, 1),
    "global_dec_filters": (512, 1024, 2048),
    "global_enc_filters": (512, 512),
    "bg_gen_filters": (128, 64),
    "bg_enc_filters": (512, 256),
    "std": 0.5,
    "pres_logit_scale": 8.8,
    "where_prior_loc": (-1.5, 0.0, 0.0, 0.0),
    "where_prior_scale": (0.1, 0.3, 1.0, 1.0),
    "beta_global": (0, 100000, 0.0, 1.0),
    "beta_aux_where": (0, 500, 10.0, 1.0),
    "beta_aux_bg": (0, 50000, 50.0, 1.0),
    "tau_pres": (1000, 20000, 1.0, 0.5),
    "p_pres": (0, 4000, 0.1, 0.001),
    "bg_alpha_curriculum": (0, 500, 0.9),
}

EPS = 1e-15  # the reference's const.eps


def schedule(spec: float | Sequence, step: int | None) -> float:
    """A constant, or (start step, end step, start value, end value) as the reference's linear_schedule (an end step
    of 0: the start value, always); step None: the end value (a model trained past the schedule)."""
    if isinstance(spec, (int, float)):
        return float(spec)
    s0, s1, v0, v1 = spec
    if s1 == 0:
        return float(v0)
    if step is None:
        return float(v1)
    if s0 < step < s1:
        slope = (v1 - v0) / (s1 - s0)
        return v0 + slope * (step - s0)
    return float(v1) if step >= s1 else float(v0)


def curriculum_alpha(spec, step: int | None) -> float | None:
    """The background-alpha curriculum's constant alpha at `step` ((start, end, value): start < step < end), else None."""
    if spec is None or step is None:
        return None
    s0, s1, value = spec
    return float(value) if s0 < step < s1 else None


def conv_stack(cin: int, filters, kernels, strides, final_act: bool) -> nn.Sequential:
    """Conv, CELU, GroupNorm(1) per layer (a stride of 0: stride 1 without padding); no CELU/norm after the last
    unless final_act."""
    layers = []
    for i, (f, k, s) in enumerate(zip(filters, kernels, strides)):
        layers.append(nn.Conv2d(cin, f, k, 1, 0) if s == 0 else nn.Conv2d(cin, f, k, s, (k - 1) // 2))
        if i == len(filters) - 1 and not final_act:
            break
        layers += [nn.CELU(), nn.GroupNorm(1, f)]
        cin = f
    return nn.Sequential(*layers)


def subpixel_stack(cin: int, filters, kernels, upscales) -> nn.Sequential:
    """Conv (to f u^2 channels) + PixelShuffle(u) per layer (u = 1: a plain conv), CELU and GroupNorm(1) between."""
    layers = []
    for i, (f, k, u) in enumerate(zip(filters, kernels, upscales)):
        if u == 1:
            layers.append(nn.Conv2d(cin, f, k, 1, (k - 1) // 2))
        else:
            layers += [nn.Conv2d(cin, f * u * u, k, 1, (k - 1) // 2), nn.PixelShuffle(u)]
        if i == len(filters) - 1:
            break
        layers += [nn.CELU(), nn.GroupNorm(1, f)]
        cin = f
    return nn.Sequential(*layers)


def mlp(cin: int, filters, final_act: bool) -> nn.Sequential:
    """Linear, CELU, LayerNorm per layer; none after the last unless final_act."""
    layers = []
    for i, f in enumerate(filters):
        layers.append(nn.Linear(cin, f))
        if i == len(filters) - 1 and not final_act:
            break
        layers += [nn.CELU(), nn.LayerNorm(f)]
        cin = f
    return nn.Sequential(*layers)


def kl_normal(loc, scale, p_loc, p_scale):
    """KL(N(loc, scale) || N(p_loc, p_scale)) elementwise."""
    var_ratio = (scale / p_scale).pow(2)
    t1 = ((loc - p_loc) / p_scale).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


def kl_bernoulli(q, p):
    """KL(Bern(q) || Bern(p)) elementwise, with the reference's 1e-15 inside the logs."""
    return q * (torch.log(q + EPS) - torch.log(p + EPS)) + (1 - q) * (torch.log(1 - q + EPS) - torch.log(1 - p + EPS))


def place(t: torch.Tensor, where: torch.Tensor, size: int) -> torch.Tensor:
    """Glimpses (N, C, g, g) onto (N, C, size, size) by the inverse of the box `where` (N, 4: sx, sy, x, y)."""
    sx, sy, x, y = where.unbind(1)
    zeros = torch.zeros_like(sx)
    inv_x, inv_y = 1 / (sx + EPS), 1 / (sy + EPS)
    theta = torch.stack([inv_x, zeros, -x / (sx + EPS), zeros, inv_y, -y / (sy + EPS)], 1).view(-1, 2, 3)
    grid = F.affine_grid(theta, [t.shape[0], t.shape[1], size, size], align_corners=False)
    return F.grid_sample(t, grid, align_corners=False)


class ConvLSTM(nn.Module):
    """A conv-LSTM cell (gates i, f, o, candidate c from one conv) with learned initial h and c."""

    def __init__(self, cin: int, hidden: int, cells: int, kernel: int = 1):
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(cin + hidden, 4 * hidden, kernel, padding=(kernel - 1) // 2)
        self.h_0 = nn.Parameter(torch.zeros(1, hidden, cells, cells))
        self.c_0 = nn.Parameter(torch.zeros(1, hidden, cells, cells))

    def init(self, b: int):
        return self.h_0.expand(b, -1, -1, -1), self.c_0.expand(b, -1, -1, -1)

    def forward(self, x, h, c):
        i, f, o, g = self.conv(torch.cat([x, h], 1)).split(self.hidden, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class StructDRAW(nn.Module):
    """GNM's global latent: `steps` DRAW steps on the cell grid; returns the global code (canvas) and the z_g terms."""

    def __init__(self, hidden: int, cells: int, z_dim: int, steps: int, dec_filters, enc_filters):
        super().__init__()
        if dec_filters[-1] % (cells * cells):
            raise ValueError(f"global_dec_filters[-1] ({dec_filters[-1]}) must be a multiple of {cells * cells}")
        self.hidden, self.cells, self.z_dim, self.steps = hidden, cells, z_dim, steps
        self.global_dec = mlp(z_dim, dec_filters, final_act=True)
        self.rnn_enc = ConvLSTM(3 * hidden, hidden, cells)
        self.rnn_dec = ConvLSTM(dec_filters[-1] // (cells * cells) + hidden, hidden, cells)
        self.p_global = mlp(cells * cells * hidden, [*enc_filters, 2 * z_dim], final_act=False)
        self.q_global = mlp(cells * cells * hidden, [*enc_filters, 2 * z_dim], final_act=False)
        self.hid_to_dec = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1))

    def forward(self, x: torch.Tensor, randn):
        b = x.shape[0]
        h_enc, c_enc = self.rnn_enc.init(b)
        h_dec, c_dec = self.rnn_dec.init(b)
        canvas = x.new_zeros(b, self.hidden, self.cells, self.cells)
        p_mu, p_sd, q_mu, q_sd, zs = [], [], [], [], []
        for _ in range(self.steps):
            mu, sd = self.p_global(h_dec.permute(0, 2, 3, 1).reshape(b, -1)).chunk(2, -1)
            p_mu.append(mu)
            p_sd.append(F.softplus(sd))
            h_enc, c_enc = self.rnn_enc(torch.cat([x, x - canvas, h_dec], 1), h_enc, c_enc)
            mu, sd = self.q_global(h_enc.permute(0, 2, 3, 1).reshape(b, -1)).chunk(2, -1)
            sd = F.softplus(sd)
            z = mu + randn(b, self.z_dim) * sd
            q_mu.append(mu)
            q_sd.append(sd)
            zs.append(z)
            dec_in = self.global_dec(z).reshape(b, -1, self.cells, self.cells)
            h_dec, c_dec = self.rnn_dec(torch.cat([dec_in, canvas], 1), h_dec, c_dec)
            canvas = canvas + self.hid_to_dec(h_dec)
        stack = [torch.stack(t, 1) for t in (zs, p_mu, p_sd, q_mu, q_sd)]  # (B, steps, z_dim)
        return canvas, *stack


class LocalLatents(nn.Module):
    """The cell latents' distribution parameters from a (B, hidden, cells, cells) map (prior: the global code;
    posterior: the image features; one network for both, as the reference)."""

    def __init__(self, hidden: int, what_dim: int, pres_logit_scale: float):
        super().__init__()
        self.pres_logit_scale = pres_logit_scale
        self.net = conv_stack(hidden, (hidden, hidden), (1, 1), (1, 1), final_act=True)
        self.depth = nn.Conv2d(hidden, 2, 1)
        self.where = nn.Conv2d(hidden, 8, 1)
        self.what = nn.Conv2d(hidden, 2 * what_dim, 1)
        self.pres = nn.Conv2d(hidden, 1, 1)
        nn.init.uniform_(self.where.weight.data, -0.01, 0.01)
        nn.init.constant_(self.where.bias.data[0], -1.0)
        nn.init.constant_(self.where.bias.data[1:], 0.0)

    def forward(self, x: torch.Tensor) -> dict:
        h = self.net(x)
        out = {"pres_logits": torch.tanh(self.pres(h)) * self.pres_logit_scale}
        for name in ("where", "depth", "what"):
            mu, sd = getattr(self, name)(h).chunk(2, 1)
            out[name] = (mu, F.softplus(sd))
        return out


class GNM(ObjectModel):
    """GNM on (B, 3, S, S) images in [0, 1]; one object per cell of a num_cell x num_cell grid."""

    masks_have_background = False

    def __init__(self, image_size: int, num_cell: int, z_what_dim: int, z_bg_dim: int, z_global_dim: int,
                 draw_steps: int, enc_filters, enc_kernels, enc_strides, what_dec_filters, what_dec_upscales,
                 bg_dec_filters, bg_dec_kernels, bg_dec_upscales, global_dec_filters, global_enc_filters,
                 bg_gen_filters, bg_enc_filters, std: float, pres_logit_scale: float, where_prior_loc,
                 where_prior_scale, beta_global, beta_aux_where, beta_aux_bg, tau_pres, p_pres,
                 bg_alpha_curriculum):  # fmt: skip
        super().__init__()
        if what_dec_filters[-1] != 4:
            raise ValueError(f"what_dec_filters must end with 4 (RGB + alpha), got {what_dec_filters[-1]}")
        if bg_dec_filters[-1] != 3:
            raise ValueError(f"bg_dec_filters must end with 3 (RGB), got {bg_dec_filters[-1]}")
        if math.prod(bg_dec_upscales) != image_size:
            raise ValueError(f"bg_dec_upscales {tuple(bg_dec_upscales)} must multiply to image_size {image_size}")
        self.image_size, self.num_cell = image_size, num_cell
        self.z_what_dim, self.z_bg_dim = z_what_dim, z_bg_dim
        self.std, self.pres_logit_scale = float(std), pres_logit_scale
        self.where_prior = (tuple(where_prior_loc), tuple(where_prior_scale))
        self.schedules = {"beta_global": beta_global, "beta_aux_where": beta_aux_where, "beta_aux_bg": beta_aux_bg,
                          "tau_pres": tau_pres, "p_pres": p_pres}  # fmt: skip
        self.bg_alpha_curriculum = bg_alpha_curriculum
        hidden = enc_filters[-1]
        self.hidden = hidden
        self.glimpse = math.prod(what_dec_upscales)

        self.encoder = conv_stack(3, enc_filters, enc_kernels, enc_strides, final_act=True)
        self.draw = StructDRAW(hidden, num_cell, z_global_dim, draw_steps, global_dec_filters, global_enc_filters)
        self.local = LocalLatents(hidden, z_what_dim, pres_logit_scale)
        self.what_dec = subpixel_stack(z_what_dim, what_dec_filters, [3] * len(what_dec_filters), what_dec_upscales)
        self.bg_dec = subpixel_stack(z_bg_dim, bg_dec_filters, bg_dec_kernels, bg_dec_upscales)
        self.bg_prior = mlp(z_global_dim * draw_steps, [*bg_gen_filters, 2 * z_bg_dim], final_act=False)
        self.bg_enc = mlp(hidden * num_cell * num_cell, [*bg_enc_filters, 2 * z_bg_dim], final_act=False)

    def forward(self, images: torch.Tensor, generator: torch.Generator, step: int | None = None) -> ObjectOutput:
        b, c, H, W = images.shape
        S, nc = self.image_size, self.num_cell
        if c != 3 or H != S or W != S:
            raise ValueError(f"expected (B, 3, {S}, {S}) images, got {tuple(images.shape)}")
        dtype, dev, g_dev = images.dtype, images.device, generator.device
        K, N = nc * nc, b * nc * nc

        def randn(*shape):
            return torch.randn(shape, generator=generator, device=g_dev, dtype=dtype).to(dev)

        def rand(*shape):
            return torch.rand(shape, generator=generator, device=g_dev, dtype=dtype).to(dev)

        sched = {k: schedule(v, step) for k, v in self.schedules.items()}
        alpha_const = curriculum_alpha(self.bg_alpha_curriculum, step)

        feats = self.encoder(images)
        if feats.shape[-2:] != (nc, nc):
            raise ValueError(f"the encoder gives a {tuple(feats.shape[-2:])} grid, num_cell is {nc}")
        # q(z_bg | x)
        q_bg_mu, q_bg_sd = self.bg_enc(feats.reshape(b, -1)).chunk(2, 1)
        q_bg_mu, q_bg_sd = q_bg_mu.view(b, -1, 1, 1), F.softplus(q_bg_sd.view(b, -1, 1, 1))
        z_bg = q_bg_mu + randn(b, self.z_bg_dim, 1, 1) * q_bg_sd
        # global structure
        global_code, z_g, p_g_mu, p_g_sd, q_g_mu, q_g_sd = self.draw(feats, randn)
        p_z = self.local(global_code)
        q_z = self.local(feats)
        # p(z_bg | z_g); its sample is unused (drawn to keep the reference's order of draws)
        p_bg_mu, p_bg_sd = self.bg_prior(z_g.reshape(b, -1)).chunk(2, 1)
        p_bg_mu, p_bg_sd = p_bg_mu.view(b, -1, 1, 1), F.softplus(p_bg_sd.view(b, -1, 1, 1))
        randn(b, self.z_bg_dim, 1, 1)

        # samples from q(z | x)
        finfo = torch.finfo(dtype)
        u = rand(b, 1, nc, nc).clamp(finfo.eps, 1 - finfo.eps)
        qp = torch.sigmoid(q_z["pres_logits"]).clamp(finfo.eps, 1 - finfo.eps)  # torch's RelaxedBernoulli: via probs
        logit = (u.log() - (-u).log1p() + qp.log() - (-qp).log1p()) / sched["tau_pres"]
        z_pres = torch.sigmoid(logit).clamp(finfo.tiny, 1 - finfo.eps)
        mu, sd = q_z["where"]
        w = mu + randn(b, 4, nc, nc) * sd
        scale_raw, shift_raw = w[:, :2], w[:, 2:]
        rows, cols = torch.meshgrid(torch.arange(nc, device=dev, dtype=dtype),
                                    torch.arange(nc, device=dev, dtype=dtype), indexing="ij")  # fmt: skip
        offset = torch.stack([cols, rows])[None]  # (1, 2: x, y, nc, nc)
        shift = (2.0 / nc) * (offset + 0.5 + torch.tanh(shift_raw)) - 1.0
        size = torch.sigmoid(scale_raw[:, :1])
        ratio_sqrt = torch.exp(scale_raw[:, 1:]).sqrt()
        z_where = torch.cat([size / ratio_sqrt, size * ratio_sqrt, shift], 1)  # (B, 4: sx, sy, x, y, nc, nc)
        mu, sd = q_z["depth"]
        z_depth = mu + randn(b, 1, nc, nc) * sd
        mu, sd = q_z["what"]
        z_what = mu + randn(b, self.z_what_dim, nc, nc) * sd
        glimpse = self.what_dec(z_what.permute(0, 2, 3, 1).reshape(N, self.z_what_dim, 1, 1))
        o, a = torch.sigmoid(glimpse[:, :3]), torch.sigmoid(glimpse[:, 3:])
        background = torch.sigmoid(self.bg_dec(z_bg))

        # render
        def cellwise(t):  # (B, d, nc, nc) -> (B * cells, d), cells in raster order
            return t.permute(0, 2, 3, 1).reshape(N, -1)

        pres, where, depth = cellwise(z_pres), cellwise(z_where), cellwise(z_depth)
        pres_r = pres.clamp(max=0.99) if alpha_const is not None else pres
        a_hat = a * pres_r.view(-1, 1, 1, 1)
        fg = place(a_hat * o, where, S).view(b, K, 3, S, S)
        imp = place(a_hat * torch.sigmoid(-depth).view(-1, 1, 1, 1), where, S).view(b, K, 1, S, S)
        imp = imp / (imp.sum(1, keepdim=True) + EPS)
        masks = place(a_hat, where, S).view(b, K, 1, S, S)
        alpha = masks.sum(1)
        alpha = alpha + (alpha.clamp(EPS, 1 - EPS) - alpha).detach()
        if alpha_const is not None:
            alpha = alpha.new_ones(alpha.shape) * alpha_const
        canvas = (fg * imp).sum(1) + (1.0 - alpha) * background

        # loss
        def per_image(t):  # (B * cells, d) -> (B,)
            return t.reshape(b, -1).sum(-1)

        q_pres = torch.sigmoid(cellwise(q_z["pres_logits"]))
        p_pres = torch.sigmoid(cellwise(p_z["pres_logits"]))
        aux_p = torch.tensor(sched["p_pres"], dtype=dtype, device=dev).expand(N, 1)
        gate = pres.clamp(min=1e-5)
        one, zero = torch.ones(1, dtype=dtype, device=dev), torch.zeros(1, dtype=dtype, device=dev)
        w_loc = torch.tensor([self.where_prior[0]], dtype=dtype, device=dev)
        w_scale = torch.tensor([self.where_prior[1]], dtype=dtype, device=dev)
        q = {k: (cellwise(q_z[k][0]), cellwise(q_z[k][1])) for k in ("where", "depth", "what")}
        p = {k: (cellwise(p_z[k][0]), cellwise(p_z[k][1])) for k in ("where", "depth", "what")}
        raw = {
            "aux_pres": per_image(kl_bernoulli(q_pres, aux_p)),
            "aux_where": per_image(kl_normal(*q["where"], w_loc, w_scale) * gate),
            "aux_depth": per_image(kl_normal(*q["depth"], zero, one) * gate),
            "aux_what": per_image(kl_normal(*q["what"], zero, one) * gate),
            "aux_bg": kl_normal(q_bg_mu, q_bg_sd, zero, one).flatten(1).sum(-1),
            "pres": per_image(kl_bernoulli(q_pres, p_pres)),
            "where": per_image(kl_normal(*q["where"], *p["where"])),
            "depth": per_image(kl_normal(*q["depth"], *p["depth"])),
            "what": per_image(kl_normal(*q["what"], *p["what"])),
            "global": kl_normal(q_g_mu, q_g_sd, p_g_mu, p_g_sd).sum(-1),  # (B, steps)
            "bg": kl_normal(q_bg_mu, q_bg_sd, p_bg_mu, p_bg_sd).flatten(1).sum(-1),
        }
        betas = {"aux_where": sched["beta_aux_where"], "aux_bg": sched["beta_aux_bg"], "global": sched["beta_global"]}
        kls = {}
        for k, v in raw.items():
            v = v.sum(-1).mean(0) if k == "global" else v.mean(0)
            kls[k] = v * betas.get(k, 1.0)
        var = self.std**2
        log_like = -((images - canvas) ** 2) / (2 * var) - math.log(self.std) - math.log(math.sqrt(2 * math.pi))
        rec = log_like.flatten(1).sum(1).mean(0)
        order = (
            "pres",
            "where",
            "depth",
            "what",
            "bg",
            "global",
            "aux_pres",
            "aux_where",
            "aux_depth",
            "aux_what",
            "aux_bg",
        )  # fmt: skip  (the reference's order of summation)
        kl = kls[order[0]]
        for k in order[1:]:
            kl = kl + kls[k]
        loss = -(rec - kl)

        parts = torch.stack([loss, rec, kl, *(kls[k] for k in order)]).detach().cpu().tolist()
        terms = dict(zip(("loss", "rec", "kl", *(f"kl_{k}" for k in order)), parts))
        terms["count"] = torch.round(z_pres).flatten(1).sum(-1).mean().item()  # the reference's counts, averaged
        return ObjectOutput(loss, masks[:, :, 0], canvas, terms)


def build(params: dict) -> GNM:
    """GNM from a recipe's architecture/loss params; missing keys take DEFAULTS (the README's ClevrTex run: std 0.5)."""
    return build_model(GNM, DEFAULTS, params)
