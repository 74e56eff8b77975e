"""space: SPACE (Lin et al. ICLR 2020) as the ClevrTex benchmark trains it (space.py), on the object-centric house
images/_objseg: trained in the fit stage on the task's training split (fit recipe `paper` = the reference's
defaults, `tiny` = a few CPU minutes) or loaded from $BENCH_WEIGHTS."""

from __future__ import annotations

import space
from objseg_method import ObjsegMethod

from benchsdk import serve


class SPACEMethod(ObjsegMethod):
    name, version = "space", "1.0"
    model_module, model_class = space, space.SPACE


if __name__ == "__main__":
    serve(SPACEMethod())
