"""dti_sprites: DTI-Sprites (Monnier et al. ICCV 2021) as the ClevrTex benchmark trains it (dti_sprites.py), on the
object-centric house images/_objseg: trained in the fit stage on the task's training split (fit recipe `paper` = the
reference's defaults, `tiny` = a few CPU minutes) or loaded from $BENCH_WEIGHTS."""

from __future__ import annotations

import dti_sprites
from objseg_method import ObjsegMethod

from benchsdk import serve


class DTISpritesMethod(ObjsegMethod):
    name, version = "dti_sprites", "1.0"
    model_module, model_class = dti_sprites, dti_sprites.DTISprites


if __name__ == "__main__":
    serve(DTISpritesMethod())
