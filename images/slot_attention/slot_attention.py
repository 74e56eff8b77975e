"""Slot Attention (Locatello et al., NeurIPS 2020, "Object-Centric Learning with Slot Attention", arXiv 2006.15055).

Written from the paper and the ClevrTex benchmark's configuration of it (karazijal/clevrtex fe982ab,
ool/picture/models/thirdparty/slot_attention/model.py, MIT, adjusted from lucidrains/slot-attention, and
experiments/slota.py: 11 slots, 3 iterations, 128x128 crops).

- Encoder: 4 conv5x5 (`width` channels, padding 2, ReLU) at full resolution; a soft position embedding (the grid
  [row, column, 1 - row, 1 - column], each in linspace(0, 1), through a 1x1 conv, added); LayerNorm over the whole
  (width, H, W) map, as the reference (its comment: "The original seems to normalise accross channels!"; at 128 its
  affine weights are 2.1M of the 3.0M parameters, and they fix the input size to `image_size`); a per-pixel MLP
  (1x1 conv, ReLU, 1x1 conv). The H*W feature vectors are the inputs of slot attention.
- Slot attention: slots = mu + exp(log sigma) * N(0, I) noise (mu ~ N(0, 1), log sigma xavier-uniform at
  initialisation); the inputs LayerNorm'd, keys and values; `iters` times: q from the LayerNorm'd slots, attention
  = softmax over the slots of q k^T / sqrt(width), + 1e-8, normalised over the inputs; updates = attention-weighted
  mean of the values; slots = GRUCell(updates, previous slots), then + MLP(LayerNorm(slots)) (hidden `slot_mlp`).
- Decoder: each slot broadcast on a `decoder_size` x `decoder_size` grid (8) + its own soft position embedding,
  4 ConvTranspose2d(5, stride 2, padding 2, output padding 1) + ReLU (8 -> 128), ConvTranspose2d(5, stride 1) + ReLU,
  ConvTranspose2d(3, stride 1) to RGB + one mask logit; bicubic resize (align_corners False) of those 4 channels when
  the decoder's size (decoder_size * 16) is not the input's. No sigmoid on the RGB (as the reference).
- masks = softmax over slots of the mask logits; canvas = sum_k m_k rgb_k; loss = per-image summed squared error of
  the canvas, averaged over the batch (the reference's; its mean training objective, logged as 'mse' at validation).
- The slot noise is one (B, K, width) standard-normal draw from the passed generator (in the images' dtype), the
  reference's only random draw (torch.randn on the global RNG there). `step` is unused: no schedules in the model.
- Modules are created in the reference's order with the same PyTorch initialisers, so `torch.manual_seed(s); build()`
  gives the reference's initial weights under the same seed (scripts/compare_slot_attention.py checks it).

Deliberate differences: the loss is returned in evaluation too (the reference computes it only in training mode);
the slot MLP's hidden width is `slot_mlp` as given (the reference takes max(width, hidden): the same at the defaults);
width, slots, iterations, slot MLP, broadcast size and image size are parameters (the reference fixes width 64,
MLP 128 and the 8x8 broadcast); the position grids are non-persistent buffers (rebuilt from the sizes, not saved).

scripts/compare_slot_attention.py runs the reference on the same weights, images and noise: at 128x128 / 11 slots and
97x97 / 5 slots, reference init and perturbed weights, float32 and float64, masks, canvas, loss and all gradients are
bit-identical. CPU (2 threads, shared machine), forward + backward + Adam at batch 8: ~38 s per step at the defaults
(128x128); ~4.4 s at image_size 64, decoder_size 4, width 32, slot_mlp 64 (487,172 parameters), ~9 s at 64 with
width 64. Training recipe of the reference (experiments/slota.py + framework/base_experiment.py): Adam, lr 4e-4,
LambdaLR per step: step / 10000 during the first 10000 steps, times 0.5^(step / 100000) throughout; batch 64;
500000 steps; no gradient clipping; seed 0 by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from object_model import ObjectModel, ObjectOutput, build_model
from torch import nn

DEFAULTS = {
    "slots": 11,
    "iters": 3,
    "width": 64,
    "slot_mlp": 128,
    "decoder_size": 8,
    "image_size": 128,
}

EPS = 1e-8  # added to the attention before its normalisation over the inputs (the reference's)


class SoftPositionEmbed(nn.Module):
    """x + conv1x1([row, column, 1 - row, 1 - column]) on an h x w grid with coordinates in linspace(0, 1)."""

    def __init__(self, channels: int, h: int, w: int):
        super().__init__()
        rows, cols = torch.meshgrid(torch.linspace(0.0, 1.0, h), torch.linspace(0.0, 1.0, w), indexing="ij")
        grid = torch.stack([rows, cols])
        self.register_buffer("grid", torch.cat([grid, 1 - grid])[None], persistent=False)
        self.aff = nn.Conv2d(4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.aff(self.grid)


class SlotAttention(nn.Module):
    """`iters` rounds of competitive attention (softmax over slots) of K slots over N inputs of width `dim`."""

    def __init__(self, dim: int, iters: int, slots: int, mlp_hidden: int):
        super().__init__()
        self.iters, self.slots, self.scale = iters, slots, dim**-0.5
        self.slots_mu = nn.Parameter(torch.randn(1, 1, dim))
        self.slots_logsigma = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.xavier_uniform_(self.slots_logsigma)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, dim))
        self.norm_input = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_pre_ff = nn.LayerNorm(dim)

    def forward(self, inputs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """inputs (B, N, D), noise (B, K, D) standard normal -> slots (B, K, D)."""
        b, _, d = inputs.shape
        slots = self.slots_mu + self.slots_logsigma.exp() * noise
        inputs = self.norm_input(inputs)
        k, v = self.to_k(inputs), self.to_v(inputs)
        for _ in range(self.iters):
            prev = slots
            q = self.to_q(self.norm_slots(slots))
            attn = torch.einsum("bsc,bnc->bsn", q, k).mul(self.scale).softmax(dim=1) + EPS
            attn = attn / attn.sum(dim=-1, keepdim=True)  # weighted mean over the inputs
            updates = torch.einsum("bnc,bsn->bsc", v, attn)
            slots = self.gru(updates.reshape(-1, d), prev.reshape(-1, d)).view(b, -1, d)
            slots = slots + self.mlp(self.norm_pre_ff(slots))
        return slots


class SlotAttentionAE(ObjectModel):
    """Slot Attention auto-encoder on (B, 3, S, S) images in [0, 1], S = `image_size` (the encoder LayerNorm fixes it)."""

    masks_have_background = True

    def __init__(self, slots: int, iters: int, width: int, slot_mlp: int, decoder_size: int, image_size: int):
        super().__init__()
        if slots < 1 or iters < 1:
            raise ValueError(f"slots and iters must be >= 1, got {slots}, {iters}")
        self.slots, self.iters, self.width = slots, iters, width
        self.decoder_size, self.image_size = decoder_size, image_size

        def conv(cin: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, width, 5, padding=2), nn.ReLU()]

        def up(k: int, s: int, cout: int = width) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(width, cout, k, stride=s, padding=k // 2, output_padding=s - 1)

        # created in the reference's order (same initial weights under the same seed)
        self.encoder = nn.Sequential(*conv(3), *conv(width), *conv(width), *conv(width))
        self.decoder = nn.Sequential(
            up(5, 2), nn.ReLU(), up(5, 2), nn.ReLU(), up(5, 2), nn.ReLU(), up(5, 2), nn.ReLU(),
            up(5, 1), nn.ReLU(), up(3, 1, 4),
        )  # fmt: skip
        self.encoder_pos = SoftPositionEmbed(width, image_size, image_size)
        self.decoder_pos = SoftPositionEmbed(width, decoder_size, decoder_size)
        self.layer_norm = nn.LayerNorm([width, image_size, image_size])
        self.mlp = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, width, 1))
        self.slot_attention = SlotAttention(width, iters, slots, slot_mlp)

    def forward(self, images: torch.Tensor, generator: torch.Generator, step: int | None = None) -> ObjectOutput:
        b, c, h, w = images.shape
        if c != 3 or h != self.image_size or w != self.image_size:
            raise ValueError(f"expected (B, 3, {self.image_size}, {self.image_size}) images, got {tuple(images.shape)}")
        k, d, s = self.slots, self.width, self.decoder_size
        x = self.mlp(self.layer_norm(self.encoder_pos(self.encoder(images))))
        inputs = x.flatten(2).transpose(1, 2)  # (B, H*W, D)
        noise = torch.randn((b, k, d), generator=generator, device=generator.device, dtype=images.dtype)
        slots = self.slot_attention(inputs, noise.to(images.device))

        x = self.decoder(self.decoder_pos(slots.reshape(b * k, d, 1, 1).expand(-1, -1, s, s)))
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
        x = x.view(b, k, 4, h, w)
        rgb, masks = x[:, :, :3], x[:, :, 3].softmax(dim=1)
        canvas = (rgb * masks[:, :, None]).sum(1)
        loss = (canvas - images).pow(2).sum((1, 2, 3)).mean()
        return ObjectOutput(loss, masks, canvas, {"loss": loss.item()})


def build(params: dict) -> SlotAttentionAE:
    """Slot Attention from a recipe's architecture params; missing keys take the ClevrTex defaults (DEFAULTS)."""
    return build_model(SlotAttentionAE, DEFAULTS, params)
