"""NeCo fine-tuning in one process: the training loop of vpariza/NeCo 3932160 (src/neco.py class `NeCo`,
src/neco_transforms.py `NeCoTransforms`, experiments/train_with_neco.py), our own code.

What it reproduces, and where the reference has it:
- `DiffSort`: the relaxed bitonic sorting network of PyPI `diffsort==0.2.0` (`DiffSortNet('bitonic', n, steepness,
  distribution='cauchy')`, networks.py `bitonic_network`, functional.py `execute_sort`), which NeCo sorts with. n
  that is not a power of two is padded to 2^k as diffsort pads: the n real wires are the top ones, a comparator
  between two padding wires is dropped and one between a padding wire and a real wire passes the real one through.
  The returned P (B, n, n) is diffsort's: P[b, i, j] = the weight of element i at sorted (ascending) position j, so
  x @ P is the relaxed sort of x. Written with index gathers, one per layer, where diffsort multiplies by 0/1
  matrices (the same products and sums).
- `NeCoCrops` = NeCoTransforms (neco_transforms.py L83-163: 2 global + N local crops with overlap resampling,
  colour jitter, grayscale, blur, no flip) and its `calculate_bboxes` (`pair_boxes`).
- `NeCoNet` = vit_v2.py's DinoVisionTransformer forward / forward_head / forward_backbone (L363-407, L304-309) on a
  timm `vit_<size>_patch14_dinov2` (images/neco's backbone): per run of same-size crops the patch tokens after the
  final norm, then the projection head D-2048-2048-256 (GELU) per patch, L2-normalised. Stochastic depth is
  DINOv2's Block's (layers/block.py): per-sample masks (timm's DropPath draws them as DINOv2's does), but on sample
  subsets in a block whose rate exceeds 0.1 (`subset_depth_forward`: the student's last block).
- `knn_loss` = NeCo.knn_loss with compute_knn_perm_mat / compute_knn_subloss (L370-484; loss_mask 'all', sim_dist
  'cosine'; log p without an epsilon, as theirs); the queue = update_queue (L487-508) and the queue draw in
  knn_loss; `Trainer` = shared_step, training_step (teacher EMA, L510-529), configure_optimizers (AdamW, 4 groups,
  CosineAnnealingLR per step to final_lr, L205-267) and optimizer_step (weight decay cosine on groups 0 and 2,
  L285-313), in Lightning's order: weight decay set, forward, queue update, loss, teacher EMA (with the student
  *before* this step's update), backward, AdamW, lr scheduler. `backbone_state()` exports the student as a NeCo
  backbone state dict, the file images/neco's adapter loads.

Deliberate differences:
- One process, no Lightning: `batch_size` is the whole batch and `steps_per_epoch` is given (theirs: dataset size //
  batch). No validation / k-means monitor.
- Randomness: each image's crops come from `numpy.random.default_rng((seed, step, index))` (the reference draws from
  torch's and Python's global generators in its data-loader workers), so crops are reproducible and need no state to
  resume. The init, drop path and the queue / reference draws (torch.randperm, as the reference) use torch's
  generators set to the trainer's own state, carried across steps and in checkpoints.
- The init is timm's (the same scheme as vit_v2.py's: trunc-normal 0.02 linears, zero biases, cls N(0, 1e-6); other
  draws); `init` weights replace the backbones, as the reference's runs always load DINOv2 weights.
- A non-finite loss raises FloatingPointError before anything (queue, teacher, student) is updated.
- timm's attention is `scaled_dot_product_attention` unless `fused_attn` is False (then explicit, as vit_v2.py's
  Attention without xFormers).
scripts/compare_neco_train.py runs diffsort and NeCo's own module against these on identical weights and crops:
DiffSort's P is bit-exact, its gradients 1e-8 apart (another summation order); the loss is bit-exact over 4 steps,
the parameters after them 2e-6 apart (AdamW magnifying that rounding where gradients are near its eps), and 0.0
apart with diffsort's network in our trainer.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode
from train_common import OwnRng, cosine_scheduler, random_resized_crop_box, recipe_from_dict
from vit_backbone import MEAN, STD, check_keys, interpolate_pos_embed, read_state_dict

# --- the differentiable sorting network (diffsort 0.2.0) -----------------------------------------------------------


def bitonic_layers(n: int) -> list[tuple[torch.Tensor, ...]]:
    """The layers of diffsort's bitonic network on n wires (real-wire indices 0..n-1), each as index tensors
    (a, b, to_min, to_max, through): comparator k compares wire a[k] with the higher wire b[k] and sends the soft
    minimum to wire to_min[k], the soft maximum to to_max[k] (swapped in the descending halves of a block); the
    wires in `through` (paired with a padding wire) keep their value."""
    if n < 2:
        raise ValueError(f"a sorting network needs at least 2 wires, not {n}")
    blocks = math.ceil(math.log2(n))
    pad = 2**blocks - n  # padding wires 0..pad-1 sit below the real ones
    layers = []
    for block in range(blocks):
        for layer in range(block + 1):
            m = 2 ** (block - layer)  # comparator span
            a, b, to_min, to_max, through = [], [], [], [], []
            for lo in range(2**blocks):
                hi = lo + m
                if lo % (2 * m) >= m or hi < pad:  # not a comparator's lower wire, or two padding wires
                    continue
                if lo < pad:
                    through.append(hi - pad)
                    continue
                descending = (lo // 2 ** (block + 1)) % 2 == 1
                a.append(lo - pad)
                b.append(hi - pad)
                to_min.append((hi if descending else lo) - pad)
                to_max.append((lo if descending else hi) - pad)
            layers.append(tuple(torch.tensor(v, dtype=torch.long) for v in (a, b, to_min, to_max, through)))
    return layers


class DiffSort(nn.Module):
    """diffsort's DiffSortNet('bitonic', n, steepness=..., distribution='cauchy'): forward(x (B, n)) returns the
    relaxed ascending sort (B, n) and the doubly-stochastic relaxed permutation P (B, n, n) (see the module
    docstring). A comparator of a and b (a on the lower wire) mixes with alpha = atan(steepness (b - a)) / pi + 1/2:
    min = alpha a + (1 - alpha) b, max = (1 - alpha) a + alpha b, and the columns of P the same way."""

    def __init__(self, n: int, steepness: float = 100.0):
        super().__init__()
        self.n, self.steepness = n, float(steepness)
        self.layers = []
        for i, tensors in enumerate(bitonic_layers(n)):
            a, b, to_min, to_max, through = tensors
            # the wire order of cat((min, max, through)) -> wire order: its inverse permutation
            order = torch.empty(n, dtype=torch.long)
            order[torch.cat((to_min, to_max, through))] = torch.arange(n)
            for name, t in zip(("a", "b", "through", "order"), (a, b, through, order)):
                self.register_buffer(f"layer{i}_{name}", t, persistent=False)
            self.layers.append(i)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 2 or x.shape[1] != self.n:
            raise ValueError(f"expected (B, {self.n}) values to sort, got {tuple(x.shape)}")
        # q[b, w, i] = P[b, i, w] (wire-major: a layer gathers whole rows); the same products and sums as diffsort's
        q = torch.eye(self.n, dtype=x.dtype, device=x.device).expand(len(x), -1, -1)
        for i in self.layers:
            a, b, through, order = (getattr(self, f"layer{i}_{k}") for k in ("a", "b", "through", "order"))
            xa, xb = x[:, a], x[:, b]
            alpha = 1 / math.pi * torch.atan(self.steepness * (xb - xa)) + 0.5
            x = torch.cat((alpha * xa + (1 - alpha) * xb, (1 - alpha) * xa + alpha * xb, x[:, through]), 1)[:, order]
            qa, qb, w = q[:, a], q[:, b], alpha.unsqueeze(-1)
            q = torch.cat((w * qa + (1 - w) * qb, (1 - w) * qa + w * qb, q[:, through]), 1)[:, order]
        return x, q.transpose(1, 2)


# --- schedules -----------------------------------------------------------------------------------------------------


# --- augmentation (NeCoTransforms) ---------------------------------------------------------------------------------


class NeCoCrops:
    """NeCoTransforms (src/neco_transforms.py) with `rng` drawing every choice: `n_global` bilinear
    RandomResizedCrops of `global_size` (scale `global_scale`) then `n_local` of `local_size` (`local_scale`),
    ratio (3/4, 4/3). Each crop after the first is redrawn until its intersection with every global crop drawn
    before it is larger than int(min_intersection x image area) pixels (twice that between global crops). Each
    crop: ColorJitter(0.8 j, 0.8 j, 0.8 j, 0.2 j) with p=0.8 (the four in a random order; j = jitter_strength),
    grayscale p=0.2, PIL Gaussian blur of radius U(0.1 b, 2 b) with p=0.5 (b = blur_strength); no flip; then
    /255 and ImageNet mean/std. Returns the crops and their boxes (x1, y1, x2, y2) in image pixels."""

    def __init__(
        self,
        global_size=224,
        local_size=98,
        n_local=4,
        global_scale=(0.25, 1.0),
        local_scale=(0.05, 0.25),
        min_intersection=0.01,
        jitter_strength=1.0,
        blur_strength=1.0,
        n_global=2,
    ):
        if not 0 < min_intersection < 1:
            raise ValueError(f"min_intersection must be in (0, 1), not {min_intersection}")
        self.sizes = [global_size] * n_global + [local_size] * n_local
        self.scales = [tuple(global_scale)] * n_global + [tuple(local_scale)] * n_local
        self.n_global, self.min_intersection = n_global, min_intersection
        self.jitter, self.blur = jitter_strength, blur_strength

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        img, crops, boxes = Image.fromarray(image), [], []
        for i, (size, scale) in enumerate(zip(self.sizes, self.scales)):
            top, left, h, w = random_resized_crop_box(height, width, scale, rng)
            least = int(width * height * self.min_intersection) * (2 if i < self.n_global else 1)
            while any(overlap((left, top, left + w, top + h), g) <= least for g in boxes[: self.n_global]):
                top, left, h, w = random_resized_crop_box(height, width, scale, rng)
            boxes.append((left, top, left + w, top + h))
            crop = TF.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BILINEAR)
            crops.append((TF.to_tensor(self.colour(crop, rng)) - MEAN[0]) / STD[0])
        return crops, torch.tensor(boxes, dtype=torch.float32)

    def colour(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        j = self.jitter
        if rng.random() < 0.8:
            order = rng.permutation(4)
            factors = [rng.uniform(max(0.0, 1 - 0.8 * j), 1 + 0.8 * j) for _ in range(3)]
            factors.append(rng.uniform(-0.2 * j, 0.2 * j))
            ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
            for i in order:
                img = ops[i](img, float(factors[i]))
        if rng.random() < 0.2:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if rng.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1 * self.blur, 2.0 * self.blur)))
        return img

    def pair_boxes(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """NeCoTransforms.calculate_bboxes: from the crops' image boxes (C, 4), the intersection of each global crop
        g with each crop v, as `gc` (G, C, 4) in g's pixel frame and `all` (C, G, 4) in v's (x1, y1, x2, y2; the
        frame of a crop of size s is s x s)."""
        g = self.n_global
        top_left = torch.max(boxes[:g, None, :2], boxes[:, :2])  # (G, C, 2)
        bottom_right = torch.min(boxes[:g, None, 2:], boxes[:, 2:])
        if not torch.all(bottom_right - top_left > 0):
            raise ValueError("a crop does not intersect a global crop")
        origin, extent = boxes[:, None, :2], (boxes[:, 2:] - boxes[:, :2])[:, None]  # (C, 1, 2)
        sizes = torch.tensor(self.sizes, dtype=torch.float32)[:, None, None]
        gc = torch.cat([sizes[:g] * ((p - origin[:g]) / extent[:g]) for p in (top_left, bottom_right)], 2)
        tl, br = top_left.transpose(0, 1), bottom_right.transpose(0, 1)  # (C, G, 2)
        other = torch.cat([sizes * ((p - origin) / extent) for p in (tl, br)], 2)
        return gc, other


def overlap(a, b) -> float:
    """The intersection area of two (x1, y1, x2, y2) boxes (0 when apart)."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


