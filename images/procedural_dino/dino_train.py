"""DINO self-distillation in one process: the training loop of facebookresearch/dino 7c446df `main_dino.py` (as run
unchanged by adriarm/separating_knowledge b126018 `dino/main_dino.py`), our own code.

What it reproduces, and where the reference has it:
- `DINOHead` (vision_transformer.py L257-291): Linear(D, 2048)-GELU-Linear(2048, 2048)-GELU-Linear(2048, 256), L2
  normalisation, then a weight-normed Linear(256, out_dim) without bias whose `weight_g` is filled with 1 and frozen
  when `norm_last_layer`. Same keys as the reference (`mlp.{0,2,4}.*`, `last_layer.weight_{g,v}`), so the teacher's
  state dict is the official checkpoint's `teacher` entry.
- `MultiCropWrapper` (utils.py L594-630): one backbone pass per run of consecutive crops of equal width, the CLS
  tokens concatenated, one head pass.
- The backbone is a timm ViT (`vit_<size>_patch<p>_224`, the model images/_vit builds, whose keys are DINO's) run
  the way DINO's `VisionTransformer.forward` runs (L196-214): CLS + patch tokens + the position embedding
  interpolated as `interpolate_pos_encoding` (images/_vit/vit_backbone.py's `interpolate_pos_embed`: bicubic by
  scale factor with the +0.1 offset, no antialias), blocks, final norm, CLS.
- `DINOLoss` (main_dino.py L363-416): teacher softmax of (t - centre) / teacher_temp[epoch], cross-entropy with the
  student's log-softmax(s / 0.1) over every (teacher global crop iq, student crop v != iq) pair, averaged; the centre
  is an EMA (0.9) of the batch mean of the teacher outputs.
- `cosine_scheduler`, `get_params_groups` (biases and 1-D parameters not decayed), `clip_gradients` (per parameter),
  `cancel_gradients_last_layer` (utils.py L132-198, L632-643); AdamW; the teacher EMA with the cosine momentum
  (main_dino.py `train_one_epoch` L301-360, in its order).
- `MultiCropAugmentation` = `DataAugmentationDINO` (main_dino.py L419-464) on PIL with torchvision's functional ops.

Deliberate differences:
- One process: no `dist.all_reduce` of the centre (world size 1 gives the same numbers) and no DDP. `batch_size` is
  the whole batch of a step, so the lr is scaled by batch_size / 256 as the reference scales by the global batch.
- Randomness: each image's crops come from `numpy.random.default_rng((seed, step, index))` (the reference draws
  from torch's and Python's global generators in its data-loader workers), so crops are reproducible, independent of
  workers and need no state to resume. The init and drop-path use torch's generators set to the trainer's own state
  (seeded by `seed`, carried across steps and in checkpoints), so two trainers in a process do not interfere.
- A non-finite loss raises FloatingPointError before anything is updated (the reference prints and sys.exit(1)s
  after updating the centre).
- timm's attention is `scaled_dot_product_attention` unless `fused_attn` is False (then explicit q·kᵀ, softmax, as
  DINO's); timm initialises like DINO (trunc-normal 0.02 linears, zero biases) but for the CLS token, which we
  re-draw trunc-normal 0.02 as DINO does. The weight-normed layer is our module around torch._weight_norm, not
  torch.nn.utils.weight_norm (deprecated); same keys, same arithmetic.
scripts/compare_dino_train.py runs the reference's `train_one_epoch` against this on identical weights and crops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torch import nn
from torchvision.transforms import InterpolationMode
from train_common import OwnRng, cosine_scheduler, random_resized_crop_box, recipe_from_dict
from vit_backbone import MEAN, STD, interpolate_pos_embed

# --- schedules, parameter groups, gradient handling (utils.py) -----------------------------------------------------


def get_params_groups(model: nn.Module) -> list[dict]:
    """[decayed, not decayed]: biases and 1-D parameters (norms) are not regularised; frozen ones are left out."""
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (not_regularized if name.endswith(".bias") or param.ndim == 1 else regularized).append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """Scale each parameter's gradient to L2 norm <= clip, one parameter at a time; returns the norms before."""
    norms = []
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.norm(2)
            norms.append(norm.item())
            coef = clip / (norm + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)
    return norms


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """During the first `freeze_last_layer` epochs the head's last layer gets no gradient (None: AdamW skips it, so
    it is not decayed either)."""
    if epoch < freeze_last_layer:
        for name, p in model.named_parameters():
            if "last_layer" in name:
                p.grad = None


