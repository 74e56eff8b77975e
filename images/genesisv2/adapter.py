"""genesisv2: GENESIS-V2 (Engelcke et al. 2021) as the ClevrTex benchmark trains it (genesisv2.py), on the object-
centric house images/_objseg: trained in the fit stage on the task's training split (fit recipe `paper` = the
reference's defaults, `tiny` = a few CPU minutes) or loaded from $BENCH_WEIGHTS."""

from __future__ import annotations

import genesisv2
from objseg_method import ObjsegMethod

from benchsdk import serve


class GenesisV2Method(ObjsegMethod):
    name, version = "genesisv2", "1.0"
    model_module, model_class = genesisv2, genesisv2.GenesisV2


if __name__ == "__main__":
    serve(GenesisV2Method())
