"""The interface every ClevrTex model implements (images/_objseg: the house of the object-centric methods).

A model is a torch module built from its recipe's params (`build(params)` in the model's own module). Its forward
takes images (B, 3, H, W) float in [0, 1] (no mean/std normalisation, as every ClevrTex model), a torch.Generator
for every random draw it makes (slot initialisation noise, posterior samples: the method's outputs are then
reproducible from the seed), and the training step (None at evaluation: a model with annealed priors, GECO or
curricula reads its schedules from it). It returns an ObjectOutput.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class ObjectOutput(NamedTuple):
    """`loss`: the training objective, a scalar (the reference's, e.g. per-image summed MSE averaged over the batch);
    `masks`: (B, K, H, W) soft masks; `canvas`: (B, 3, H, W) the reconstruction; `terms`: floats worth logging."""

    loss: torch.Tensor
    masks: torch.Tensor
    canvas: torch.Tensor
    terms: dict[str, float]


class ObjectModel(nn.Module):
    """Base of the ClevrTex models. `masks_have_background`: False where the masks cover only the objects (GNM,
    SPACE, SPAIR: the evaluator prepends 1 - sum as the background). `image_size`: the side of the square images the
    model takes (the trainer and the adapter resize the harness's 128x128 crops to it); `params`: what it was built
    from (build_model), saved with its weights."""

    masks_have_background: bool = True
    image_size: int
    params: dict

    def forward(self, images: torch.Tensor, generator: torch.Generator, step: int | None = None) -> ObjectOutput:
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict]:
        """The optimiser's parameter groups at base learning rate `lr` (one group unless the reference has more); a
        group may name its own `optimizer` (adam, rmsprop) where the reference trains it with another."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def lr_factors(self, step: int) -> tuple[float, ...]:
        """The learning-rate factor of each param group at `step`, for a model whose reference schedules its groups
        apart (DTI-Sprites: recipe `schedule: model`)."""
        raise NotImplementedError(f"{type(self).__name__} has no schedule of its own")

    def start_training(self, images: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
        """Called by the trainer before every run (fresh or resumed, before a checkpoint is loaded) with up to 100
        training images (N, 3, S, S) in [0, 1] and the optimiser (None where the groups use several): data-dependent
        initialisation (DTI-Sprites' backgrounds) and optimiser hooks. Nothing by default."""


def build_model(cls: type[ObjectModel], defaults: dict, params: dict) -> ObjectModel:
    """`cls` from a recipe's architecture/loss params, missing keys taking `defaults` (the reference's); unknown keys
    raise ValueError naming them. The model keeps `params` (as given) to save with its weights."""
    if unknown := sorted(set(params) - set(defaults)):
        raise ValueError(f"unknown {cls.__name__} params: {', '.join(unknown)} (known: {', '.join(sorted(defaults))})")
    model = cls(**{**defaults, **params})
    model.params = dict(params)
    return model