# --- networks ------------------------------------------------------------------------------------------------------


def build_vit(arch: str, patch_size: int, drop_path_rate: float, fused_attn: bool, **overrides) -> nn.Module:
    """timm's <arch>_patch14_dinov2 (arch 'vit_small' / 'vit_base'), the DINOv2 architecture without registers at the
    518 grid (images/neco's backbone), LayerScale initialised at 1 as vit_v2.py's vit_small/vit_base; `overrides`
    (depth, embed_dim, num_heads, img_size, ...) change it, for small tests."""
    vit = timm.create_model(
        f"{arch}_patch14_dinov2",
        pretrained=False,
        num_classes=0,
        patch_size=patch_size,
        init_values=1.0,
        drop_path_rate=drop_path_rate,
        **overrides,
    )
    for block in vit.blocks:
        block.attn.fused_attn = fused_attn
        if getattr(block.drop_path1, "drop_prob", 0.0) > 0.1:
            block.forward = functools.partial(subset_depth_forward, block)
    return vit


def residual_on_subset(x: torch.Tensor, residual: Callable, ratio: float) -> torch.Tensor:
    """DINOv2's drop_add_residual_stochastic_depth (src/layers/block.py): the residual of a random subset of
    max(int(B (1 - ratio)), 1) samples (torch.randperm), added scaled by B / subset; the others pass unchanged."""
    b = len(x)
    keep = max(int(b * (1 - ratio)), 1)
    rows = torch.randperm(b, device=x.device)[:keep]
    out = residual(x[rows]).flatten(1)
    return torch.index_add(x.flatten(1), 0, rows, out.to(dtype=x.dtype), alpha=b / keep).view_as(x)


