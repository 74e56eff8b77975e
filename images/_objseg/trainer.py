"""The ClevrTex models' training loop (images/_objseg), as the reference's Lightning experiments run it
(karazijal/clevrtex fe982ab, experiments/framework/base_experiment.py `configure_optimizers` and the trainer's
`gradient_clip_val`): one optimiser over the model's param_groups, a per-step LambdaLR schedule, gradient-norm clipping,
batches drawn from the training split shuffled once per epoch.

Recipe params (method.yaml `recipes: {name: {params: ...}}`):
- `model`: the model's build params (its module's DEFAULTS fill the rest; `image_size` is the training resolution);
- `optimizer`: adam | rmsprop (the reference's torch defaults otherwise), for every param group that names none
  (SPACE's groups name their own: RMSprop foreground, Adam background, as its two optimisers); `lr`: the base
  learning rate;
- `schedule`: const | `decay(W,D,R)` (linear warm-up over W steps, times R^(step/D): the reference's
  `decay(10000,100000,0.5)`) | `warm(W)` (warm-up only) | `model` (the model's own per-group factors, lr_factors:
  DTI-Sprites); `grad_clip`: max gradient 2-norm, or null;
- `batch_size`; `max_images`: the most training images kept (null: all the fit stage sends).

Deliberate differences: the data is the fit stage's images held in memory (uint8) rather than a DataLoader over files;
each epoch's order is a permutation seeded by (seed, epoch), so step s needs no state to resume; SPAIR's `plateau`
schedule (on validation loss) is not offered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from object_model import ObjectModel, ObjectOutput


@dataclass(frozen=True)
class Recipe:
    model: dict
    optimizer: str = "adam"
    lr: float = 1e-4
    schedule: str = "const"
    grad_clip: float | None = None
    batch_size: int = 32
    max_images: int | None = None

    @classmethod
    def of(cls, params: dict) -> Recipe:
        """The recipe of method.yaml params; unknown keys and bad values raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(params) - known):
            raise ValueError(f"unknown recipe params: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        recipe = cls(**{"model": {}, **params})
        if recipe.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {recipe.optimizer!r}: one of {', '.join(OPTIMIZERS)}")
        if recipe.schedule != "model":
            lr_lambda(recipe.schedule)  # raises on a bad schedule
        return recipe


OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}


def lr_lambda(schedule: str) -> Callable[[int], float]:
    """The learning-rate factor at each step, as the reference's LambdaLR (`decay(W,D[,R])`, `warm(W)`) or 1."""
    if schedule == "const":
        return lambda step: 1.0
    m = re.fullmatch(r"(decay|warm)\((\d+)(?:,\s*(\d+)(?:,\s*([\d.eE+-]+))?)?\)", schedule.replace(" ", ""))
    if not m or (m[1] == "decay") != (m[3] is not None) or (m[1] == "warm" and m[4] is not None):
        raise ValueError(f"schedule {schedule!r}: const, decay(WARMUP,DECAY_STEPS[,RATE]) or warm(WARMUP)")
    warmup = int(m[2])
    decay_steps, rate = (int(m[3]), float(m[4] or 0.5)) if m[1] == "decay" else (None, 1.0)

    def factor(step: int) -> float:
        warm = step / warmup if step < warmup else 1.0
        return warm * (rate ** (step / decay_steps) if decay_steps else 1.0)

    return factor


def to_float(images: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [0, 1] (no mean/std: every ClevrTex model takes [0, 1]);
    resized bilinearly with antialiasing where the model trains or runs at another size than the harness's 128."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class Trainer:
    """Trains `build(recipe.model)` on uint8 images (N, 128, 128, 3). Every draw is seeded by `seed`: the batches'
    order (per epoch), and the model's own draws (one generator, advanced by every training forward)."""

    def __init__(self, build: Callable[[dict], ObjectModel], recipe: Recipe, images: np.ndarray, seed: int,
                 device: torch.device):  # fmt: skip
        if len(images) == 0:
            raise ValueError("no training images: the fit stage sent none")
        self.recipe, self.seed, self.device = recipe, seed, device
        torch.manual_seed(seed)  # the model's initialisation
        self.model = build(dict(recipe.model)).to(device)
        self.images = images[: recipe.max_images] if recipe.max_images else images
        # one optimiser per kind the param groups ask for (a group's "optimizer", else the recipe's: SPACE's
        # RMSprop foreground and Adam background), each with the schedule of its groups
        kinds: dict[str, list[tuple[int, dict]]] = {}
        for i, group in enumerate(self.model.param_groups(recipe.lr)):
            kinds.setdefault(group.pop("optimizer", recipe.optimizer), []).append((i, group))
        self.optimizers = [OPTIMIZERS[kind]([g for _, g in groups]) for kind, groups in kinds.items()]
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(opt, [self._factor(i) for i, _ in groups])
            for opt, groups in zip(self.optimizers, kinds.values())
        ]
        only = self.optimizers[0] if len(self.optimizers) == 1 else None
        self.model.start_training(to_float(self.images[:100], self.model.image_size, device), only)
        self.generator = torch.Generator(device).manual_seed(seed)
        self.step_index = 0

    def _factor(self, group: int) -> Callable[[int], float]:
        """The lr factor of param group `group` (in param_groups order) at each step."""
        if self.recipe.schedule != "model":
            return lr_lambda(self.recipe.schedule)
        return lambda step: self.model.lr_factors(step)[group]

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def batch_indices(self, step: int) -> np.ndarray:
        """The images of `step`: positions step*B .. step*B+B-1 of the stream of per-epoch permutations."""
        n, b = len(self.images), self.recipe.batch_size
        positions = np.arange(step * b, step * b + b)
        epochs = positions // n
        perms = {e: np.random.default_rng([self.seed, 0x0B5E6, int(e)]).permutation(n) for e in np.unique(epochs)}
        return np.array([perms[e][p % n] for e, p in zip(epochs, positions)])

    def step(self) -> ObjectOutput:
        """One optimisation step; returns the model's output (its loss and terms)."""
        self.model.train()
        x = to_float(self.images[self.batch_indices(self.step_index)], self.image_size, self.device)
        out = self.model(x, self.generator, self.step_index)
        if not math.isfinite(loss := float(out.loss.detach())):
            raise FloatingPointError(f"loss {loss} at step {self.step_index}")
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        for opt, scheduler in zip(self.optimizers, self.schedulers):
            opt.step()
            scheduler.step()
        self.step_index += 1
        return out

    def state_dict(self) -> dict:
        """Everything a resumed run needs: model, optimiser, schedule, the step and the generator's state."""
        return {
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "schedulers": [scheduler.state_dict() for scheduler in self.schedulers],
            "step": self.step_index,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
        self.step_index = int(state["step"])
        self.generator.set_state(state["generator"])
