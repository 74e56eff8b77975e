"""EfficientMORL (Emami, He, Ranka, Rangarajan, ICML 2021, "Efficient Iterative Amortized Inference for Learning
Symmetric and Disentangled Multi-Object Representations", PMLR 139).

Written from the paper and the ClevrTex benchmark's copy of the authors' code (karazijal/clevrtex fe982ab,
ool/picture/models/thirdparty/emorl/model.py + utils.py, MIT, pemami), with its ClevrTex configuration
(experiments/effmorl.py): 11 slots, z 64, 3 stochastic layers, the 'iodine' broadcast decoder, the Gaussian image
likelihood (sigma 0.1) of the mixture mean, the reversed hierarchical prior with `reverse_prior_plusplus`, the dual
GRU, refinement curriculum [(-1, 3), (100000, 1), (200000, 1)], GECO (target -108000, EMA 0.99, step 1e-6, warm-up
1000 steps, beta >= 0.55) and kl_beta 1. Only that configuration is written (no GMM likelihood, bottom-up prior or
other decoders).

- Encoder: images to [-1, 1]; 4 conv5x5 (ReLU) at full resolution + a linear map of a 4-channel position grid,
  then LayerNorm + MLP -> per-pixel features; keys and values from them.
- HVAE (bottom-up, L stochastic layers): slots ~ q(z; init_posterior), then per layer slot attention (softmax over
  slots, + 1e-8, normalised over pixels) updates the posterior's mean and softplus-scale with two GRUs (the
  reference's DualGRU) and residual MLPs; a sample of each layer's posterior is the next layer's query.
  std = sqrt(softplus(min(s, 80)) + 1e-5).
- Decoder: z broadcast on an (H+10)x(W+10) grid + a linear map of the position grid, 4 conv3x3 ELU + conv3x3 ->
  sigmoid RGB means and mask logits; masks = softmax over slots; canvas = sum_k m_k mu_k.
- Loss of one pass: NLL = -sum_pixels log N(x; canvas, sigma) without the log(2 pi) term, per image; KL at the
  first pass = KL(q_{L-1} || N(0, I)) + sum_{l<L-1} KL(q_l || p(z_l | z_{l+1} ~ q_{l+1})) summed over slots; at
  refinement passes KL(q_i || p(z_0 | z_1)), that prior kept from the first pass. Before GECO's warm-up ends:
  mean(NLL + kl_beta KL); after: kl_beta mean(KL) - softplus(beta) (C_t + sg(C_ema - C_t)), C_t = target -
  mean(NLL) (its value is kl_beta KL - softplus(beta) C_ema, its gradient that of softplus(beta) NLL).
- Refinement (I passes): LayerNorm'd gradients of the previous pass's loss w.r.t. the posterior parameters lambda
  (detached), with lambda, through an MLP and a GRU give delta lambda; lambda += delta; decode a new sample.
  The total loss weights pass i by (I + 3 - i) / (I + 1), as the reference (earlier passes weigh more).
- GECO lives in buffers (geco_beta, geco_c_ema, geco_started): a training forward (model.train(), step given)
  updates them after computing its loss, as the reference's update_geco after each training step: at the first
  step >= warm-up C_ema = target - NLL, later C_ema = a C_ema + (1 - a)(target - NLL) and beta = max(0.55, beta -
  step_size C_ema). state_dict() holds them, so a checkpoint resumes exactly.
- Refinement passes: in training the curriculum at `step` (the reference sets it from global_step); at evaluation
  (eval mode or step None) `refinement_iters` (3), what a checkpoint freshly loaded for evaluation uses in the
  reference. At evaluation GECO's loss form is used once GECO has started (the reference passes global_step).
- Sampling: the reference draws rsample() at evaluation too (no posterior mean anywhere); so does this model, every
  draw from the passed generator, in the reference's order: the initial slots, one per layer, the prior chain's
  samples of q_{L-1} .. q_1, one per refinement pass. At evaluation the forward enables grad itself (refinement needs
  the loss's gradient) and returns detached tensors.
- Initialisation as the reference: xavier-normal with gain 0.02 (biases 0) for the encoder convs and MLP, q/k/v,
  the slot MLPs, the decoder (with its position map), the prior and the refinement MLP/heads; N(0, 1) for every
  weight and bias of the two slot GRUs (its GRUCell uses torch.randn); PyTorch defaults elsewhere.

Deliberate differences: any batch size (the reference fixes it at construction: position grids and h_0 are built
for one batch); the position grid is (rows, columns) for any H x W (the reference's is built (w, h) and only adds
correctly to square images; same values there); the dual GRU is two nn.GRUCell (its block-diagonal matmuls give the
same numbers); the refinement gradient is taken without create_graph (the reference detaches it anyway: same values
and training gradients, no second-order graph); `use_geco: false` means the plain loss mean(NLL + kl_beta KL)
throughout (in the reference it only freezes beta and C_ema at their initial values while keeping the GECO form);
GECO initialises its EMA at the first training step >= warm-up (the reference only at step == warm-up).
Default image size 128: the README's ClevrTex run (experiments/effmorl.py defaults to 96 crops, but the GECO target
-108000 is below the perfect-reconstruction NLL at 96x96, -27648 * log(10) = -63661; at 128x128 it is -113177).

scripts/compare_emorl.py runs the reference on the same weights and noise (128x128, 11 slots, z 64, train at steps 0 /
1000 / 150000 and eval): at the reference's initialisation masks, canvas and loss are bit-identical in float32; with
perturbed weights masks <= 1.2e-6, canvas <= 6e-7, loss terms <= 2e-7 relative, gradients <= 1.3e-6 of the largest;
in float64 everything <= 4e-15. CPU (2 threads), batch 8, 3 refinement passes: ~100 s per training step at 96x96,
~200 s at 128x128.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from object_model import ObjectModel, ObjectOutput, build_model
from torch import nn

DEFAULTS = {
    "slots": 11,
    "z_dim": 64,
    "stochastic_layers": 3,
    "refinement_iters": 3,
    "refinement_curriculum": ((-1, 3), (100000, 1), (200000, 1)),
    "image_size": 128,
    "std": 0.1,
    "kl_beta": 1.0,
    "use_geco": True,
    "geco_target": -108000.0,
    "geco_ema_alpha": 0.99,
    "geco_beta_stepsize": 1e-6,
    "geco_warm_start": 1000,
    "geco_beta_min": 0.55,
    "encoder_channels": 64,
    "decoder_channels": 64,
    "hidden": 128,
}


def _grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(h, w, 4) position features: distances to the bottom and top rows, to the left and right columns, in [0, 1]."""
    kw = {"dtype": like.dtype, "device": like.device}
    rows = torch.stack([torch.linspace(1, 0, h, **kw), torch.linspace(0, 1, h, **kw)], 1)[:, None].expand(h, w, 2)
    cols = torch.stack([torch.linspace(0, 1, w, **kw), torch.linspace(1, 0, w, **kw)], 1)[None].expand(h, w, 2)
    return torch.cat([rows, cols], 2)