def subset_depth_forward(block: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """vit_v2.py's Block.forward for a block whose drop-path rate is above 0.1, which in training applies stochastic
    depth to sample subsets instead of per-sample masks: NeCo's student (drop_path_rate 0.1) has one such block, the
    last, as its rate, torch.linspace(0, 0.1, depth)[-1] = 0.10000000149 in float32, exceeds 0.1."""
    if not block.training:
        return type(block).forward(block, x, *args, **kwargs)
    ratio = block.drop_path1.drop_prob
    x = residual_on_subset(x, lambda y: block.ls1(block.attn(block.norm1(y))), ratio)
    return residual_on_subset(x, lambda y: block.ls2(block.mlp(block.norm2(y))), ratio)


def patch_tokens(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """vit_v2.py's forward_backbone(x)[:, 1:] on a timm ViT: the patch tokens after the final norm (B, h·w, D), with
    NeCo's position-embedding interpolation (bicubic by scale factor with the +0.1 offset, no antialias)."""
    h, w = x.shape[-2:]
    tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat((vit.cls_token.expand(len(x), -1, -1), tokens), dim=1)
    patch = vit.patch_embed.patch_size[0]
    tokens = vit.pos_drop(tokens + interpolate_pos_embed(vit.pos_embed, h, w, patch, 1, 0.1, False))
    return vit.norm(vit.blocks(tokens))[:, 1:]


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, layers: int) -> nn.Sequential:
    """vit_v2.py's projection head: Linear(in, hidden)-GELU-(Linear(hidden, hidden)-GELU) x (layers - 2)-Linear(hidden,
    out) (one Linear when layers is 1), trunc-normal 0.02 weights and zero biases (init_weights_vit_timm)."""
    dims = [in_dim] + [hidden_dim] * (max(layers, 1) - 1) + [out_dim]
    modules = []
    for i, (d_in, d_out) in enumerate(zip(dims, dims[1:])):
        modules += [nn.Linear(d_in, d_out)] + ([nn.GELU()] if i < len(dims) - 2 else [])
    for m in modules:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*modules)


