"""The contract's tables, written once (images/CONTRACT.md): what a method may output, the request that asks for
each output, the reply's arrays and shapes, and the `info` a method announces. The live session, `bench inputs` /
`bench score` and `bench validate` all read them from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from benchsdk import FitBatch  # one batch of a fit stage: the SDK's type is the contract's

__all__ = ["FitBatch", "MethodInfo", "OPS", "OUTPUTS", "Output", "OutputKind"]

OutputKind = Literal["global", "dense", "masks"]


@dataclass(frozen=True)
class Output:
    """One output kind: the op that requests it, the reply array holding it, its dimensions, the info it needs."""

    kind: OutputKind
    op: str
    reply: str
    ndim: int
    needs: tuple[str, ...]  # MethodInfo fields a method producing this output must give
    shape: str  # for messages and docs

    def reply_shapes(self, info: "MethodInfo", images_shape: tuple[int, ...]) -> dict[str, tuple[int | None, ...]]:
        """The arrays a reply to images (N, H, W, 3) holds, the first required, and their shapes (None: the
        method's choice, the masks' K); D is the width the info declares (global_dim, else embed_dim)."""
        n, h, w, _ = images_shape
        if self.kind == "global":
            return {"features": (n, info.global_dim or info.embed_dim)}
        if self.kind == "dense":
            return {"features": (n, h // info.patch_size, w // info.patch_size, info.embed_dim)}
        return {"masks": (n, None, h, w), "reconstructions": (n, 3, h, w)}


OUTPUTS: dict[str, Output] = {
    o.kind: o
    for o in (
        Output("global", "embed", "features", 2, ("embed_dim",), "(N, D)"),
        Output("dense", "embed_dense", "features", 4, ("patch_size", "embed_dim"), "(N, H/p, W/p, D)"),
        Output("masks", "segment", "masks", 4, (), "(N, K, H, W), optional reconstructions (N, 3, H, W)"),
    )
}
OPS: dict[str, Output] = {o.op: o for o in OUTPUTS.values()}  # the requests that carry images


class MethodInfo(BaseModel):
    """A method's reply to `info`. Fields the harness does not read are kept as given."""

    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    outputs: list[OutputKind] = Field(min_length=1)
    patch_size: int | None = Field(default=None, gt=0)
    embed_dim: int | None = Field(default=None, gt=0)
    global_dim: int | None = Field(default=None, gt=0)  # global outputs' width where it differs from embed_dim
    fit: StrictBool = False  # has a fit stage (method.yaml `fit: true`)
    masks_have_background: StrictBool = True  # masks: is slot 0 the background? (true or false, nothing else)
    protocol: int | None = None
    sdk: str | None = None
    transport: str = "stdio"

    def missing(self) -> str | None:
        """What the declared outputs need and the info lacks, as one sentence; None when complete."""
        for kind in self.outputs:
            for name in OUTPUTS[kind].needs:
                if getattr(self, name) is None:
                    return f"{kind} outputs need an integer {name}"
        return None

    @classmethod
    def parse(cls, info: object) -> tuple["MethodInfo | None", str | None]:
        """(the info, None) when it is complete and well-typed, else (None, the first problem)."""
        try:
            model = cls.model_validate(info)
        except ValidationError as e:
            first = e.errors()[0]
            return None, f"{'.'.join(map(str, first['loc'])) or 'info'}: {first['msg']}"
        return (None, problem) if (problem := model.missing()) else (model, None)

    def summary(self) -> str:
        dims = f"dim {self.embed_dim}" + (f", global dim {self.global_dim}" if self.global_dim else "")
        return f"{', '.join(self.outputs)}; patch {self.patch_size}, {dims}" + ("; fit stage" if self.fit else "")
