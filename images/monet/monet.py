"""MONet (Burgess et al. 2019, "MONet: Unsupervised Scene Decomposition and Representation", arXiv 1901.11390).

Written from the paper, with the ClevrTex benchmark's choices where they are documented in its re-implementation
(karazijal/clevrtex fe982ab, ool/picture/models/monet.py, and experiments/monet.py for the ClevrTex defaults: 11 slots,
a 6-block U-Net, z 16, sigma_bg 0.09, sigma_fg 0.15; beta = gamma = 0.5 are fixed in the model there).

- Attention: a recurrent U-Net gives alpha_k from (image, log scope); log m_k = log s_k + log alpha_k and
  log s_{k+1} = log s_k + log(1 - alpha_k); the last slot takes the remaining scope, so the K masks sum to 1.
  Slot 0 (the first attention step) is the background: its likelihood uses sigma_bg, every other slot sigma_fg.
- Component VAE: the encoder sees the image and the slot's *log* mask (as the reference); a spatial-broadcast decoder
  (4 unpadded 3x3 convs on an (H+8)x(W+8) grid with [-1, 1] coordinates) gives sigmoid means and mask logits.
- Loss, per image then averaged over the batch (the reference's): - sum_{c,h,w} logsumexp_k [log m_k +
  log N(x; mu_k, sigma_k)] + beta * sum_k KL(q(z_k) || N(0, I)) + gamma * KL(m || softmax_k(decoded mask logits)).
  As in the reference, the mixture is taken per channel (the paper's is per pixel, a product over channels).
- masks = the attention masks m_k (the reference's `layers.mask`, which the ClevrTex evaluator reads): they are
  deterministic given the image and sum to 1 exactly; the decoded masks only enter the loss. canvas = sum_k m_k mu_k.
- Sampling: the reference sets `self.training = True` in every forward, so it draws z_k ~ q(z_k | x, m_k) at
  evaluation too; so does this model (with the passed generator, one (B, z) draw per slot in slot order, the
  reference's order). Only canvas and loss depend on the draw. `step` is unused: MONet has no schedules.

Deliberate differences: the K component VAE passes run as one batch after the attention loop (same arithmetic, in
another order); the U-Net's channel widths follow min(2^i, 8) * base everywhere (the reference's construction
breaks for fewer than 5 or more than 6 blocks; at 5 and 6 it is the same network).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from object_model import ObjectModel, ObjectOutput, build_model
from torch import nn

DEFAULTS = {
    "slots": 11,
    "z_dim": 16,
    "unet_blocks": 6,
    "base_channels": 64,
    "unet_mlp": 128,
    "encoder_channels": (32, 32, 64, 64),
    "encoder_hidden": 256,
    "decoder_channels": 32,
    "beta": 0.5,
    "gamma": 0.5,
    "sigma_bg": 0.09,
    "sigma_fg": 0.15,
    "image_size": 128,
}


def _block(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (no bias), instance norm with affine parameters, ReLU: the paper's U-Net block."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout, affine=True), nn.ReLU()
    )


class AttentionUNet(nn.Module):
    """alpha_k = sigmoid(UNet([x, log s_k])). Down path: `blocks` blocks, nearest x0.5 after all but the last; an MLP
    on the flattened bottleneck; up path: each block takes [upsampled, skip] and upsamples x2, except the last."""

    def __init__(self, blocks: int, image_size: int, base: int, mlp_hidden: int, in_channels: int = 4):
        super().__init__()
        if blocks < 2:
            raise ValueError(f"unet_blocks must be >= 2, got {blocks}")
        widths = [base * min(2**i, 8) for i in range(blocks)]
        cins = [in_channels] + widths[:-1]
        self.down = nn.ModuleList(_block(ci, co) for ci, co in zip(cins, widths))
        # up[j] mirrors down[blocks - 1 - j]; its output width is the input width of that down block (base for the
        # first one, whose input is the image)
        outs = [base] + widths[:-1]
        self.up = nn.ModuleList(_block(2 * widths[i], outs[i]) for i in reversed(range(blocks)))
        side = image_size
        for _ in range(blocks - 1):
            side = side // 2
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for {blocks} U-Net blocks")
        flat = widths[-1] * side * side
        self.mlp = nn.Sequential(
            nn.Linear(flat, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, mlp_hidden), nn.ReLU(),
            nn.Linear(mlp_hidden, flat), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Conv2d(base, 1, 1)

    def forward(self, x: torch.Tensor, log_scope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([x, log_scope], 1)
        skips = []
        for i, blk in enumerate(self.down):
            skip = blk(h)
            skips.append(skip)
            h = F.interpolate(skip, scale_factor=0.5, mode="nearest") if i < len(self.down) - 1 else skip
        h = self.mlp(h.flatten(1)).view_as(skips[-1])
        for j, (blk, skip) in enumerate(zip(self.up, reversed(skips))):
            dh, dw = skip.shape[-2] - h.shape[-2], skip.shape[-1] - h.shape[-1]
            if dh or dw:  # odd sizes: zero-pad the upsampled map at the bottom/right to the skip's size
                h = F.pad(h, (0, dw, 0, dh))
            h = blk(torch.cat([h, skip], 1))
            if j < len(self.up) - 1:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        logits = self.head(h)
        return F.logsigmoid(logits), F.logsigmoid(-logits)


class ComponentEncoder(nn.Module):
    """[x, log m_k] -> 4 stride-2 3x3 convs -> MLP -> (mu, sigma = exp(log sigma))."""

    def __init__(self, image_size: int, z_dim: int, channels: tuple[int, ...], hidden: int, in_channels: int = 4):
        super().__init__()
        layers, cin, side = [], in_channels, image_size
        for c in channels:
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.ReLU()]
            cin, side = c, (side + 1) // 2
        self.conv = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(cin * side * side, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.z_dim = z_dim

    def forward(self, x: torch.Tensor, log_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp(self.conv(torch.cat([x, log_mask], 1)).flatten(1))
        return out[:, : self.z_dim], out[:, self.z_dim :].exp()


class BroadcastDecoder(nn.Module):
    """Spatial broadcast decoder: z tiled on an (H+8)x(W+8) grid with (row, column) coordinates in [-1, 1], four
    unpadded 3x3 convs, a 1x1 conv to RGB (sigmoid) + one mask logit."""

    def __init__(self, image_size: int, z_dim: int, channels: int):
        super().__init__()
        layers, cin = [], z_dim + 2
        for _ in range(4):
            layers += [nn.Conv2d(cin, channels, 3), nn.ReLU()]
            cin = channels
        self.net = nn.Sequential(*layers, nn.Conv2d(cin, 4, 1))
        self.image_size = image_size

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, s = z.shape[0], self.image_size + 8
        lin = torch.linspace(-1, 1, s, device=z.device, dtype=z.dtype)
        rows, cols = torch.meshgrid(lin, lin, indexing="ij")
        grid = torch.stack([rows, cols]).expand(n, 2, s, s)
        out = self.net(torch.cat([z[:, :, None, None].expand(-1, -1, s, s), grid], 1))
        return torch.sigmoid(out[:, :3]), out[:, 3:]


class MONet(ObjectModel):
    """K-slot MONet on (B, 3, S, S) images in [0, 1], S = `image_size` (the U-Net MLP and encoder fix it)."""

    masks_have_background = True

    def __init__(self, slots: int, z_dim: int, unet_blocks: int, base_channels: int, unet_mlp: int,
                 encoder_channels: tuple[int, ...], encoder_hidden: int, decoder_channels: int, beta: float,
                 gamma: float, sigma_bg: float, sigma_fg: float, image_size: int):  # fmt: skip
        super().__init__()
        if slots < 2:
            raise ValueError(f"slots must be >= 2, got {slots}")
        self.slots, self.z_dim, self.image_size = slots, z_dim, image_size
        self.beta, self.gamma, self.sigma_bg, self.sigma_fg = beta, gamma, sigma_bg, sigma_fg
        self.attention = AttentionUNet(unet_blocks, image_size, base_channels, unet_mlp)
        self.encoder = ComponentEncoder(image_size, z_dim, tuple(encoder_channels), encoder_hidden)
        self.decoder = BroadcastDecoder(image_size, z_dim, decoder_channels)

    def forward(self, images: torch.Tensor, generator: torch.Generator, step: int | None = None) -> ObjectOutput:
        b, c, h, w = images.shape
        if c != 3 or h != self.image_size or w != self.image_size:
            raise ValueError(f"expected (B, 3, {self.image_size}, {self.image_size}) images, got {tuple(images.shape)}")
        k = self.slots
        log_scope = images.new_zeros(b, 1, h, w)
        log_masks = []
        for _ in range(k - 1):
            log_alpha, log_not_alpha = self.attention(images, log_scope)
            log_masks.append(log_scope + log_alpha)
            log_scope = log_scope + log_not_alpha
        log_masks.append(log_scope)
        log_m = torch.stack(log_masks, 1)  # (B, K, 1, H, W)

        # the K component VAEs as one batch, slot-major: row k * B + i is slot k of image i
        x_rep = images.repeat(k, 1, 1, 1)
        mu_z, sigma_z = self.encoder(x_rep, log_m.transpose(0, 1).reshape(k * b, 1, h, w))
        g_dev, dtype = generator.device, images.dtype
        eps = torch.cat(
            [torch.randn((b, self.z_dim), generator=generator, device=g_dev, dtype=dtype) for _ in range(k)]
        )
        z = mu_z + sigma_z * eps.to(mu_z.device)
        mean, mask_logits = self.decoder(z)
        mean = mean.view(k, b, 3, h, w).transpose(0, 1)  # (B, K, 3, H, W)
        log_m_dec = torch.log_softmax(mask_logits.view(k, b, 1, h, w).transpose(0, 1), 1)

        sigma = images.new_full((1, k, 1, 1, 1), self.sigma_fg)
        sigma[:, 0] = self.sigma_bg
        log_lik = -0.5 * ((images[:, None] - mean) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)
        nll = -torch.logsumexp(log_m + log_lik, 1).sum((1, 2, 3))  # (B,)
        kl_z = 0.5 * (mu_z**2 + sigma_z**2 - 1).sum(1) - sigma_z.log().sum(1)  # KL(N(mu, sigma) || N(0, 1))
        kl_z = kl_z.view(k, b).sum(0)
        masks = log_m.exp()
        kl_mask = (masks * (log_m - log_m_dec)).sum((1, 2, 3, 4))
        loss = (nll + self.beta * kl_z + self.gamma * kl_mask).mean()
        canvas = (masks * mean).sum(1)
        terms = {
            "nll": nll.mean().item(),
            "kl": kl_z.mean().item(),
            "kl_mask": kl_mask.mean().item(),
            "loss": loss.item(),
        }
        return ObjectOutput(loss, masks[:, :, 0], canvas, terms)


def build(params: dict) -> MONet:
    """MONet from a recipe's architecture/loss params; missing keys take the ClevrTex defaults (DEFAULTS)."""
    return build_model(MONet, DEFAULTS, params)