# --- networks ------------------------------------------------------------------------------------------------------


class WeightNormLinear(nn.Module):
    """nn.utils.weight_norm(nn.Linear(in_dim, out_dim, bias=False)) with weight_g filled with 1: weight = g·v/‖v‖
    row by row, through torch._weight_norm, the op both of torch's weight-norm wrappers call (written out as
    v * (g / v.norm(dim=1)) it differs from it by 9e-8 in the output); v keeps nn.Linear's default initialisation."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        v = torch.empty(out_dim, in_dim)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))
        self.weight_v = nn.Parameter(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, torch._weight_norm(self.weight_v, self.weight_g, 0))


class DINOHead(nn.Module):
    """The DINO projection head (no batch norm: use_bn_in_head is False in every run here)."""

    def __init__(self, in_dim, out_dim, norm_last_layer=True, hidden_dim=2048, bottleneck_dim=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer.weight_g.requires_grad = not norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


def build_vit(arch: str, patch_size: int, drop_path_rate: float, fused_attn: bool, **overrides) -> nn.Module:
    """timm's vit_<size>_patch<p>_224 (arch 'vit_tiny' / 'vit_small' / 'vit_base'), no classifier; `overrides`
    (depth, embed_dim, num_heads, ...) change the architecture, for small tests."""
    vit = timm.create_model(
        f"{arch}_patch{patch_size}_224", pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, **overrides
    )
    nn.init.trunc_normal_(vit.cls_token, std=0.02)  # DINO's init (timm draws N(0, 1e-6))
    for block in vit.blocks:
        block.attn.fused_attn = fused_attn
    return vit


def vit_cls(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DINO's VisionTransformer.forward on a timm ViT: the CLS token after the final norm, for any input size that is a
    multiple of the patch, with DINO's position-embedding interpolation."""
    h, w = x.shape[-2:]
    tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat((vit.cls_token.expand(len(x), -1, -1), tokens), dim=1)
    patch = vit.patch_embed.patch_size[0]
    tokens = vit.pos_drop(tokens + interpolate_pos_embed(vit.pos_embed, h, w, patch, 1, 0.1, False))
    return vit.norm(vit.blocks(tokens))[:, 0]