class NeCoNet(nn.Module):
    """vit_v2.py's DinoVisionTransformer.forward: the backbone on each run of same-width crops, their patch tokens
    (no CLS) concatenated crop-major, then the projection head and L2 normalisation: (sum of B·h·w, out_dim)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.projection_head = backbone, head

    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        widths = torch.tensor([c.shape[-1] for c in crops])
        ends = torch.cumsum(torch.unique_consecutive(widths, return_counts=True)[1], 0).tolist()
        tokens = [patch_tokens(self.backbone, torch.cat(list(crops[s:e]))) for s, e in zip([0] + ends[:-1], ends)]
        spatial = torch.cat([t.reshape(-1, t.shape[-1]) for t in tokens])
        return F.normalize(self.projection_head(spatial), dim=1, p=2)


# --- loss ----------------------------------------------------------------------------------------------------------


def rank_distributions(query: torch.Tensor, refs: torch.Tensor, sorter: DiffSort) -> torch.Tensor:
    """NeCo.compute_knn_perm_mat with sim_dist 'cosine': the cosine similarity of each of the k x k query cells
    (B, d, k, k) to the k² reference patches (B, d, k, k) of its image, soft-sorted; returns P as (B, j, i, k, k):
    for cell (h, w) the weight of reference i at sorted position j."""
    b, d, k, _ = query.shape
    src = query.permute(0, 2, 3, 1).reshape(b, k * k, d)
    tgt = refs.permute(0, 2, 3, 1).reshape(b, k * k, d)
    sim = torch.einsum("bhc,bwc->bhw", F.normalize(src, dim=-1), F.normalize(tgt, dim=-1))
    _, p = sorter(sim.reshape(-1, k * k))
    return p.reshape(b, k, k, k * k, k * k).permute(0, 4, 3, 1, 2)


def knn_loss(
    teacher: torch.Tensor,
    student: torch.Tensor,
    gc_boxes: torch.Tensor,
    all_boxes: torch.Tensor,
    batch: int,
    n_global: int,
    patch_size: int,
    references: Callable[[int, torch.Tensor], torch.Tensor],
    student_sorter: DiffSort,
    teacher_sorter: DiffSort,
) -> torch.Tensor:
    """NeCo.knn_loss with loss_mask 'all'. teacher: the teacher's embeddings of the global crops, student: the
    student's of all C crops (NeCoNet rows); gc_boxes (B, G, C, 4), all_boxes (B, C, G, 4) (NeCoCrops.pair_boxes,
    stacked). For each global crop c: the teacher map of c roi-aligned (k x k, aligned=True, boxes / patch) over its
    intersection with every crop v; the student map of each v != c over the same intersection in v's frame;
    `references(index of c, aligned teacher cells (B, d, k, k))` -> the reference patches; the cross-entropy
    -mean(sum_j q log p) of the teacher's rank distributions q (no gradient) under the student's p, averaged over
    i, the cells and the batch, summed over v and divided by C - 1; then averaged over c."""
    n_crops, k, dim = all_boxes.shape[1], math.isqrt(student_sorter.n), teacher.shape[-1]
    grid_g = math.isqrt(len(teacher) // (batch * n_global))  # the global and the local crops' token grids
    grid_l = math.isqrt((len(student) - len(teacher)) // max(batch * (n_crops - n_global), 1))
    grids = [grid_g] * n_global + [grid_l] * (n_crops - n_global)
    starts = np.cumsum([0] + [batch * g**2 for g in grids]).tolist()  # crop v's rows in `student`
    loss = 0
    for i, c in enumerate(range(n_global)):
        maps = teacher[batch * grid_g**2 * c : batch * grid_g**2 * (c + 1)]
        maps = maps.reshape(batch, grid_g, grid_g, dim).permute(0, 3, 1, 2)
        aligned = roi_align(maps, torch.unbind(gc_boxes[:, c] / patch_size), k, aligned=True)  # (B·C, d, k, k)
        subloss = 0
        for v in (v for v in range(n_crops) if v != c):
            out = student[starts[v] : starts[v + 1]].reshape(batch, grids[v], grids[v], dim).permute(0, 3, 1, 2)
            aligned_out = roi_align(out, torch.unbind(all_boxes[:, v, c].unsqueeze(1) / patch_size), k, aligned=True)
            cells = aligned[v::n_crops]
            refs = references(i, cells)
            p = rank_distributions(aligned_out, refs, student_sorter)
            with torch.no_grad():
                q = rank_distributions(cells, refs, teacher_sorter)
            subloss += -torch.mean(torch.sum(q * torch.log(p), dim=1))
        loss += subloss / (n_crops - 1)
    return loss / n_global


# --- the trainer ---------------------------------------------------------------------------------------------------


def param_groups(model: NeCoNet, lr_backbone: float, lr_heads: float, weight_decay: float) -> list[dict]:
    """NeCo.configure_optimizers with exclude_norm_bias: [backbone decayed, backbone not decayed, head decayed,
    head not decayed]; biases and 1-D parameters are not decayed."""
    groups = []
    for prefix, lr in (("backbone.", lr_backbone), ("projection_head.", lr_heads)):
        decayed, not_decayed = [], []
        for name, p in model.named_parameters():
            if name.startswith(prefix) and p.requires_grad:
                (not_decayed if name.endswith(".bias") or p.ndim == 1 else decayed).append(p)
        groups += [{"params": decayed, "weight_decay": weight_decay, "lr": lr}]
        groups += [{"params": not_decayed, "weight_decay": 0.0, "lr": lr}]
    return groups


@dataclass
class Recipe:
    """A NeCo run. Defaults: experiments/configs/models/small/neco_dinov2r_xr.yml (the paper's NeCo on DINOv2R-XR
    ViT-S/14) but `steps_per_epoch` (theirs: COCO train2017 // 64); neco_224x224.yml's geometry is global_size 224."""

    arch: str = "vit_small"  # vit_small / vit_base (_patch14_dinov2)
    patch_size: int = 14
    vit_overrides: dict = field(default_factory=dict)  # e.g. depth / embed_dim / num_heads / img_size, small tests
    fused_attn: bool = True  # False: explicit attention, as vit_v2.py without xFormers
    drop_path_rate: float = 0.1  # the student's; the teacher has none
    hidden_dim: int = 2048  # projection_hidden_dim
    out_dim: int = 256  # projection_feat_dim
    head_layers: int = 3  # n_layers_projection_head
    global_size: int = 518  # size_crops
    local_size: int = 98
    local_crops_number: int = 4  # nmb_samples [2, 4]
    global_crops_scale: tuple = (0.25, 1.0)  # min_scale_crops / max_scale_crops
    local_crops_scale: tuple = (0.05, 0.25)
    min_intersection: float = 0.01  # min_intersection_crops
    jitter_strength: float = 1.0
    blur_strength: float = 1.0
    roi_size: int = 7  # roi_align_kernel_size: roi_size² cells and reference patches
    student_steepness: float = 100.0
    teacher_steepness: float = 100.0
    queue_length: int = 8192  # per global crop; 0: the references are the batch's own aligned patches, shuffled
    batch_size: int = 64
    epochs: int = 25
    steps_per_epoch: int = 1
    lr_backbone: float = 1e-5
    lr_heads: float = 1e-4
    final_lr: float = 0.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.5
    momentum_teacher: float = 0.9995
    momentum_teacher_end: float = 1.0
    seed: int = 0

    @classmethod
    def from_dict(cls, recipe: dict) -> Recipe:
        r = recipe_from_dict(cls, recipe, "NeCo")
        tokens = r.batch_size * (r.global_size // r.patch_size) ** 2
        if r.queue_length and tokens < min(10 * r.batch_size, r.queue_length):
            raise ValueError(
                f"the queue takes min(10 x batch, queue_length) = {min(10 * r.batch_size, r.queue_length)} teacher "
                f"tokens of a global crop per step, but a batch has {tokens}: use larger global crops or queue_length 0"
            )
        if r.queue_length and r.queue_length < r.batch_size * r.roi_size**2:
            raise ValueError(
                f"queue_length {r.queue_length} is below batch_size x roi_size² = {r.batch_size * r.roi_size**2}, "
                "the reference patches a step draws from it without repetition"
            )
        return r

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class Trainer(OwnRng):
    """Student, teacher, queue, optimiser and schedules of one NeCo run; `step(images)` trains on one batch.

    init: a DINOv2 backbone state dict (or its path) both backbones start from, as train_with_neco.py loads the
    official DINOv2(-reg) weights into `model.` and `teacher.`; `register_tokens` and keys containing "head" are
    dropped (the reg4 weights in the register-free architecture: DINOv2R-XR), any other difference is an error.
    The projection heads keep their random init, different for student and teacher (the reference builds each
    network with its own). None: everything random (seeded)."""

    def __init__(self, recipe: dict | Recipe, device: str | None = None, init: dict | str | None = None):
        r = self.recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with torch.random.fork_rng(devices=[]):  # the init draws from a seeded generator, not the caller's
            torch.manual_seed(r.seed)
            self._build(r, init)
            self.rng = {"torch": torch.get_rng_state()}  # drop path and the queue's draws, carried step to step
        if self.device.type == "cuda":
            self.rng["cuda"] = torch.Generator(self.device).manual_seed(r.seed).get_state()
        self.step_index = 0  # iterations done = the index of the next one in the schedules

    def _build(self, r: Recipe, init: dict | str | None) -> None:
        vit = dict(arch=r.arch, patch_size=r.patch_size, fused_attn=r.fused_attn, **r.vit_overrides)
        nets = []
        for drop_path in (0.0, r.drop_path_rate):  # teacher first, as NeCo.init_model
            backbone = build_vit(drop_path_rate=drop_path, **vit)
            nets.append(NeCoNet(backbone, projection_head(backbone.embed_dim, r.hidden_dim, r.out_dim, r.head_layers)))
        self.teacher, self.student = nets
        self.mask_token = torch.zeros(1, self.student.backbone.embed_dim)  # DINOv2's, unused in training
        if init is not None:
            self.load_init(init)
        self.student.to(self.device)
        self.teacher.to(self.device)
        for p in self.teacher.parameters():
            p.requires_grad = False
        n_global = 2
        self.sorters = [DiffSort(r.roi_size**2, s).to(self.device) for s in (r.student_steepness, r.teacher_steepness)]
        self.queue = torch.zeros(n_global, r.queue_length, r.out_dim, device=self.device) if r.queue_length else None
        self.queue_entries = 0
        groups = param_groups(self.student, r.lr_backbone, r.lr_heads, r.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, weight_decay=r.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, r.total_steps, r.final_lr)
        spe = r.steps_per_epoch
        self.wd_schedule = cosine_scheduler(r.weight_decay, r.weight_decay_end, r.epochs, spe)
        self.momentum_schedule = cosine_scheduler(r.momentum_teacher, r.momentum_teacher_end, r.epochs, spe)
        self.augment = NeCoCrops(
            r.global_size,
            r.local_size,
            r.local_crops_number,
            r.global_crops_scale,
            r.local_crops_scale,
            r.min_intersection,
            r.jitter_strength,
            r.blur_strength,
            n_global,
        )

    def backbone_shapes(self) -> dict:
        """Key -> shape of a DINOv2 backbone state dict of this architecture (timm's keys and mask_token)."""
        shapes = {k: tuple(v.shape) for k, v in self.student.backbone.state_dict().items()}
        return dict(shapes, mask_token=tuple(self.mask_token.shape))

    def load_init(self, init: dict | str) -> None:
        path = init if isinstance(init, str) else "the init state dict"
        state = read_state_dict(init) if isinstance(init, str) else dict(init)
        state = {k: v for k, v in state.items() if "head" not in k and k != "register_tokens"}
        what = f"DINOv2 {self.recipe.arch}/{self.recipe.patch_size} backbone"
        state = check_keys(state, self.backbone_shapes(), path, what)
        self.mask_token = state["mask_token"].detach().clone().float()
        for net in (self.student, self.teacher):
            net.backbone.load_state_dict(checkpoint_filter_fn(dict(state), net.backbone), strict=True)

    @property
    def epoch(self) -> int:
        return self.step_index // self.recipe.steps_per_epoch

    def crops(self, images: Sequence[np.ndarray], step: int | None = None):
        """The multi-crop batch of `images` (uint8 (H, W, 3) each) at `step` (default: the next): the crops, a list
        of (B, 3, size, size), and the intersection boxes gc (B, 2, C, 4) and all (B, C, 2, 4); image i's draws
        come from default_rng((seed, step, i))."""
        step = self.step_index if step is None else step
        crops, gc, other = [], [], []
        for i, im in enumerate(images):
            views, boxes = self.augment(im, np.random.default_rng((self.recipe.seed, step, i)))
            crops.append(views)
            g, o = self.augment.pair_boxes(boxes)
            gc.append(g)
            other.append(o)
        return [torch.stack([c[k] for c in crops]) for k in range(len(crops[0]))], torch.stack(gc), torch.stack(other)

    def step(self, images: Sequence[np.ndarray]) -> float:
        """One iteration on a batch of uint8 images ((B, H, W, 3), or B arrays (H, W, 3)); returns the loss."""
        if len(images) != self.recipe.batch_size:
            raise ValueError(f"batch of {len(images)} images; the recipe's batch_size is {self.recipe.batch_size}")
        return self.train_step(*self.crops(images))

    def train_step(self, crops: Sequence[torch.Tensor], gc_boxes: torch.Tensor, all_boxes: torch.Tensor) -> float:
        """One iteration of NeCo's training_step + optimizer_step on a multi-crop batch (2 global crops first)."""
        with self._own_rng():
            return self._train_step(crops, gc_boxes, all_boxes)

    def _updated_queue(self, teacher: torch.Tensor, batch: int) -> tuple[torch.Tensor | None, int]:
        """NeCo.update_queue, as a new queue: per global crop, min(batch·10, length) of its teacher tokens drawn by
        torch.randperm go to the front, the oldest drop off the end. The count of filled entries grows by that
        number per global crop, i.e. twice a step, as the reference's `entries_in_queue` does."""
        if self.queue is None:
            return None, 0
        per_crop, length = len(teacher) // len(self.queue), self.queue.shape[1]
        count, entries, rows = min(batch * 10, length), self.queue_entries, []
        for i, old in enumerate(self.queue):
            entries = min(entries + count, length)
            new = teacher[per_crop * i : per_crop * (i + 1)][torch.randperm(per_crop)[:count]]
            rows.append(torch.cat((new, old[: length - count])))
        return torch.stack(rows), entries

    def _train_step(self, crops, gc_boxes, all_boxes) -> float:
        it, r = self.step_index, self.recipe
        if it >= r.total_steps:
            raise RuntimeError(f"the schedules end after {r.total_steps} steps ({r.epochs} epochs)")
        for i, group in enumerate(self.optimizer.param_groups):
            if i in (0, 2):  # the decayed groups of backbone and head
                group["weight_decay"] = float(self.wd_schedule[it])
        crops = [c.to(self.device, non_blocking=True) for c in crops]
        gc_boxes, all_boxes = gc_boxes.to(self.device), all_boxes.to(self.device)
        batch = len(crops[0])
        with torch.no_grad():
            teacher = self.teacher(crops[:2])
        student = self.student(crops)
        queue, entries = self._updated_queue(teacher, batch)

        def references(i: int, cells: torch.Tensor) -> torch.Tensor:
            b, d, k, _ = cells.shape
            if queue is not None and entries > 0:  # a random draw from the queue of global crop i
                flat = queue[i][
                    torch.remainder(torch.randperm(queue.shape[1], device=self.device)[: b * k * k], entries)
                ]
            else:  # the batch's own aligned teacher cells, shuffled
                flat = cells.permute(0, 2, 3, 1).flatten(0, 2)
                flat = flat[torch.randperm(len(flat), device=self.device)]
            return flat.reshape(b, k, k, d).permute(0, 3, 1, 2)

        sorters = dict(student_sorter=self.sorters[0], teacher_sorter=self.sorters[1])
        loss = knn_loss(teacher, student, gc_boxes, all_boxes, batch, 2, r.patch_size, references, **sorters)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(
                f"NeCo loss is {value} at step {it} (epoch {self.epoch}): training diverged or a soft-sort weight "
                "underflowed to 0 (log 0); nothing was updated. Lower the lrs or check the inputs and init weights."
            )
        self.queue, self.queue_entries = queue, entries
        with torch.no_grad():  # teacher EMA, in training_step: before this step's update of the student
            m = float(self.momentum_schedule[it])
            for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
                pt.mul_(m).add_((1 - m) * ps.detach())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step_index += 1
        return value

    # --- checkpoints ---

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue identically (torch.save-able, loads with weights_only)."""
        return {
            "recipe": asdict(self.recipe),
            "step": self.step_index,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "mask_token": self.mask_token.clone(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "queue": None if self.queue is None else self.queue.clone(),
            "queue_entries": self.queue_entries,
            "rng": {k: v.clone() for k, v in self.rng.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; the recipe must be the one this trainer was built with."""
        if Recipe.from_dict(state["recipe"]) != self.recipe:
            raise ValueError("the checkpoint was written by another recipe")
        if ("cuda" in state["rng"]) != ("cuda" in self.rng):
            raise ValueError("the checkpoint's RNG state is for another device type; a resumed run would differ")
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.mask_token = state["mask_token"].clone()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.queue = None if state["queue"] is None else state["queue"].to(self.device)
        self.queue_entries = int(state["queue_entries"])
        self.step_index = int(state["step"])
        self.rng = {k: v.clone() for k, v in state["rng"].items()}

    def backbone_state(self, which: str = "student") -> dict:
        """A NeCo backbone state dict, what images/neco's adapter loads ($BENCH_WEIGHTS): the DINOv2 keys
        (mask_token included) plus `projection_head.*`, of the student (the network NeCo's evaluations take) or
        the teacher."""
        net = {"student": self.student, "teacher": self.teacher}[which]
        state = {k: v.detach().cpu().clone() for k, v in net.backbone.state_dict().items()}
        state["mask_token"] = self.mask_token.detach().cpu().clone()
        state.update(
            {f"projection_head.{k}": v.detach().cpu().clone() for k, v in net.projection_head.state_dict().items()}
        )
        return state
