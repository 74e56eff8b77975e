#!/usr/bin/env python
"""Run the reference dense FUNGI (`combined_token_features`, fungi-hummingbird/eval_gradients.py L73-183,
WalterSimoncini/no-train-all-gain 7ad3b75) and ours (images/fungi: the adapter, dense_fungi.py) on identical random
DINO ViT-S/16 weights, images, support bank, head, projection and keep masks, and print the largest differences.

    python scripts/compare_fungi.py [--ref DIR] [--dino DIR] [--sizes 64,512] [--images 3] [--seed 0]

--ref: a checkout of no-train-all-gain at 7ad3b75 (its fungi-hummingbird/ folder, or the repository root):
`git clone https://github.com/WalterSimoncini/no-train-all-gain && git -C no-train-all-gain checkout 7ad3b75`.
--dino: a checkout of facebookresearch/dino (7c446df). Both are only read and imported, never edited or copied;
the reference's Python needs scann and tqdm (installed here).

What runs:
- The official `vision_transformer.vit_small(patch_size=16, num_classes=0)` under a fixed seed, N(0, 0.05) added to
  every bias, norm, token and the position embedding (as scripts/compare_backbones.py). Its state dict is saved as
  the official backbone file and read by our adapter ($BENCH_WEIGHTS, `Fungi().setup`).
- `combined_token_features` is the reference's own nested function: its source is taken from eval_gradients.py
  with `ast` and executed unchanged in the module's namespace, with the variables of `main` it closes over set
  here: `args` (use_fp16 False, num_negative_neighbors 2, negative_batch_percent 0.5, gradients_layer
  backbone.blocks.11.attn.proj), `memory`, `voc_index`, `projection`, `scaling` (the reference's
  suggested_scaling_factor), `scaler`, `gradient_paths` (autograd_hacks hooks added as in main), `device` cpu.
- Support bank: our adapter's `fit` on seeded training images (all patches), i.e. the L2-normalised raw patch
  tokens; the reference gets the same tensor as `memory` and, as `voc_index`, our exact top-5 wrapped in a class
  with the `search_batched` it calls.
- Head and P: ours (drawn from the setup seed), copied into the reference's `model.fc` and passed as `projection`.
- Keep masks: the reference draws them from the global torch RNG, ours from our generator; the global RNG is set to
  our generator's state before each reference call, so both draw the same masks.
- Images: seeded uint8 noise, normalised for the reference exactly as the adapter does (ImageNet mean/std). Ours is
  called with all images at once (it works in chunks of 4); the reference with 4 images per call, and below 512²
  also with 1 (that row shows the batch size does not change the features).
Compared: the 768-d features (CLS dropped), max |ref − ours| over all patches, CPU; also the token half and the
gradient half separately (each renormalised). Rows: fp32 (the reference's float16 cast rebound to float32, see
`float32_loss`; checked, exit 1 when one exceeds 1e-4); the reference as is (float16 loss) against ours in float16,
and each against ours in fp32; and ours with the unscrambled reading against the reference (a control that must
differ).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import textwrap
import time
import types
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
FETCH = (
    "git clone https://github.com/WalterSimoncini/no-train-all-gain /tmp/fungi_ref && "
    "git -C /tmp/fungi_ref checkout 7ad3b75"
)
TOLERANCE = 1e-4
NOISE = 0.05
LAYER = "backbone.blocks.11.attn.proj"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def reference_folder(path: str) -> Path:
    folder = Path(path)
    if (folder / "fungi-hummingbird").is_dir():
        folder = folder / "fungi-hummingbird"
    if not (folder / "eval_gradients.py").is_file():
        sys.exit(f"{path}: no fungi-hummingbird/eval_gradients.py there; fetch the reference with:\n  {FETCH}")
    return folder


def load_reference(folder: Path, closure: dict):
    """The reference's `combined_token_features`: its source, taken from eval_gradients.py, executed unchanged in a
    namespace holding the names it uses from the module's imports (eval_gradients.py itself imports the HummingBird
    evaluator, which needs torchmetrics) and `closure`, the locals of `main` it closes over. Returns it and the
    reference's src.utils modules."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import src.utils.autograd_hacks as autograd_hacks
    from src.utils import compression, grads, simclr

    source = (folder / "eval_gradients.py").read_text()
    main = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "main")
    fn = next(n for n in main.body if isinstance(n, ast.FunctionDef) and n.name == "combined_token_features")
    namespace = dict(
        torch=torch,
        np=np,
        nn=nn,
        F=F,
        autograd_hacks=autograd_hacks,
        info_nce_loss=simclr.info_nce_loss,
        get_layer=grads.get_layer,
        **closure,
    )
    code = compile(textwrap.dedent(ast.get_source_segment(source, fn)), str(folder / "eval_gradients.py"), "exec")
    exec(code, namespace)
    return namespace["combined_token_features"], SimpleNamespace(
        autograd_hacks=autograd_hacks, compression=compression, simclr=simclr
    )


