"""IODINE (Greff, Lopez Kaufman, Kabra, Watters, Burgess, Zoran, Matthey, Botvinick, Lerchner, ICML 2019,
"Multi-Object Representation Learning with Iterative Variational Inference", PMLR 97).

Written from the paper and the ClevrTex benchmark's re-implementation (karazijal/clevrtex fe982ab,
ool/picture/models/iodine.py, no licence stated: read for its behaviour, nothing copied), with its ClevrTex
configuration (experiments/iodine.py): 11 slots, z 128, 5 inference iterations, sigma 0.1, LSTM 256, 64 channels,
kl_beta 1 (its `geco_warm_start` is accepted there but not passed to the model: no GECO).

- Posterior: lambda = (mu, s) per slot, q(z) = N(mu, sqrt(softplus(s))); lambda starts at a learnt lambda_0
  (initialised mu 0, s 1) shared by all slots; prior N(0, I).
- Decoder (spatial broadcast): z tiled on an (H+8)x(W+8) grid with (column, row) coordinates in [-1, 1], four
  unpadded 3x3 convs (ELU) and a 1x1 conv -> sigmoid RGB means and a mask logit; masks = softmax over slots.
- Loss of one iteration: NLL = -sum_{c,h,w} logsumexp_k [log m_k + log N(x_c; mu_kc, sigma)] (no log 2 pi term;
  as the reference the mixture is taken per channel, the paper's is per pixel), KL(q || N(0, I)) summed over slots
  and z; L_t = mean over the batch of NLL + kl_beta KL. Total loss sum_t (t / T) L_t, t = 1..T.
- Refinement (after every iteration but the last): 17 image-sized inputs per slot: the image, the means, the mask
  log-probabilities, the mask logits, the mask posterior (log-softmax over slots of sum_c log N), LayerNorm'd
  gradients of L_t w.r.t. the means and the mask log-probabilities, LayerNorm'd pixel log-likelihood and the
  leave-one-out log-likelihood (both without gradient), and (row, column) coordinates; 4 stride-2 3x3 convs (ELU),
  mean pool, linear (ELU); concatenated with lambda and the LayerNorm'd gradients of L_t w.r.t. mu and s, one LSTM
  step; a linear head gives delta lambda; lambda += delta. The gradients are constants (no second-order graph);
  every other input carries its gradient, as in the reference.
- masks = the final iteration's softmax masks (the reference's `layers.mask`, what the ClevrTex evaluator reads);
  canvas = sum_k m_k mu_k of the final iteration.
- Sampling: the reference draws rsample() at evaluation too (no posterior mean anywhere); so does this model, every
  draw from the passed generator: one (B*K, z) draw per iteration, row b*K + k, the reference's order. At evaluation
  the forward enables grad itself (refinement needs the loss's gradient) and returns detached tensors. `step` is
  unused (no schedules).
- Initialisation as the reference: xavier-normal with gain 0.02 (biases 0) for every conv and linear layer of the
  decoder and the refinement network; PyTorch defaults for the LSTM and the LayerNorms.
- `reference_image_tiling` (default true, as the reference): the reference tiles the image for the refinement
  inputs as x.repeat(K, 1, 1, 1).view(B, K, ...), so slot k of image b sees image (b*K + k) mod B: with B > 1 the
  image channels come from other images of the batch and an image's outputs depend on its batch neighbours (the
  published model was trained so, batch 8 per GPU). false gives each slot its own image (the paper's). At batch 1
  both are the same.

Deliberate differences: any batch size (the reference builds h_0 for one batch); the first decoder conv is applied
as (sum over its 3x3 kernel of the z weights) @ z plus a conv of the coordinate channels alone (the same function:
z is constant over the unpadded window; it saves the (B*K, z+2, H+8, W+8) broadcast tensor and most of that conv's
work, and differs from the reference only in float rounding); the LSTM is an nn.LSTMCell (one step of the
reference's nn.LSTM); the convs' ELUs work in place (the reference's `nn.ELU(True)` sets alpha = 1, not inplace:
the same function; half the saved activations); the forward never changes torch's global grad mode (the reference
calls torch.set_grad_enabled(True) in its forward).

scripts/compare_iodine.py runs the reference on the same weights and noise (128x128, 11 slots, z 128, 5 iterations,
batch 2; train, eval under no_grad, and this model without the tiling quirk against the reference image by image):
at the reference's initialisation masks, canvas and loss terms are bit-identical in float32, gradients <= 3e-11 of
the largest; with perturbed weights masks and canvas <= 3.6e-7, loss terms <= 1.1e-7 relative, gradients <= 7.3e-5
of the largest; in float64 everything <= 1.2e-14. 1,637,060 parameters, as the reference. CPU (2 threads, a loaded
machine), batch 8, 128x128: ~126 s per training step (forward 72 s, backward + clip + Adam 54 s), 10.6 GiB peak.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from object_model import ObjectModel, ObjectOutput, build_model
from torch import nn

DEFAULTS = {
    "slots": 11,
    "z_dim": 128,
    "inference_iters": 5,
    "std": 0.1,
    "kl_beta": 1.0,
    "lstm_dim": 256,
    "channels": 64,
    "image_size": 128,
    "reference_image_tiling": True,
}


def _xavier(module: nn.Module, gain: float = 0.02) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _lin(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.linspace(-1, 1, n, dtype=like.dtype, device=like.device)


class IODINE(ObjectModel):
    """K-slot IODINE on (B, 3, S, S) images in [0, 1], S = `image_size` (its LayerNorms over image-sized inputs fix
    it)."""

    masks_have_background = True

    def __init__(self, slots: int, z_dim: int, inference_iters: int, std: float, kl_beta: float, lstm_dim: int,
                 channels: int, image_size: int, reference_image_tiling: bool):  # fmt: skip
        super().__init__()
        if slots < 2 or z_dim < 1 or inference_iters < 1:
            raise ValueError("slots must be >= 2 (the leave-one-out input), z_dim and inference_iters >= 1")
        self.slots, self.z_dim, self.iters, self.image_size = slots, z_dim, inference_iters, image_size
        self.log_var, self.kl_beta, self.reference_tiling = 2 * math.log(std), kl_beta, bool(reference_image_tiling)
        c, z, s = channels, z_dim, image_size

        self.lambda_0 = nn.Parameter(torch.cat([torch.zeros(1, z), torch.ones(1, z)], 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(z + 2, c, 3), nn.ELU(inplace=True), nn.Conv2d(c, c, 3), nn.ELU(inplace=True),
            nn.Conv2d(c, c, 3), nn.ELU(inplace=True), nn.Conv2d(c, c, 3), nn.ELU(inplace=True), nn.Conv2d(c, 4, 1),
        )  # fmt: skip
        self.refine_conv = nn.Sequential(
            nn.Conv2d(17, c, 3, 2, 1), nn.ELU(inplace=True), nn.Conv2d(c, c, 3, 2, 1), nn.ELU(inplace=True),
            nn.Conv2d(c, c, 3, 2, 1), nn.ELU(inplace=True), nn.Conv2d(c, c, 3, 2, 1), nn.ELU(inplace=True),
        )  # fmt: skip
        self.refine_fc = nn.Linear(c, lstm_dim)
        self.refine_lstm = nn.LSTMCell(lstm_dim + 4 * z, lstm_dim)
        self.refine_head = nn.Linear(lstm_dim, 2 * z)
        # LayerNorms (with affine parameters, as the paper) of the refinement inputs
        self.norm_log_p = nn.LayerNorm((1, s, s))
        self.norm_loo = nn.LayerNorm((1, s, s))
        self.norm_d_means = nn.LayerNorm((3, s, s))
        self.norm_d_masks = nn.LayerNorm((1, s, s))
        self.norm_d_mu = nn.LayerNorm(z)
        self.norm_d_sp = nn.LayerNorm(z)
        for m in (self.decoder, self.refine_conv, self.refine_fc, self.refine_head):
            _xavier(m)

    # -- pieces ---------------------------------------------------------------------------------------------------
    def _decode(self, z: torch.Tensor, b: int, h: int, w: int):
        """(B*K, z) -> means (B, K, 3, H, W), mask logits (B, K, 1, H, W)."""
        first = self.decoder[0]
        grid = torch.stack(torch.meshgrid(_lin(h + 8, z), _lin(w + 8, z), indexing="ij")[::-1])  # (cols, rows)
        pos = F.conv2d(grid[None], first.weight[:, self.z_dim :], first.bias)  # (1, c, H+6, W+6)
        out = pos + (z @ first.weight[:, : self.z_dim].sum((2, 3)).t())[:, :, None, None]
        out = self.decoder[1:](out)
        means = torch.sigmoid(out[:, :3]).view(b, self.slots, 3, h, w)
        return means, out[:, 3:].reshape(b, self.slots, 1, h, w)

    def _sample(self, mu, std, generator):
        eps = torch.randn(mu.shape, generator=generator, device=generator.device, dtype=mu.dtype).to(mu.device)
        return mu + eps * std

    def _refine_inputs(self, images, means, log_m, logits, normal_ll, log_p, lam, loss):
        """The 17 image-sized inputs (B*K, 17, H, W) and the vector inputs (B*K, 4z) of the refinement network."""
        b, k, _, h, w = means.shape
        d_means, d_log_m, d_lam = torch.autograd.grad(loss, [means, log_m, lam], retain_graph=self.training)
        mask_ll = normal_ll.sum(2, keepdim=True)
        mask_post = mask_ll - torch.logsumexp(mask_ll, 1, keepdim=True)
        with torch.no_grad():
            # leave-one-out: the mixture log-likelihood of the other K - 1 slots, their masks renormalised
            others = torch.tensor([[j for j in range(k) if j != i] for i in range(k)], device=means.device)
            ll_o, logit_o = normal_ll[:, others], logits[:, others]  # (B, K, K-1, C|1, H, W)
            loo = torch.logsumexp(ll_o + torch.log_softmax(logit_o, 2), 2).sum(2, keepdim=True)
            log_p = log_p[:, None].expand(b, k, 1, h, w)
        if self.reference_tiling:
            tiled = images.repeat(k, 1, 1, 1).view(b, k, 3, h, w)
        else:
            tiled = images[:, None].expand(b, k, 3, h, w)
        rows, cols = torch.meshgrid(_lin(h, images), _lin(w, images), indexing="ij")
        d_mu, d_sp = d_lam.chunk(2, 1)
        img = torch.cat([
            tiled, means, log_m, logits, mask_post, self.norm_d_means(d_means), self.norm_d_masks(d_log_m),
            self.norm_log_p(log_p), self.norm_loo(loo), rows.expand(b, k, 1, h, w), cols.expand(b, k, 1, h, w),
        ], 2)  # fmt: skip
        vec = torch.cat([lam, self.norm_d_mu(d_mu), self.norm_d_sp(d_sp)], 1)
        return img.view(b * k, 17, h, w), vec

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, generator: torch.Generator, step: int | None = None) -> ObjectOutput:
        b, c, h, w = images.shape
        if c != 3 or h != self.image_size or w != self.image_size:
            raise ValueError(f"expected (B, 3, {self.image_size}, {self.image_size}) images, got {tuple(images.shape)}")
        with torch.enable_grad():
            out = self._infer(images, generator)
        if not self.training:
            out = ObjectOutput(out.loss.detach(), out.masks.detach(), out.canvas.detach(), out.terms)
        return out

    def _infer(self, images, generator):
        b, _, h, w = images.shape
        k, train, iters = self.slots, self.training, self.iters
        log_var = images.new_tensor(self.log_var)
        lam = self.lambda_0.repeat(b * k, 1)
        if not train:
            lam = lam.detach().requires_grad_()
        state = None
        total, nlls = 0.0, []
        for t in range(iters):
            mu, sp = lam.chunk(2, 1)
            std = torch.sqrt(F.softplus(sp))
            means, logits = self._decode(self._sample(mu, std, generator), b, h, w)
            log_m = torch.log_softmax(logits, 1)
            normal_ll = -0.5 * log_var - 0.5 * ((images[:, None] - means).pow(2) / log_var.exp())  # (B, K, 3, H, W)
            log_p = torch.logsumexp(log_m + normal_ll, 1).sum(1, keepdim=True)  # per channel mixture, (B, 1, H, W)
            nll = -log_p.sum((1, 2, 3))
            var = std.pow(2)
            kl = (0.5 * (var + mu.pow(2) - 1 - var.log())).sum(1).view(b, k).sum(1)
            loss = torch.mean(nll + self.kl_beta * kl)
            total = total + (t + 1.0) / iters * (loss if train else loss.detach())
            nlls.append(nll.mean().detach())
            if t == iters - 1:
                break
            img, vec = self._refine_inputs(images, means, log_m, logits, normal_ll, log_p, lam, loss)
            feats = F.elu(self.refine_fc(self.refine_conv(img).mean((2, 3))))
            state = self.refine_lstm(torch.cat([feats, vec], 1), state)
            lam = lam + self.refine_head(state[0])
            if not train:  # only the gradient w.r.t. the current lambda is needed: keep no graph behind it
                lam, state = lam.detach().requires_grad_(), (state[0].detach(), state[1].detach())

        masks = log_m.exp()
        canvas = (means * masks).sum(1)
        names = ["loss", "nll", "kl"] + [f"nll_{t + 1}" for t in range(iters)]
        values = torch.stack([v.detach().to(images.dtype) for v in (total, nll.mean(), kl.mean(), *nlls)]).tolist()
        return ObjectOutput(total, masks[:, :, 0], canvas, dict(zip(names, values)))


def build(params: dict) -> IODINE:
    """IODINE from a recipe's architecture/loss params; missing keys take the ClevrTex defaults (DEFAULTS)."""
    return build_model(IODINE, DEFAULTS, params)
