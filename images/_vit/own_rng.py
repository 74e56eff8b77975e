"""The trainers' own random state (images/procedural_dino/dino_train.py, images/neco/neco_train.py): torch's
generators set to a run's state for a block and saved after it, the caller's restored, so two trainers in one
process do not interfere and a checkpoint can carry the state a resumed run continues from."""

from __future__ import annotations

import contextlib

import torch


class OwnRng:
    """Mixin for a trainer with `device` and `rng` ({"torch": state, "cuda": state on CUDA})."""

    @contextlib.contextmanager
    def _own_rng(self):
        """torch's generators set to this run's state for the block and saved after it; the caller's are restored
        (timm's drop path draws from the global generators)."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.set_rng_state(self.rng["torch"])
            if cuda:
                torch.cuda.set_rng_state(self.rng["cuda"], self.device)
            yield
            self.rng = {"torch": torch.get_rng_state()}
            if cuda:
                self.rng["cuda"] = torch.cuda.get_rng_state(self.device)