def _std(softplus: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(F.softplus(softplus.clamp(max=80.0)) + 1e-5)


def _kl(mu: torch.Tensor, std: torch.Tensor, mu_p: torch.Tensor, std_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, std) || N(mu_p, std_p)) summed over the last axis."""
    ratio = (std / std_p).pow(2)
    return (0.5 * (ratio + ((mu - mu_p) / std_p).pow(2) - 1 - ratio.log())).sum(-1)


def _xavier(module: nn.Module, gain: float = 0.02) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class EfficientMORL(ObjectModel):
    """K-slot EfficientMORL on (B, 3, S, S) images in [0, 1], S = `image_size`."""

    masks_have_background = True

    def __init__(self, slots: int, z_dim: int, stochastic_layers: int, refinement_iters: int,
                 refinement_curriculum, image_size: int, std: float, kl_beta: float, use_geco: bool,
                 geco_target: float, geco_ema_alpha: float, geco_beta_stepsize: float, geco_warm_start: int,
                 geco_beta_min: float, encoder_channels: int, decoder_channels: int, hidden: int):  # fmt: skip
        super().__init__()
        if slots < 1 or z_dim < 1 or stochastic_layers < 1 or refinement_iters < 0:
            raise ValueError("slots, z_dim, stochastic_layers must be >= 1 and refinement_iters >= 0")
        self.slots, self.z_dim, self.layers, self.image_size = slots, z_dim, stochastic_layers, image_size
        self.refinement_iters = refinement_iters
        self.curriculum = [(int(s), int(n)) for s, n in refinement_curriculum]
        self.log_var, self.kl_beta, self.use_geco = 2 * math.log(std), kl_beta, use_geco
        self.geco_target, self.geco_alpha, self.geco_step = geco_target, geco_ema_alpha, geco_beta_stepsize
        self.geco_warm_start, self.geco_beta_min = geco_warm_start, geco_beta_min
        c, z = encoder_channels, z_dim

        self.encoder = nn.Sequential(
            nn.Conv2d(3, c, 5, 1, 2), nn.ReLU(), nn.Conv2d(c, c, 5, 1, 2), nn.ReLU(),
            nn.Conv2d(c, c, 5, 1, 2), nn.ReLU(), nn.Conv2d(c, c, 5, 1, 2), nn.ReLU(),
        )  # fmt: skip
        self.encoder_pos = nn.Linear(4, c)
        self.encoder_mlp = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
        self.init_posterior = nn.Parameter(torch.cat([torch.zeros(1, z), torch.ones(1, z)], 1))
        self.norm_slots = nn.LayerNorm(z)
        self.to_q = nn.Linear(z, z, bias=False)
        self.to_k = nn.Linear(c, z, bias=False)
        self.to_v = nn.Linear(c, z, bias=False)
        self.gru_mu, self.gru_sp = nn.GRUCell(z, z), nn.GRUCell(z, z)
        self.norm_mu, self.norm_sp = nn.LayerNorm(z), nn.LayerNorm(z)
        self.mlp_mu = nn.Sequential(nn.Linear(z, 2 * z), nn.ReLU(), nn.Linear(2 * z, z))
        self.mlp_sp = nn.Sequential(nn.Linear(z, 2 * z), nn.ReLU(), nn.Linear(2 * z, z))

        d = decoder_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(z, d, 3), nn.ELU(), nn.Conv2d(d, d, 3), nn.ELU(), nn.Conv2d(d, d, 3), nn.ELU(),
            nn.Conv2d(d, d, 3), nn.ELU(), nn.Conv2d(d, 4, 3),
        )  # fmt: skip
        self.decoder_pos = nn.Linear(4, z)

        self.prior = nn.Sequential(nn.Linear(z, hidden), nn.ELU())
        self.prior_mu, self.prior_sp = nn.Linear(hidden, z), nn.Linear(hidden, z)

        self.refine_mlp = nn.Sequential(nn.Linear(4 * z, hidden), nn.ELU(), nn.Linear(hidden, z))
        self.refine_gru = nn.GRUCell(z, z)
        self.refine_mu, self.refine_sp = nn.Linear(z, z), nn.Linear(z, z)

        for m in (self.encoder, self.encoder_mlp, self.to_q, self.to_k, self.to_v, self.mlp_mu, self.mlp_sp,
                  self.decoder, self.decoder_pos, self.prior, self.prior_mu, self.prior_sp, self.refine_mlp,
                  self.refine_mu, self.refine_sp):  # fmt: skip
            _xavier(m)
        for p in (*self.gru_mu.parameters(), *self.gru_sp.parameters()):
            nn.init.normal_(p)

        self.register_buffer("geco_beta", torch.tensor(float(geco_beta_min)))
        self.register_buffer("geco_c_ema", torch.tensor(0.0))
        self.register_buffer("geco_started", torch.tensor(False))

    # -- pieces ---------------------------------------------------------------------------------------------------
    def _sample(self, mu, sp, generator):
        eps = torch.randn(mu.shape, generator=generator, device=generator.device, dtype=mu.dtype).to(mu.device)
        return mu + eps * _std(sp)

    def _decode(self, z: torch.Tensor, b: int, h: int, w: int):
        """(B*K, z) -> means (B, K, 3, H, W), mask log-probabilities (B, K, 1, H, W)."""
        pos = self.decoder_pos(_grid(h + 10, w + 10, z)).permute(2, 0, 1)
        out = self.decoder(z[:, :, None, None] + pos)
        means = torch.sigmoid(out[:, :3]).view(b, self.slots, 3, h, w)
        return means, torch.log_softmax(out[:, 3:].view(b, self.slots, 1, h, w), 1)

    def _nll(self, target, means, log_m):
        """Per image -sum log N(target; canvas, exp(log_var)) (no 2 pi term, as the reference); and the canvas."""
        canvas = (means * log_m.exp()).sum(1)
        log_var = target.new_tensor(self.log_var)
        return -(-0.5 * log_var - 0.5 * ((target - canvas).pow(2) / log_var.exp())).sum((1, 2, 3)), canvas

    def _pass_loss(self, nll, kl, geco_on):
        if not geco_on:
            return torch.mean(nll + self.kl_beta * kl)
        c_t = self.geco_target - nll.mean()
        constraint = F.softplus(self.geco_beta) * (c_t + (self.geco_c_ema - c_t).detach())
        return self.kl_beta * kl.mean() - constraint

    def _iters(self, step):
        if not self.training or step is None:
            return self.refinement_iters
        iters = self.refinement_iters
        for start, n in self.curriculum:
            if step >= start:
                iters = n
        return iters

    @torch.no_grad()
    def _update_geco(self, nll_mean: torch.Tensor, step: int) -> None:
        c = self.geco_target - nll_mean.detach().to(self.geco_c_ema.dtype)
        if step >= self.geco_warm_start and not bool(self.geco_started):
            self.geco_c_ema.copy_(c)
            self.geco_started.fill_(True)
        elif step > self.geco_warm_start:
            self.geco_c_ema.copy_(self.geco_c_ema * self.geco_alpha + c * (1.0 - self.geco_alpha))
            self.geco_beta.copy_(torch.clamp(self.geco_beta - self.geco_step * self.geco_c_ema, min=self.geco_beta_min))

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, generator: torch.Generator, step: int | None = None) -> ObjectOutput:
        b, c, h, w = images.shape
        if c != 3 or h != self.image_size or w != self.image_size:
            raise ValueError(f"expected (B, 3, {self.image_size}, {self.image_size}) images, got {tuple(images.shape)}")
        with torch.enable_grad():
            out = self._infer(images, generator, step)
        if not self.training:
            out = ObjectOutput(out.loss.detach(), out.masks.detach(), out.canvas.detach(), out.terms)
        return out

    def _infer(self, images, generator, step):
        b, _, h, w = images.shape
        k, z, train = self.slots, self.z_dim, self.training
        iters = self._iters(step)
        if self.use_geco and self.kl_beta != 0:
            geco_on = bool(self.geco_started) if step is None else step >= self.geco_warm_start
        else:
            geco_on = False
        x = 2 * images - 1
        target = (x + 1) / 2  # the reference's round trip (same float rounding)

        feats = self.encoder(x).permute(0, 2, 3, 1) + self.encoder_pos(_grid(h, w, x))
        feats = self.encoder_mlp(feats.reshape(b, h * w, -1))
        keys, values = self.to_k(feats), self.to_v(feats)

        mu, sp = self.init_posterior.expand(b * k, 2 * z).chunk(2, 1)
        slots = self._sample(mu, sp, generator)
        posts = []
        for _ in range(self.layers):
            q = self.to_q(self.norm_slots(slots.view(b, k, z))) * z**-0.5
            attn = torch.einsum("bkd,bnd->bkn", q, keys).softmax(1) + 1e-8
            attn = attn / attn.sum(-1, keepdim=True)
            updates = torch.einsum("bnd,bkn->bkd", values, attn).reshape(b * k, z)
            mu, sp = self.gru_mu(updates, mu), self.gru_sp(updates, sp)
            mu = mu + self.mlp_mu(self.norm_mu(mu))
            sp = sp + self.mlp_sp(self.norm_sp(sp))
            lam = torch.cat([mu, sp], 1)
            if not train:  # only the gradient w.r.t. the last lambda is needed: keep no graph behind it
                lam = lam.detach().requires_grad_()
            mu, sp = lam.chunk(2, 1)
            posts.append((mu, sp))
            slots = self._sample(mu, sp, generator)

        means, log_m = self._decode(slots, b, h, w)
        nll, canvas = self._nll(target, means, log_m)
        kl = images.new_zeros(b)
        prior = (torch.zeros_like(mu), torch.ones_like(mu))
        for layer in reversed(range(self.layers)):  # the reversed hierarchical prior: p(z_l | z_{l+1} ~ q_{l+1})
            if layer < self.layers - 1:
                hid = self.prior(self._sample(*posts[layer + 1], generator))
                prior = (self.prior_mu(hid), _std(self.prior_sp(hid)))
            kl = kl + _kl(posts[layer][0], _std(posts[layer][1]), *prior).view(b, k).sum(1)
        loss = self._pass_loss(nll, kl, geco_on)
        total = (iters + 3) / (iters + 1) * loss
        hidden = torch.zeros_like(mu)
        deltas = []
        for i in range(1, iters + 1):
            (grad,) = torch.autograd.grad(loss, lam, retain_graph=train)
            d_mu, d_sp = (F.layer_norm(g, (z,)) for g in grad.detach().chunk(2, 1))
            hidden = self.refine_gru(self.refine_mlp(torch.cat([lam, d_mu, d_sp], 1)), hidden)
            delta = torch.cat([self.refine_mu(hidden), self.refine_sp(hidden)], 1)
            deltas.append(delta.detach().norm(dim=1).mean())
            lam = lam + delta
            if not train:
                lam, hidden = lam.detach().requires_grad_(), hidden.detach()
            mu, sp = lam.chunk(2, 1)
            means, log_m = self._decode(self._sample(mu, sp, generator), b, h, w)
            nll, canvas = self._nll(target, means, log_m)
            kl = _kl(mu, _std(sp), *prior).view(b, k).sum(1)
            loss = self._pass_loss(nll, kl, geco_on)
            total = total + (iters + 3 - i) / (iters + 1) * loss

        if train and self.use_geco and step is not None:
            self._update_geco(nll.mean(), step)
        names = ["loss", "nll", "kl", "geco_beta", "geco_c_ema"] + [f"delta_{i + 1}" for i in range(len(deltas))]
        values = [total, nll.mean(), kl.mean(), self.geco_beta, self.geco_c_ema, *deltas]  # GECO after its update
        terms = dict(zip(names, torch.stack([v.detach().to(total.dtype) for v in values]).tolist()))
        terms["refinement_iters"] = float(iters)
        return ObjectOutput(total, log_m.exp()[:, :, 0], canvas, terms)


def build(params: dict) -> EfficientMORL:
    """EfficientMORL from a recipe's architecture/loss params; missing keys take the ClevrTex defaults (DEFAULTS)."""
    return build_model(EfficientMORL, DEFAULTS, params)
