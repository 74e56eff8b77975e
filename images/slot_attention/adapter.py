"""slot_attention: Slot Attention (Locatello et al. 2020) as the ClevrTex benchmark trains it (slot_attention.py), on
the object-centric house images/_objseg: trained in the fit stage on the task's training split (fit recipe `paper` =
the reference's defaults, `tiny` = a few CPU minutes) or loaded from $BENCH_WEIGHTS."""

from __future__ import annotations

import slot_attention
from objseg_method import ObjsegMethod

from benchsdk import serve


class SlotAttentionMethod(ObjsegMethod):
    name, version = "slot_attention", "1.0"
    model_module, model_class = slot_attention, slot_attention.SlotAttentionAE


if __name__ == "__main__":
    serve(SlotAttentionMethod())
