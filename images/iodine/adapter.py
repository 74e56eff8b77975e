"""iodine: IODINE (Greff et al. 2019) as the ClevrTex benchmark trains it (iodine.py), on the object-centric house
images/_objseg: trained in the fit stage on the task's training split (fit recipe `paper` = the reference's
defaults, `tiny` = a few CPU minutes) or loaded from $BENCH_WEIGHTS."""

from __future__ import annotations

import iodine
from objseg_method import ObjsegMethod

from benchsdk import serve


class IODINEMethod(ObjsegMethod):
    name, version = "iodine", "1.0"
    model_module, model_class = iodine, iodine.IODINE


if __name__ == "__main__":
    serve(IODINEMethod())
