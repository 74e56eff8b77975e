"""monet: MONet (Burgess et al. 2019) as the ClevrTex benchmark trains it (monet.py; karazijal/clevrtex fe982ab,
experiments/monet.py), on the object-centric house images/_objseg: trained in the fit stage on the task's training
split (fit recipe `paper` = the reference's defaults, `tiny` = a few CPU minutes) or loaded from $BENCH_WEIGHTS; masks
are the attention masks (slot 0 the background), the canvas the mixture mean."""

from __future__ import annotations

import monet
from objseg_method import ObjsegMethod

from benchsdk import serve


class MONetMethod(ObjsegMethod):
    name, version = "monet", "1.0"
    model_module, model_class = monet, monet.MONet


if __name__ == "__main__":
    serve(MONetMethod())
