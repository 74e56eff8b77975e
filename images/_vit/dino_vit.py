"""The DINO family (facebookresearch/dino 7c446df) on timm: its architectures, official files and checkpoint loading.

Not a method: images/dino/adapter.py (`Dino`) and images/fungi/adapter.py (`Fungi`, which runs on DINO ViT-S/16)
subclass `DinoFamily`; both method.yaml files include this folder. What the official code does and where is in
images/dino/adapter.py's docstring.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from vit_backbone import Arch as ViTArch
from vit_backbone import ViTBackbone, read_state_dict

URL = "https://dl.fbaipublicfiles.com/dino"


@dataclass(frozen=True)
class Arch(ViTArch):
    base: str  # the official file's name without .pth

    @property
    def file(self) -> str:
        return f"{self.base}.pth"

    @property
    def url(self) -> str:
        return f"{URL}/{self.base}/{self.file}"


VARIANTS = {
    "vits16": Arch("vit_small_patch16_224", 384, "dino_deitsmall16_pretrain"),
    "vitb16": Arch("vit_base_patch16_224", 768, "dino_vitbase16_pretrain"),
}
DEFAULT = "vits16"
CHECKPOINT_KEY = "teacher"  # utils.load_pretrained_weights' default checkpoint_key in the evaluations


class DinoFamily(ViTBackbone):
    """DINO ViT-S/16 and ViT-B/16 on timm (images/dino/adapter.py's docstring says what and why); subclassed by
    images/dino (`Dino`) and images/fungi (`Fungi`, whose backbone this is)."""

    name, version = "dino", "1.0"
    VARIANTS, DEFAULT = VARIANTS, DEFAULT
    patch_size = 16

    def load(self, model, path: str) -> None:
        """The official backbone state dict, or a full checkpoint's teacher, at `path` into the timm model, every key
        checked (see images/dino/adapter.py's docstring)."""
        state, extra = read_state_dict(path, allowed=(argparse.Namespace,)), ()  # a full checkpoint's `args`
        if CHECKPOINT_KEY in state:
            state, extra = state[CHECKPOINT_KEY], ("head.",)
            state = {k.replace("module.", "").replace("backbone.", ""): v for k, v in state.items()}
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # DINO's keys are timm's
        self.load_checked(model, state, path, shapes, extra)