class ExactIndex:
    """Our exact top-5 with the `search_batched` the reference calls on its ScaNN searcher."""

    def __init__(self, search):
        self.search = search

    def search_batched(self, queries: np.ndarray):
        index = self.search.search(torch.from_numpy(queries))
        return index.numpy().astype(np.int32), None


def official_vit(dino: Path, seed: int):
    sys.path.insert(0, str(dino))
    import vision_transformer as vits

    torch.manual_seed(seed)
    model = vits.vit_small(patch_size=16, num_classes=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name in ("cls_token", "pos_embed"):
                p.add_(torch.randn_like(p) * NOISE)
    return model.eval()


def images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def normalised(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)
    return (t - torch.from_numpy(MEAN).view(1, 3, 1, 1)) / torch.from_numpy(STD).view(1, 3, 1, 1)


def float32_loss(simclr):
    """The reference's info_nce_loss with its float16 cast made float32: its own code objects, run with globals in
    which `torch.float16` is torch.float32 (nothing else differs), for the rows that compare the algorithm in fp32."""

    class Torch:
        float16 = torch.float32

        def __getattr__(self, name):
            return getattr(torch, name)

    namespace = dict(vars(simclr), torch=Torch())
    for name in ("info_nce_loss", "masked_cosine_similarity"):
        fn = getattr(simclr, name)
        namespace[name] = types.FunctionType(fn.__code__, namespace, name, fn.__defaults__)
    return namespace["info_nce_loss"]


class Ours:
    """Our adapter, set up and fitted once per (size, reading); `run` replays the same keep-mask draws."""

    def __init__(self, Fungi, size, args, scramble):
        self.method = Fungi(scramble=scramble)
        self.method.setup(args.seed, {"name": "voc_hummingbird", "version": "1", "output": "dense", "seed": args.seed})
        train = images(args.train, size, args.seed + 1)
        self.method.fit(iter([(train[i : i + 2], None, None) for i in range(0, len(train), 2)]))
        self.dense = self.method.dense
        self.state = self.dense.rng.get_state()

    def run(self, queries, loss_dtype):
        self.dense.rng.set_state(self.state)
        self.dense.loss_dtype = loss_dtype
        t0 = time.time()
        out = torch.from_numpy(self.method.embed_dense(queries)).reshape(len(queries), -1, 768)
        return out, time.time() - t0


def reference(folder, official, ours: Ours, queries, ref_batch, loss_dtype):
    """The reference's features of `queries` on `official`, with our head, P, bank and keep masks."""
    dense = ours.dense
    model = nn.Sequential(OrderedDict([("backbone", official), ("fc", nn.Linear(384, 96))]))
    with torch.no_grad():
        model.fc.weight.copy_(dense.head.weight)
        model.fc.bias.copy_(dense.head.bias)
    fn, ref = load_reference(folder, {})
    gradient_paths = ref.autograd_hacks.preprocess_layer_paths(paths=[LAYER])
    fn.__globals__.update(
        args=SimpleNamespace(
            use_fp16=False, num_negative_neighbors=2, negative_batch_percent=0.5, gradients_layer=LAYER
        ),
        device=torch.device("cpu"),
        memory=dense.bank.clone(),
        voc_index=ExactIndex(dense.index),
        projection=dense.projection.clone(),
        scaling=ref.compression.suggested_scaling_factor(projection_dim=384),
        scaler=torch.cuda.amp.GradScaler(enabled=False),
        gradient_paths=gradient_paths,
    )
    if loss_dtype == torch.float32:
        fn.__globals__["info_nce_loss"] = float32_loss(ref.simclr)
    ref.autograd_hacks.add_hooks(model, layer_paths=gradient_paths)
    torch.set_rng_state(ours.state)
    t0 = time.time()
    try:
        out = torch.cat([fn(model, chunk)[0].detach() for chunk in normalised(queries).split(ref_batch)])
    finally:
        for handle in model.__dict__.pop("autograd_hacks_hooks", []):
            handle.remove()
        official.zero_grad(set_to_none=True)
    return out, time.time() - t0


def halves(a, b):
    """max |a − b| of the whole features, of the token half and of the gradient half (each renormalised)."""
    return (
        (a - b).abs().max().item(),
        (F.normalize(a[..., :384], dim=-1) - F.normalize(b[..., :384], dim=-1)).abs().max().item(),
        (F.normalize(a[..., 384:], dim=-1) - F.normalize(b[..., 384:], dim=-1)).abs().max().item(),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="/tmp/fungi_ref")
    parser.add_argument("--dino", default="/tmp/bb_refs/dino")
    parser.add_argument("--sizes", default="64,512")
    parser.add_argument("--images", type=int, default=3, help="query images per size (at 512: at most 2)")
    parser.add_argument("--train", type=int, default=6, help="support-bank images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = reference_folder(args.ref)
    if not (Path(args.dino) / "vision_transformer.py").is_file():
        sys.exit(f"{args.dino}: no vision_transformer.py (git clone https://github.com/facebookresearch/dino)")
    sys.path[:0] = [str(REPO / "images" / "fungi"), str(REPO / "images" / "_vit")]
    from adapter import Fungi

    official = official_vit(Path(args.dino), args.seed)
    f32, f16 = torch.float32, torch.float16
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dino_deitsmall16_pretrain.pth")
        torch.save(official.state_dict(), path)
        os.environ["BENCH_WEIGHTS"] = path
        for size in map(int, args.sizes.split(",")):
            n = min(args.images, 2) if size >= 512 else args.images
            queries = images(n, size, args.seed + 2)
            ours = Ours(Fungi, size, args, scramble=True)
            mine32, t32 = ours.run(queries, f32)
            for ref_batch in (4, 1) if size < 512 else (4,):
                theirs, t_ref = reference(folder, official, ours, queries, ref_batch, f32)
                rows.append((size, n, "scrambled", "fp32", ref_batch, *halves(theirs, mine32), True))
                print(f"{size}: fp32 ours {t32:.1f} s, ref (batch {ref_batch}) {t_ref:.1f} s", flush=True)
            theirs16, _ = reference(folder, official, ours, queries, 4, f16)
            mine16, _ = ours.run(queries, f16)
            rows.append((size, n, "scrambled", "fp16 (ref as is)", 4, *halves(theirs16, mine16), False))
            rows.append((size, n, "scrambled", "fp16 ref vs fp32 ours", 4, *halves(theirs16, mine32), False))
            rows.append((size, n, "scrambled", "fp16 ours vs fp32 ours", 4, *halves(mine16, mine32), False))
            plain = Ours(Fungi, size, args, scramble=False)
            unscrambled, _ = plain.run(queries, f32)
            rows.append(
                (size, n, "first 2 (ours) vs scrambled (ref): control", "fp32", 4, *halves(theirs, unscrambled), False)
            )
        del os.environ["BENCH_WEIGHTS"]
    print()
    print("| input | images | neighbours | loss | ref batch | features | token half | gradient half | pass (≤ 1e-4) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, n, reading, loss, ref_batch, feat, tok, grad, checked in rows:
        verdict = "–"
        if checked:
            verdict = "yes" if feat <= TOLERANCE else "NO"
            failed |= feat > TOLERANCE
        print(f"| {size}² | {n} | {reading} | {loss} | {ref_batch} | {feat:.1e} | {tok:.1e} | {grad:.1e} | {verdict} |")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
