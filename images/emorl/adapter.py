"""emorl: EfficientMORL (Emami et al. ICML 2021) as the ClevrTex benchmark trains it (emorl.py; karazijal/clevrtex
fe982ab, experiments/effmorl.py), on the object-centric house images/_objseg: trained in the fit stage on the task's
training split (fit recipe `paper` = the reference's defaults, `tiny` = a few CPU minutes) or loaded from
$BENCH_WEIGHTS; masks are the mixture masks after the last refinement pass, the canvas the mixture mean."""

from __future__ import annotations

import emorl
from objseg_method import ObjsegMethod

from benchsdk import serve


class EfficientMORLMethod(ObjsegMethod):
    name, version = "emorl", "1.0"
    model_module, model_class = emorl, emorl.EfficientMORL


if __name__ == "__main__":
    serve(EfficientMORLMethod())