class MultiCropWrapper(nn.Module):
    """Backbone (on each run of same-width crops) then head on all CLS tokens; output rows are crop-major."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        widths = torch.tensor([c.shape[-1] for c in crops])
        ends = torch.cumsum(torch.unique_consecutive(widths, return_counts=True)[1], 0).tolist()
        starts = [0] + ends[:-1]
        features = [vit_cls(self.backbone, torch.cat(list(crops[s:e]))) for s, e in zip(starts, ends)]
        return self.head(torch.cat(features))


# --- loss ----------------------------------------------------------------------------------------------------------


class DINOLoss(nn.Module):
    """Cross-entropy of the centred, sharpened teacher on the 2 global crops against the student on every other crop.
    `forward` computes the loss; `update_center` (called by the trainer once the loss is finite) moves the centre."""

    def __init__(self, out_dim, ncrops, teacher_temps: np.ndarray, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.ncrops, self.student_temp, self.center_momentum = ncrops, student_temp, center_momentum
        self.teacher_temps = teacher_temps  # one per epoch
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        temp = float(self.teacher_temps[epoch])
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(2)
        total, n_terms = 0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v != iq:  # not the view the teacher saw
                    total += torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
                    n_terms += 1
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


# --- augmentation --------------------------------------------------------------------------------------------------


class MultiCropAugmentation:
    """DataAugmentationDINO: 2 global crops (scale `global_scale`, blur p=1.0; the second: blur p=0.1, solarise
    p=0.2) and `n_local` local crops (scale `local_scale`, blur p=0.5), each: bicubic RandomResizedCrop, flip p=0.5,
    ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8 (the four in a random order), grayscale p=0.2, Gaussian blur radius
    U(0.1, 2), then /255 and ImageNet mean/std. `rng` draws every choice."""

    def __init__(self, global_size=224, local_size=96, n_local=8, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)):
        self.global_size, self.local_size, self.n_local = global_size, local_size, n_local
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> list[torch.Tensor]:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        img = Image.fromarray(image)
        crops = [self.crop(img, rng, self.global_size, self.global_scale, 1.0, 0.0)]
        crops.append(self.crop(img, rng, self.global_size, self.global_scale, 0.1, 0.2))
        crops += [self.crop(img, rng, self.local_size, self.local_scale, 0.5, 0.0) for _ in range(self.n_local)]
        return crops

    @staticmethod
    def crop(img: Image.Image, rng, size: int, scale, p_blur: float, p_solarize: float) -> torch.Tensor:
        top, left, h, w = random_resized_crop_box(img.height, img.width, scale, rng)
        img = TF.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BICUBIC)
        if rng.random() < 0.5:
            img = TF.hflip(img)
        if rng.random() < 0.8:
            order = rng.permutation(4)
            factors = (rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1))
            ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
            for i in order:
                img = ops[i](img, float(factors[i]))
        if rng.random() < 0.2:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if rng.random() <= p_blur:
            img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
        if rng.random() < p_solarize:
            img = ImageOps.solarize(img)
        return (TF.to_tensor(img) - MEAN[0]) / STD[0]


# --- the trainer ---------------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """A DINO run. Defaults are main_dino.py's, as separating_knowledge's launcher runs them (METHODS.md §4.2), but
    `batch_size` (the whole batch of a step; theirs: 64 x 7 GPUs = 448), `fp16` (theirs: on) and `steps_per_epoch`
    (their dataset size // global batch)."""

    arch: str = "vit_small"
    patch_size: int = 16
    vit_overrides: dict = field(default_factory=dict)  # e.g. depth / embed_dim / num_heads for a small test model
    fused_attn: bool = True  # False: explicit attention, as DINO's
    drop_path_rate: float = 0.1
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    global_size: int = 224
    local_size: int = 96
    local_crops_number: int = 8
    global_crops_scale: tuple = (0.4, 1.0)
    local_crops_scale: tuple = (0.05, 0.4)
    batch_size: int = 64
    epochs: int = 100
    steps_per_epoch: int = 1
    lr: float = 5e-4  # at batch 256
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    clip_grad: float = 3.0
    freeze_last_layer: int = 1
    fp16: bool = False
    seed: int = 0

    @classmethod
    def from_dict(cls, recipe: dict) -> Recipe:
        return recipe_from_dict(cls, recipe, "DINO")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class Trainer(OwnRng):
    """Student, teacher, loss, optimiser and schedules of one DINO run; `step(images)` trains on one batch."""

    def __init__(self, recipe: dict | Recipe, device: str | None = None):
        r = self.recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if r.fp16 and self.device.type != "cuda":
            raise ValueError("fp16 (autocast + GradScaler, as main_dino.py) needs a CUDA device")
        with torch.random.fork_rng(devices=[]):  # the init draws from a seeded generator, not the caller's
            torch.manual_seed(r.seed)
            self._build(r)
            self.rng = {"torch": torch.get_rng_state()}  # drop-path's generator, carried from step to step
        if self.device.type == "cuda":
            self.rng["cuda"] = torch.Generator(self.device).manual_seed(r.seed).get_state()
        self.step_index = 0  # iterations done = the index of the next one in the schedules

    def _build(self, r: Recipe) -> None:
        vit = dict(arch=r.arch, patch_size=r.patch_size, fused_attn=r.fused_attn, **r.vit_overrides)
        student, teacher = build_vit(drop_path_rate=r.drop_path_rate, **vit), build_vit(drop_path_rate=0.0, **vit)
        dim = student.embed_dim
        head = dict(hidden_dim=r.hidden_dim, bottleneck_dim=r.bottleneck_dim)
        self.student = MultiCropWrapper(student, DINOHead(dim, r.out_dim, r.norm_last_layer, **head))
        self.teacher = MultiCropWrapper(teacher, DINOHead(dim, r.out_dim, **head))
        self.student.to(self.device)
        self.teacher.to(self.device)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        temps = np.concatenate(
            (
                np.linspace(r.warmup_teacher_temp, r.teacher_temp, r.warmup_teacher_temp_epochs),
                np.ones(r.epochs - r.warmup_teacher_temp_epochs) * r.teacher_temp,
            )
        )
        ncrops = 2 + r.local_crops_number
        self.loss = DINOLoss(r.out_dim, ncrops, temps, r.student_temp, r.center_momentum).to(self.device)
        self.optimizer = torch.optim.AdamW(get_params_groups(self.student))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=r.fp16)
        spe = r.steps_per_epoch
        self.lr_schedule = cosine_scheduler(r.lr * r.batch_size / 256, r.min_lr, r.epochs, spe, r.warmup_epochs)
        self.wd_schedule = cosine_scheduler(r.weight_decay, r.weight_decay_end, r.epochs, spe)
        self.momentum_schedule = cosine_scheduler(r.momentum_teacher, 1, r.epochs, spe)
        self.augment = MultiCropAugmentation(
            r.global_size, r.local_size, r.local_crops_number, r.global_crops_scale, r.local_crops_scale
        )

    @property
    def epoch(self) -> int:
        return self.step_index // self.recipe.steps_per_epoch

    def crops(self, images: Sequence[np.ndarray], step: int | None = None) -> list[torch.Tensor]:
        """The multi-crop batch of `images` (uint8 (H, W, 3) each) at `step` (default: the next): a list over crops
        of (B, 3, size, size), image i's crops drawn from default_rng((seed, step, i))."""
        step = self.step_index if step is None else step
        per_image = [
            self.augment(im, np.random.default_rng((self.recipe.seed, step, i))) for i, im in enumerate(images)
        ]
        return [torch.stack([c[k] for c in per_image]) for k in range(len(per_image[0]))]

    def step(self, images: Sequence[np.ndarray]) -> float:
        """One iteration on a batch of uint8 images ((B, H, W, 3), or B arrays (H, W, 3)); returns the loss."""
        if len(images) != self.recipe.batch_size:
            raise ValueError(f"batch of {len(images)} images; the recipe's batch_size is {self.recipe.batch_size}")
        return self.train_step(self.crops(images))

    def train_step(self, crops: Sequence[torch.Tensor]) -> float:
        """One iteration of train_one_epoch on a multi-crop batch (2 global crops first)."""
        with self._own_rng():
            return self._train_step(crops)

    def _train_step(self, crops: Sequence[torch.Tensor]) -> float:
        it, r = self.step_index, self.recipe
        if it >= r.total_steps:
            raise RuntimeError(f"the schedules end after {r.total_steps} steps ({r.epochs} epochs)")
        epoch = it // r.steps_per_epoch
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr_schedule[it])  # the same double; keeps the state plain
            if i == 0:  # only the first group is regularised
                group["weight_decay"] = float(self.wd_schedule[it])
        crops = [c.to(self.device, non_blocking=True) for c in crops]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=r.fp16):
            with torch.no_grad():
                teacher_output = self.teacher(crops[:2])
            student_output = self.student(crops)
            loss = self.loss(student_output, teacher_output, epoch)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(
                f"DINO loss is {value} at step {it} (epoch {epoch}): training diverged (main_dino.py stops here "
                "too); nothing was updated. Lower lr, raise warmup_epochs or check the inputs."
            )
        self.loss.update_center(teacher_output)
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        if r.clip_grad:
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.student, r.clip_grad)
        cancel_gradients_last_layer(epoch, self.student, r.freeze_last_layer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():  # teacher EMA
            m = float(self.momentum_schedule[it])
            for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
                pt.mul_(m).add_((1 - m) * ps.detach())
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
            "optimizer": self.optimizer.state_dict(),
            "dino_loss": self.loss.state_dict(),
            "fp16_scaler": self.scaler.state_dict(),
            "rng": {k: v.clone() for k, v in self.rng.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; the recipe must be the one this trainer was built with."""
        if Recipe.from_dict(state["recipe"]) != self.recipe:
            raise ValueError("the checkpoint was written by another recipe")
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss.load_state_dict(state["dino_loss"])
        self.scaler.load_state_dict(state["fp16_scaler"])
        self.step_index = int(state["step"])
        if ("cuda" in state["rng"]) != ("cuda" in self.rng):
            raise ValueError("the checkpoint's RNG state is for another device type; a resumed run would differ")
        self.rng = {k: v.clone() for k, v in state["rng"].items()}

    def teacher_backbone_state(self) -> dict:
        """The teacher in the layout of main_dino.py's checkpoint: {'teacher': {backbone.*, head.*}, 'epoch': epochs
        done}, which images/dino's loader (images/_vit/dino_vit.py) reads: `teacher`, `backbone.` stripped, `head.*`
        left out."""
        teacher = {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}
        return {"teacher": teacher, "epoch": self.epoch, "step": self.step_index}
