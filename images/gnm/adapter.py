"""gnm: GNM (Jiang and Ahn 2020) as the ClevrTex benchmark trains it (gnm.py), on the object-centric house
images/_objseg: trained in the fit stage on the task's training split (fit recipe `paper` = the reference's
defaults, `tiny` = a few CPU minutes) or loaded from $BENCH_WEIGHTS."""

from __future__ import annotations

import gnm
from objseg_method import ObjsegMethod

from benchsdk import serve


class GNMMethod(ObjsegMethod):
    name, version = "gnm", "1.0"
    model_module, model_class = gnm, gnm.GNM


if __name__ == "__main__":
    serve(GNMMethod())
