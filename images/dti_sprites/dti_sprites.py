"""DTI-Sprites (Monnier, Vincent, Ponce, Aubry, ICCV 2021, "Unsupervised Layered Image Decomposition into Object
Prototypes", arXiv 2104.14575).

Written from the paper and the ClevrTex benchmark's copy of the authors' code (karazijal/clevrtex fe982ab,
ool/picture/models/thirdparty/dti_sprites/model.py + utils.py, MIT, monniert: read, nothing copied), in its ClevrTex
configuration (experiments/dtisprites.py): 10 sprites + the empty sprite, 10 object layers, 1 background, a
resnet18 encoder (conv1 .. layer4, then a 2x2 average pool: 2048 features), sprites 40x40, sprite transformations
identity_projective with the projective part switched on at epoch 150, layer transformations color_position,
background transformation color, predicted occlusion, greedy sprite selection (3 passes), mask noise 0.4, sprites
frozen for the first 40 epochs, empty-sprite penalty 1e-4, reassignment of unused sprites every 250 steps.

- Sprites: prototypes (10, 3, 40, 40) start at 0.9, masks (10, 1, 40, 40) at a Gaussian (std 10 pixels: scipy's
  window, outer product); the empty sprite (zeros) is appended as sprite 10. Prototypes (and masks at evaluation) go
  through the soft clamp clamp(x, 0, 1) + 0.01 (min(x, 0) + max(x - 1, 0)); in training the masks stay unclamped
  and a third channel (1 inside the sprite, 0 for the empty one) is warped along to carry the mask noise.
- Per layer l and sprite k: an MLP (2048 -> 128 -> 128 -> 9, last layer zero) of the image features gives a
  homography H = I + beta warped as kornia 0.5.5's homography_warp (the reference's pin): the output grid is
  linspace(-1, 1) per axis (made in float32, kornia's default, then cast), points (x, y, 1) H^T divided by z + 1e-8
  (where |z| > 1e-8), grid_sample with align_corners=False and zero padding (so even beta = 0 resamples slightly).
  Then per layer an MLP gives a colour transform (c' = (1 + a_c) c + b_c, soft-clamped) and a position one (affine
  theta = [[1 + e^s, 0, tx], [0, 1 + e^s, ty]], at init 2I, i.e. the 40x40 sprite spread over the central half of the
  image, zero padding). Background: its own colour transform of a (1, 3, H, W) image (soft-clamped).
- Training masks: m + n (2 * 0.4 u - 0.4), u ~ U(0, 1) of shape (K, 1, H, W) shared by the layers and the batch, n
  the warped noise channel; then the soft clamp.
- Occlusion: an MLP (2048 -> 128 -> 128 -> 45, last layer zero) through a sigmoid fills the strictly lower triangle
  of occ (occ[j, k]: layer j in front of layer k) in tril_indices order, occ[k, j] = 1 - occ[j, k]; the background
  (layer 0) is behind everything. Composition: M_k = m_k prod_{j != k} (1 - occ[j, k] m_j), canvas = sum_k M_k c_k.
- Greedy selection (no gradient): 3 passes over layers 1..10, each taking the sprite whose one-hot choice (the
  others as chosen so far, not-yet-chosen layers empty) gives the lowest per-image MSE, + 1e-4 for a non-empty
  sprite once sprites are unfrozen; while frozen the empty sprite is not a candidate. Ties go to the lowest index
  (all sprites are identical at initialisation). The candidates are scored with the composition factored around the
  layer being chosen (S0 + m (P_l c - T)): the same sum in another order, rounding only.
- Loss: mean over batch, channels and pixels of (x - canvas)^2 with the one-hot selection (no other term).
- masks = the reference's `layers.mask` given to the evaluator: (B, 11, H, W), M_k with the background first.
  They are a partition where occlusion is decided (occ 0/1) or at most two layers overlap; with soft occlusion and
  three or more overlapping layers they sum to less than 1 (e.g. three full masks at occ 0.5: 0.75), as in the
  reference; the evaluator takes their argmax. canvas = the composed image (unclamped, as the reference's output).

Schedules from `step` (the reference counts epochs with model.step() at each epoch's end): epoch = step //
`steps_per_epoch` (default 1250: ClevrTex's train split, 80% of 50,000 images, in batches of 32). Sprites frozen
(detached, no reassignment, empty sprite not selectable) for epochs < `freeze_epochs` (40); the projective warp on
from epoch `projective_epoch` (150). `step` None (evaluation) is what the ClevrTex evaluation runs: its notebook loads
a checkpoint into a fresh model, whose cur_epoch (a plain attribute, not saved) is 0, with every transformation
forced on (LitDTI.on_load_checkpoint); so the projective warp is on and the sprites count as frozen: the empty sprite
is no candidate and there is no empty-sprite penalty (every layer shows a sprite). `eval_empty_sprite: true` lets
evaluation choose it (with the penalty), as at the end of training. Mask noise only in train mode (model.train()), as
the reference (self.training); BatchNorm follows the mode.

Stateful parts, in buffers (a state_dict resumes them): the running sums of the selection proportions (per layer and
sprite, float64 like the reference's meters) and their count since the last check; a flag saying whether the
background was initialised from data. Every `reassign_every` (250) training steps (step % 250 == 0, after this
step's proportions are counted, as the reference's training_step), one layer is drawn (from the generator), its
average proportions over the sprites but the empty one are divided by their maximum, and every sprite under 0.2 /
10 = 0.02 is restarted from the most used one: prototype + 1e-4 N(0, 1) noise (generator), mask and the projective
regressors of every layer copied; then the most used one gets the noise too. The sums are reset at every check.
Disabled while sprites are frozen. The reference also copies Adam's moments of the restarted rows (masks, and the
projective regressors): call `set_optimizer(opt)` for that (not saved; without it the moments stay as they are).
The restart happens after the loss is built and before backward, as in the reference; it writes the tensors' data
(prototypes and masks enter the graph through copies, so their gradients are unaffected). Once the projective warp is
on, the reference's restart (load_state_dict of the regressors) bumps the version of weights the graph saved and its
backward raises (seen with torch 2.14 in scripts/compare_dti_sprites.py); here that step's backward runs, through the
restarted regressors' new weights.

Background from data: the reference initialises the background to the mean of the first 100 training images.
`init_backgrounds(images)` does that (the trainer's call, with 100 * n_backgrounds images); a training forward that
finds it not done uses its own batch's mean instead (so any trainer gets a data-derived start). Before either, 0.5.

Recipe (not in the model): Adam, lr 1e-4 for both groups (param_groups: sprites/masks/backgrounds; everything else
with weight decay 1e-6), batch 32, 450 epochs, no gradient clipping; LambdaLR per step: linear warm-up over the first
1000 steps, then the transformation group x 0.1 at epoch 250 and x 0.01 at 400 (gammas [1, 0.1]: the sprite group
does not decay). `lr_factors(step)` gives both factors.

Deliberate differences: the reference's transformation group lists the shared encoder's 60 tensors 12 times (via
each of the 10 sprite transformers, the layer and the background transformers: 1,732 entries, 1,072 distinct), and
torch's Adam steps a parameter listed n times n times per step (moments and step count too; checked with torch 2.14,
which only warns), so the reference's encoder moves 12 Adam steps per batch; param_groups lists each parameter once.
Reassignment copies Adam's moments (clones; the reference aliases the regressors' tensors) and draws no zero-scaled
noise for the regressor biases.
The reference warms the encoder's BatchNorm running statistics with two forwards of a zero image at construction
(running_var 0.81); so does this model. Any image and sprite size (square), any numbers of sprites and layers (>= 2);
one background only (the reference's selection path stacks the backgrounds as layers under an (L+1)-layer
occlusion grid, so only one fits); the encoder's base width is a parameter (64 = resnet18).

scripts/compare_dti_sprites.py runs the reference (kornia 0.5.5) on the same weights, images and noise at 128x128, 10
sprites, 10 layers, batch 2, in four phases (training at epoch 0; at epoch 200 off and on a check step with
restarts; evaluation as the notebook): at the reference's initialisation masks, canvas and loss are bit-identical in
float32 and gradients <= 3.7e-7 of the largest; with perturbed weights masks <= 4.9e-6, canvas <= 2.8e-6, loss <= 8.5e-8
relative, gradients <= 5.5e-6, restarted parameters identical; in float64 everything <= 1.8e-14. Same parameter count
(48,235,051). CPU (2 threads, nice'd, on a loaded machine: load ~3.4 on 2 cores; measured once), batch 8, 128x128,
defaults, Adam: 16.8 s per training step at epoch 0 (frozen, no projective warp; the very first step 29.5 s) and
36.1 s at epoch 200 (projective warps on, sprites learning).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from object_model import ObjectModel, ObjectOutput, build_model
from torch import nn

DEFAULTS = {
    "n_sprites": 10,
    "n_layers": 10,
    "n_backgrounds": 1,
    "sprite_size": 40,
    "image_size": 128,
    "encoder_width": 64,
    "pool": 2,
    "hidden": 128,
    "mask_std": 10.0,
    "proto_init": 0.9,
    "inject_noise": 0.4,
    "greedy_iters": 3,
    "lambda_empty": 1e-4,
    "freeze_epochs": 40,
    "projective_epoch": 150,
    "steps_per_epoch": 1250,
    "reassign_every": 250,
    "empty_threshold": 0.2,
    "restart_noise": 1e-4,
    "warmup_steps": 1000,
    "milestones": (250, 400),
    "eval_empty_sprite": False,
}


def soft_clamp(x: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    """clamp(x, 0, 1) with a 0.01 slope outside (the reference's default 'soft' clamp)."""
    return (
        x.clamp(0, 1)
        + alpha * torch.minimum(x, torch.zeros_like(x))
        + alpha * torch.maximum(x - 1, torch.zeros_like(x))
    )


def mlp(cin: int, cout: int, hidden: int) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear, the last layer zero (identity transformation at start). Indices 0, 2, 4."""
    net = nn.Sequential(
        nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, cout)
    )
    nn.init.zeros_(net[4].weight)
    nn.init.zeros_(net[4].bias)
    return net


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class ResNet18Trunk(nn.Module):
    """resnet18 without its head (conv1 7x7/2, BN, ReLU, max-pool 3x3/2, 4 stages of 2 basic blocks, widths w, 2w,
    4w, 8w), then adaptive average pooling to pool x pool and flattening. Kaiming-normal (fan_out) convs, BN 1/0."""

    def __init__(self, width: int, pool: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        widths = [width, 2 * width, 4 * width, 8 * width]
        cin = width
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.pool = pool
        self.out_features = cin * pool * pool
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, self.pool).flatten(1)


def gaussian_mask(size: int, std: float) -> torch.Tensor:
    """(1, size, size): the outer product of two Gaussian windows exp(-n^2 / (2 std^2)), n centred (scipy's)."""
    n = torch.arange(size, dtype=torch.float64) - (size - 1.0) / 2.0
    g = torch.exp(-(n**2) / (2 * std * std))
    return torch.outer(g, g).float()[None]


def homography_warp(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """x (N, C, S, S') warped by h (N, 3, 3) onto its own size, as kornia 0.5.5's homography_warp (see docstring)."""
    rows, cols = x.shape[-2:]
    # the grid in float32 whatever x's dtype, as kornia 0.5.5's create_meshgrid (float64 runs then match it)
    xs = ((torch.linspace(0, cols - 1, cols, dtype=torch.float32, device=x.device) / (cols - 1) - 0.5) * 2).to(x.dtype)
    ys = ((torch.linspace(0, rows - 1, rows, dtype=torch.float32, device=x.device) / (rows - 1) - 0.5) * 2).to(x.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(1, -1, 3).expand(x.shape[0], -1, -1)
    warped = torch.bmm(pts, h.transpose(1, 2))
    z = warped[..., 2:]
    scale = torch.where(z.abs() > 1e-8, 1.0 / (z + 1e-8), torch.ones_like(z))
    grid = (scale * warped[..., :2]).view(x.shape[0], rows, cols, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def compose(layers: torch.Tensor, masks: torch.Tensor, occ: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """layers (N, B, C, H, W), masks (N, B, 1, H, W), occ (N, N, B) with occ[j, k] = layer j in front of layer k (0
    on the diagonal). Returns canvas sum_k M_k c_k (B, C, H, W) and M (N, B, 1, H, W), M_k = m_k prod_j (1 - occ[j, k]
    m_j)."""
    n = layers.shape[0]
    occ = occ[..., None, None, None]
    vis = []
    for k in range(n):
        v = masks.new_ones(masks.shape[1:])
        for j in range(n):
            if j != k:
                v = v * (1 - occ[j, k] * masks[j])
        vis.append(v * masks[k])
    vis = torch.stack(vis)
    return (vis * layers).sum(0), vis


class DTISprites(ObjectModel):
    """DTI-Sprites on (B, 3, S, S) images in [0, 1], S = `image_size`; K = n_sprites + 1 (empty), L = n_layers."""

    masks_have_background = True

    def __init__(self, n_sprites: int, n_layers: int, n_backgrounds: int, sprite_size: int, image_size: int,
                 encoder_width: int, pool: int, hidden: int, mask_std: float, proto_init: float, inject_noise: float,
                 greedy_iters: int, lambda_empty: float, freeze_epochs: int, projective_epoch: int,
                 steps_per_epoch: int, reassign_every: int, empty_threshold: float, restart_noise: float,
                 warmup_steps: int, milestones: tuple[int, ...], eval_empty_sprite: bool):  # fmt: skip
        super().__init__()
        if n_layers < 2 or n_sprites < 1 or n_backgrounds != 1:
            raise ValueError(f"need n_layers >= 2, n_sprites >= 1, n_backgrounds == 1 (got {n_layers}, {n_sprites}, "
                             f"{n_backgrounds})")  # fmt: skip
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.n_sprites, self.n_layers, self.n_backgrounds = n_sprites, n_layers, n_backgrounds
        self.sprite_size, self.image_size = sprite_size, image_size
        self.inject_noise, self.greedy_iters, self.lambda_empty = inject_noise, greedy_iters, lambda_empty
        self.freeze_epochs, self.projective_epoch = freeze_epochs, projective_epoch
        self.steps_per_epoch, self.reassign_every = steps_per_epoch, reassign_every
        self.threshold, self.restart_noise = empty_threshold / n_sprites, restart_noise  # 0.2 / 10 as the reference
        self.warmup_steps, self.milestones = warmup_steps, tuple(milestones)
        self.eval_empty_sprite = eval_empty_sprite
        k, s = n_sprites + 1, sprite_size
        self.prototype_params = nn.Parameter(torch.full((n_sprites, 3, s, s), float(proto_init)))
        self.mask_params = nn.Parameter(gaussian_mask(s, mask_std).expand(n_sprites, -1, -1, -1).clone())
        self.bkg_params = nn.Parameter(torch.full((n_backgrounds, 3, image_size, image_size), 0.5))
        self.encoder = ResNet18Trunk(encoder_width, pool)
        f = self.encoder.out_features
        # projective[l][k]: the homography of sprite k in layer l; colour/position per layer; colour per background
        self.projective = nn.ModuleList(nn.ModuleList(mlp(f, 9, hidden) for _ in range(k)) for _ in range(n_layers))
        self.layer_color = nn.ModuleList(mlp(f, 6, hidden) for _ in range(n_layers))
        self.layer_position = nn.ModuleList(mlp(f, 3, hidden) for _ in range(n_layers))
        self.bkg_color = nn.ModuleList(mlp(f, 6, hidden) for _ in range(n_backgrounds))
        self.occ_predictor = mlp(f, n_layers * (n_layers - 1) // 2, hidden)
        self.register_buffer("prop_sum", torch.zeros(n_layers * k, dtype=torch.float64))
        self.register_buffer("prop_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("bkg_from_data", torch.tensor(False))
        self._optimizer = None
        # the reference sizes its encoder with two train-mode forwards of a zero image: every BatchNorm sees zeros
        # (no conv has a bias), so its running mean stays 0 and its running variance goes 1 -> 0.9 -> 0.81
        for m in self.encoder.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(0.81)
                m.num_batches_tracked.fill_(2)

    # ---- schedules and recipe ----
    def epoch(self, step: int | None) -> float:
        return math.inf if step is None else step // self.steps_per_epoch

    def lr_factors(self, step: int) -> tuple[float, float]:
        """The reference's LambdaLR factors (sprite group, transformation group) at optimiser step `step`."""
        if step < self.warmup_steps:
            return step / self.warmup_steps, step / self.warmup_steps
        passed = sum(step // self.steps_per_epoch >= m for m in self.milestones)
        return 1.0, 0.1**passed

    def param_groups(self, lr: float) -> list[dict]:
        cluster = [self.prototype_params, self.mask_params, self.bkg_params]
        ids = {id(p) for p in cluster}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": cluster, "lr": lr}, {"params": rest, "lr": lr, "weight_decay": 1e-6}]

    def set_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        """The optimiser whose Adam moments a sprite restart copies (not saved with the model)."""
        self._optimizer = optimizer

    def start_training(self, images: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """The trainer's hook: restarts copy this optimiser's moments, and the backgrounds start as the mean of the
        first 100 training images (as many as divide into n_backgrounds groups); a resumed run's checkpoint then
        replaces them."""
        self.set_optimizer(optimizer)
        n = min(len(images), 100) // self.n_backgrounds * self.n_backgrounds
        if n:
            self.init_backgrounds(images[:n])

    @torch.no_grad()
    def init_backgrounds(self, images: torch.Tensor) -> None:
        """Backgrounds = means of `images` (N, 3, S, S) split into n_backgrounds equal groups (the reference: 100
        training images per background)."""
        m = self.n_backgrounds
        if images.shape[0] % m or images.shape[1:] != self.bkg_params.shape[1:]:
            raise ValueError(
                f"need (n * {m}, 3, {self.image_size}, {self.image_size}) images, got {tuple(images.shape)}"
            )
        mean = images.reshape(m, images.shape[0] // m, *images.shape[1:]).mean(1)
        self.bkg_params.data.copy_(mean.to(self.bkg_params))
        self.bkg_from_data.fill_(True)

    # ---- forward ----
    def forward(self, images: torch.Tensor, generator: torch.Generator, step: int | None = None) -> ObjectOutput:
        b, c, hh, ww = images.shape
        if c != 3 or hh != self.image_size or ww != self.image_size:
            raise ValueError(f"expected (B, 3, {self.image_size}, {self.image_size}) images, got {tuple(images.shape)}")
        train_step = self.training and step is not None
        if train_step and not bool(self.bkg_from_data):
            self.init_backgrounds(images.detach())
        epoch = self.epoch(step)
        frozen = epoch < self.freeze_epochs or (step is None and not self.eval_empty_sprite)
        noisy = self.training and self.inject_noise > 0
        L, K, s = self.n_layers, self.n_sprites + 1, self.sprite_size
        dev, dt = images.device, images.dtype

        protos = soft_clamp(torch.cat([self.prototype_params, self.prototype_params.new_zeros(1, 3, s, s)]))
        masks = torch.cat([self.mask_params, self.mask_params.new_zeros(1, 1, s, s)])
        if not noisy:
            masks = soft_clamp(masks)
        sprites = [protos, masks]
        if noisy:
            sprites.append(torch.cat([masks.new_ones(K - 1, 1, s, s), masks.new_zeros(1, 1, s, s)]))
        sprites = torch.cat(sprites, 1)  # (K, C', s, s)
        if frozen:
            sprites = sprites.detach()
        cp = sprites.shape[1]

        feats = self.encoder(images)  # (B, F)
        tsf = sprites[None, :, None].expand(L, K, b, cp, s, s)
        if epoch >= self.projective_epoch:
            beta = torch.stack([torch.stack([r(feats) for r in row]) for row in self.projective])  # (L, K, B, 9)
            hom = beta.reshape(-1, 3, 3) + torch.eye(3, dtype=dt, device=dev)
            tsf = homography_warp(tsf.reshape(L * K * b, cp, s, s), hom).view(L, K, b, cp, s, s)
        # colour per layer (on the RGB channels), then position onto the image grid
        col = torch.stack([r(feats) for r in self.layer_color]).view(L, 1, b, 3, 2)
        rgb = soft_clamp(tsf[:, :, :, :3] * (col[..., 0, None, None] + 1) + col[..., 1, None, None])
        tsf = torch.cat([rgb, tsf[:, :, :, 3:]], 3)
        pos = torch.stack([r(feats) for r in self.layer_position])  # (L, B, 3)
        scale = pos[..., 0].exp()
        zero = torch.zeros_like(scale)
        theta = torch.stack([torch.stack([scale + 1, zero, pos[..., 1]], -1),
                             torch.stack([zero, scale + 1, pos[..., 2]], -1)], -2)  # (L, B, 2, 3)  # fmt: skip
        theta = theta[:, None].expand(L, K, b, 2, 3).reshape(-1, 2, 3)
        grid = F.affine_grid(theta, [L * K * b, cp, hh, ww], align_corners=False)
        tsf = F.grid_sample(tsf.reshape(L * K * b, cp, s, s), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False).view(L, K, b, cp, hh, ww)  # fmt: skip
        layers, tmasks = tsf[:, :, :, :3], tsf[:, :, :, 3:4]
        if noisy:
            u = torch.rand((K, 1, hh, ww), generator=generator, device=generator.device, dtype=dt).to(dev)
            tmasks = soft_clamp(
                tmasks + tsf[:, :, :, 4:5] * (2 * self.inject_noise * u[None, :, None] - self.inject_noise)
            )

        bcol = torch.stack([r(feats) for r in self.bkg_color]).view(-1, b, 3, 2)  # (M, B, 3, 2)
        bkgs = soft_clamp(
            soft_clamp(self.bkg_params)[:, None] * (bcol[..., 0, None, None] + 1) + bcol[..., 1, None, None]
        )

        occ = self.occlusion(feats)  # (L+1, L+1, B), background first
        choice = self.greedy(images, layers, tmasks, bkgs, occ, frozen)  # (L, K, B) one-hot
        w = choice[..., None, None, None].to(dt)
        sel_masks = torch.cat([masks.new_ones(1, b, 1, hh, ww).to(dt), (tmasks * w).sum(1)])
        sel_layers = torch.cat([bkgs, (layers * w).sum(1)])
        canvas, vis = compose(sel_layers, sel_masks, occ)
        loss = ((images - canvas) ** 2).mean()

        terms = {"loss": float(loss.detach())}
        if train_step:
            terms.update(self.track_and_reassign(choice, step, generator, frozen))
        return ObjectOutput(loss, vis[:, :, 0].transpose(0, 1), canvas, terms)

    def occlusion(self, feats: torch.Tensor) -> torch.Tensor:
        """(L+1, L+1, B): occ[j, k] = layer j in front of layer k, layer 0 the background (behind all)."""
        L, b = self.n_layers, feats.shape[0]
        p = torch.sigmoid(self.occ_predictor(feats))
        grid = p.new_zeros(b, L, L)
        i, j = torch.tril_indices(L, L, -1, device=feats.device)
        grid[:, i, j] = p
        grid = grid + torch.triu(1 - grid.transpose(1, 2), 1)
        full = p.new_zeros(b, L + 1, L + 1)
        full[:, 1:, 0] = 1
        full[:, 1:, 1:] = grid
        return full.permute(1, 2, 0)

    @torch.no_grad()
    def greedy(self, x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, bkgs: torch.Tensor,
               occ: torch.Tensor, frozen: bool) -> torch.Tensor:  # fmt: skip
        """One-hot (L, K, B) sprite choice per layer: `greedy_iters` coordinate passes minimising the MSE."""
        L, K, b = layers.shape[:3]
        kc = K - 1 if frozen else K  # while frozen the empty sprite (last) is no candidate
        layers, masks = layers[:, :kc].detach(), masks[:, :kc].detach()
        bkgs, occ = bkgs.detach(), occ.detach()
        cur_l = torch.cat([bkgs, layers.new_zeros(L, *layers.shape[2:])])  # (L+1, B, C, H, W)
        cur_m = torch.cat([masks.new_ones(1, *masks.shape[2:]), masks.new_zeros(L, *masks.shape[2:])])
        o = occ[..., None, None, None]
        penalty = None
        if not frozen:
            penalty = torch.full((kc, 1), self.lambda_empty, dtype=x.dtype, device=x.device)
            penalty[-1] = 0
        choice = torch.zeros(L, K, b, dtype=x.dtype, device=x.device)
        for _ in range(self.greedy_iters):
            for li in range(1, L + 1):
                # composition with layer li left out: S0 = sum_{k != li} P_k m_k c_k, T = sum_{k != li} occ[li, k] P_k
                # m_k c_k (P_k the visibility of k behind every layer but li), P_l the visibility of layer li
                s0 = t = 0
                for k in range(L + 1):
                    v = torch.ones_like(cur_m[0])
                    for j in range(L + 1):
                        if j != k and j != li:
                            v = v * (1 - o[j, k] * cur_m[j])
                    if k == li:
                        p_l = v
                    else:
                        term = v * cur_m[k] * cur_l[k]
                        s0 = s0 + term
                        t = t + o[li, k] * term
                recon = s0 + masks[li - 1] * (p_l * layers[li - 1] - t)  # (kc, B, C, H, W)
                dist = ((x[None] - recon) ** 2).flatten(2).mean(2)  # (kc, B)
                if penalty is not None:
                    dist = dist + penalty
                best = dist.argmin(0)
                choice[li - 1] = 0
                choice[li - 1].scatter_(0, best[None], 1)
                idx = torch.arange(b, device=x.device)
                cur_l[li] = layers[li - 1][best, idx]
                cur_m[li] = masks[li - 1][best, idx]
        return choice

    # ---- unused-sprite reassignment ----
    @torch.no_grad()
    def track_and_reassign(self, choice: torch.Tensor, step: int, generator: torch.Generator, frozen: bool) -> dict:
        self.prop_sum += choice.float().mean(2).flatten().to(self.prop_sum)
        self.prop_count += 1
        if step % self.reassign_every:
            return {}
        L, K = self.n_layers, self.n_sprites + 1
        layer = int(torch.randint(0, L, (1,), generator=generator, device=generator.device))
        prop = (self.prop_sum / self.prop_count).view(L, K)[layer].float()
        self.prop_sum.zero_()
        self.prop_count.zero_()
        if frozen:
            return {"reassigned": 0.0}
        prop = prop[:-1] / prop[:-1].max()
        best = int(prop.argmax())
        low = [i for i in range(K - 1) if prop[i] < self.threshold]
        for i in low:
            self.restart_sprite(i, best, generator)
        if low:
            self.restart_sprite(best, best, generator)
        return {"reassigned": float(len(low))}

    def restart_sprite(self, i: int, j: int, generator: torch.Generator) -> None:
        """Sprite i := sprite j: prototype + restart_noise N(0, 1), mask, the projective regressors in every layer;
        with set_optimizer(Adam), the moments of the mask row and of those regressors too."""
        proto = self.prototype_params
        noise = torch.randn(proto.shape[1:], generator=generator, device=generator.device, dtype=proto.dtype)
        proto.data[i] = proto.data[j] + noise.to(proto.device) * self.restart_noise
        self.mask_params.data[i] = self.mask_params.data[j]
        pairs = []
        for row in self.projective:
            for pi, pj in zip(row[i].parameters(), row[j].parameters()):
                if i != j:
                    pi.data.copy_(pj.data)
                pairs.append((pi, pj))
        opt = self._optimizer
        if opt is None or i == j:
            return
        st = opt.state.get(self.mask_params, {})
        for key in ("exp_avg", "exp_avg_sq", "square_avg"):
            if key in st:
                st[key][i] = st[key][j]
        for pi, pj in pairs:
            if pi in opt.state and pj in opt.state:
                for key in ("exp_avg", "exp_avg_sq", "square_avg"):
                    if key in opt.state[pj]:
                        opt.state[pi][key] = opt.state[pj][key].clone()


def build(params: dict) -> DTISprites:
    """DTI-Sprites from a recipe's params; missing keys take the ClevrTex defaults (DEFAULTS), unknown keys raise."""
    return build_model(DTISprites, DEFAULTS, params)
