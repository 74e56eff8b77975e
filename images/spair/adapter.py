"""spair: SPAIR (Crawford and Pineau 2019) as the ClevrTex benchmark trains it (spair.py), on the object-centric house
images/_objseg: trained in the fit stage on the task's training split (fit recipe `paper` = the reference's
defaults, `tiny` = a few CPU minutes) or loaded from $BENCH_WEIGHTS."""

from __future__ import annotations

import spair
from objseg_method import ObjsegMethod

from benchsdk import serve


class SPAIRMethod(ObjsegMethod):
    name, version = "spair", "1.0"
    model_module, model_class = spair, spair.SPAIR


if __name__ == "__main__":
    serve(SPAIRMethod())
