"""Speed and memory of our HummingBird and kNN evaluators, against open-hummingbird-eval (not a test).

    make bench-deps    # the benchmark scripts' own dependencies (pyproject's `bench` extra: psutil)
    .venv/bin/python scripts/bench_hummingbird.py [--parts a,b,c,d,e,f] [--train-images 10582] [--queries 300]
        [--sides ours,reference,ours,ours@1] [--threads N] [--huge-queries 4] [--json OUT] ...
    .venv/bin/python scripts/bench_hummingbird.py --report OUT1 OUT2 ...    # the table of earlier runs

Both evaluators get identical inputs: procedural masks and random-but-clustered patch features, a pure function
of (split, epoch, image) (`Synth`), so neither side runs a model or decodes an image. Ours runs the real protocol
(`HummingbirdProtocol.run`) with only its two sample loaders (decode + augmentation) swapped for `Synth`; the
reference (open-hummingbird-eval 5e79da2, exported from its git mirror and run in its own venv, which adds
pytorch-lightning on top of ours) runs `HbirdEvaluation` on a wrapper feature extractor and loaders. Sides run
interleaved, each in a fresh process: by default ours, the reference, ours again (the two of ours must give identical
mIoU: the benchmark's own determinism check), then ours with one thread (`ours@1`: torch, faiss and our ScaNN on one
thread, as the reference's ScaNN `search_batched` searches; its tree training uses ScaNN's default threads). Every
configuration runs in a fresh process; peak RSS is that process's ru_maxrss, "RSS over start" subtracts the RSS
after the side's imports. "eval s" / "eval CPU s" are the wall / CPU time minus those spent drawing synthetic
masks and features (the same work on both sides); CPU time is what contention on a shared machine inflates least.
Both sides run with OMP_WAIT_POLICY=PASSIVE, as every `python -m harness` run does (harness/__init__.py).

Parts:
  a  memory 1,024,000 x 384, ScaNN as the reference's defaults, both sides: time and mIoU
  b  exact search, unbounded memory (both sides keep every patch, so the banks are identical): ours vs the
     reference with its GPU-only Faiss index swapped at run time for faiss-cpu IndexFlatIP; mIoU equal to 1e-4
  c  peak RSS against the bytes of the float16 bank (ours, exact search, float16 bank, and the runs of a/d)
  d  memory 10,240,000 x 384 streamed and stored in float16, exact search in chunks (ours only: the reference
     would need 15.7 GB for its float32 bank plus ScaNN's own float32 copy)
  e  kNN at ImageNet scale: 1,281,167 x 384 bank, 50,000 queries, k up to 200, our kNN protocol's search
  f  overclustering at VOC-val scale: our protocol on 1,449 images x 32x32 patches x 384 (448 px, patch 14),
     K = 100 / 300 / 500, one fresh process each (no reference side: the clustering is faiss's, as NeCo's)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REF_MIRROR = Path("/work/.mirror/vpariza+open-hummingbird-eval/repo")
REF_COMMIT = "5e79da2"  # open-hummingbird-eval HEAD as PROTOCOLS.md cites it
SIZE, PATCH, DIM, CLASSES, IGNORE = 512, 16, 384, 21, 255
GRID = SIZE // PATCH
SPLIT_IDS = {"train": 1, "val": 2}


class Synth:
    """Procedural VOC-like masks (background, 1-3 rectangles of the 20 object classes, a 255 rim around each) and
    clustered patch features: class centre of the patch's centre pixel + Gaussian noise + a per-image offset.
    `seconds` and `cpu_seconds` accumulate the wall and CPU time spent drawing them."""

    def __init__(self, seed: int = 0, noise: float = 0.2, style: float = 0.05):
        self.seed, self.noise, self.style, self.seconds, self.cpu_seconds = seed, noise, style, 0.0, 0.0
        self.cache: dict[tuple, np.ndarray] = {}  # masks our loader drew, for the fake method (same process)
        centres = np.random.default_rng([seed, 99]).standard_normal((CLASSES, DIM))
        self.centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)

    def _rng(self, split: str, epoch: int, i: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_IDS[split], epoch, i, stream])

    def mask(self, split: str, epoch: int, i: int) -> np.ndarray:
        start, rng = clock(), self._rng(split, epoch, i, 0)
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        for _ in range(rng.integers(1, 4)):
            h, w = rng.integers(48, 320, size=2)
            top, left = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
            mask[max(0, top - 3) : top + h + 3, max(0, left - 3) : left + w + 3] = IGNORE
            mask[top : top + h, left : left + w] = rng.integers(1, CLASSES)
        self._add(start)
        return mask

    def features(self, split: str, epoch: int, i: int, mask: np.ndarray) -> np.ndarray:
        """float32 (GRID, GRID, DIM), not normalised."""
        start, rng = clock(), self._rng(split, epoch, i, 1)
        classes = mask[PATCH // 2 :: PATCH, PATCH // 2 :: PATCH]
        classes = np.where(classes == IGNORE, 0, classes)
        out = rng.standard_normal((GRID, GRID, DIM), dtype=np.float32)
        out *= self.noise
        out += self.centres[classes]
        out += self.style * rng.standard_normal(DIM, dtype=np.float32)
        self._add(start)
        return out

    def _add(self, start: tuple[float, float]) -> None:
        spent = elapsed(start)
        self.seconds += spent["wall"]
        self.cpu_seconds += spent["cpu"]


SYNTH = Synth()


def clock() -> tuple[float, float]:
    """(wall, CPU of this process) seconds: CPU time is what contention on a shared machine does not inflate."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def elapsed(start: tuple[float, float]) -> dict:
    now = clock()
    return {"wall": now[0] - start[0], "cpu": now[1] - start[1]}


PHASES: dict[str, float] = {}  # wall and CPU seconds of the steps timed by `_timed`: "memory", "memory cpu", ...


def _timed(fn, name: str):
    def wrapper(*args, **kwargs):
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = elapsed(start)
            PHASES[name] = PHASES.get(name, 0.0) + spent["wall"]
            PHASES[f"{name} cpu"] = PHASES.get(f"{name} cpu", 0.0) + spent["cpu"]

    return wrapper


# --- our side ----------------------------------------------------------------------------------------------------


def _our_train_sample(split, ids, size, seed, epoch, n_patches, i):
    """Stands in for hummingbird.load_train_sample: the 'image' is a token the fake method turns into features."""
    index = int(ids[i])
    mask = SYNTH.cache[("train", epoch, index)] = SYNTH.mask("train", epoch, index)
    noise = np.random.default_rng([seed, epoch, index]).random(n_patches)
    return np.array([SPLIT_IDS["train"], epoch, index]), mask, noise


def _our_eval_sample(split, size, i):
    SYNTH.cache[("val", 0, i)] = mask = SYNTH.mask("val", 0, i)
    return np.array([SPLIT_IDS["val"], 0, i]), mask


class _TokenSession:
    """Dense features looked up by the token a sample stands for (the protocol's own loaders send tokens, not
    images, so the session's image checks are left out: this measures the evaluator)."""

    patch = PATCH

    @property
    def info(self):
        from harness.contract import MethodInfo

        return MethodInfo(name="tokens", version="0", outputs=["dense"], patch_size=self.patch, embed_dim=DIM)

    def embed_dense(self, tokens: np.ndarray) -> np.ndarray:
        names = {v: k for k, v in SPLIT_IDS.items()}
        out = []
        for split, epoch, i in tokens:
            split = names[int(split)]
            key = (split, int(epoch), int(i))
            out.append(SYNTH.features(*key, SYNTH.cache.pop(key)))
        return np.stack(out)


def _data(train_images: int, queries: int):
    """A dataset reader with splits "train" and "val" of that many ids, whose images and masks are never read."""
    from harness.data.base import InMemoryDataset, SegmentationSplit

    class _Split(SegmentationSplit):
        num_classes, ignore_index = CLASSES, IGNORE

        def __init__(self, name, n):
            self.name, self.ids = name, [f"{name}{i}" for i in range(n)]

        def image(self, i):
            raise AssertionError("the benchmark's sample loaders never decode")

        mask = image

    return InMemoryDataset({"train": _Split("train", train_images), "val": _Split("val", queries)})


def run_ours(cfg: dict) -> dict:
    from harness.protocols import hummingbird as hb
    from harness.protocols.base import RunContext

    hb.load_train_sample, hb.load_eval_sample = _our_train_sample, _our_eval_sample
    hb.make_search = _timed(hb.make_search, "index")
    hb.HummingbirdProtocol._build_memory = _timed(hb.HummingbirdProtocol._build_memory, "memory")
    hb.HummingbirdProtocol._confusion = _timed(hb.HummingbirdProtocol._confusion, "search+metric")
    params = hb.HummingbirdParams(
        train_split="train",
        eval_split="val",
        memory_size=cfg["memory"],
        aug_epochs=cfg["epochs"],
        k=30,
        temperature=0.02,
        search=cfg["search"],
        memory_dtype=cfg["dtype"],
        search_options={**cfg.get("options", {}), **({"threads": cfg["threads"]} if cfg["search"] == "scann" else {})},
    )
    ctx = RunContext(session=_TokenSession(), seed=0, batch_size=cfg["batch"], num_workers=0, progress=False)
    start = clock()
    outcome = hb.HummingbirdProtocol(params).run(_data(cfg["train_images"], cfg["queries"]), ctx)
    return {
        "miou": outcome.metrics["miou"],
        "miou_identity": outcome.metrics["miou_identity"],
        **elapsed(start),
        "rows": outcome.details["memory_rows"],
        "phases": {**ctx.stopwatch.totals, **PHASES},
    }


# --- the reference -----------------------------------------------------------------------------------------------


class _RefLoader:
    """Batches as the reference's loaders give them: images (B, 3, S, S) (a broadcast zero tensor: the extractor
    below ignores pixels) and masks (B, 1, S, S) in [0, 1] (ToTensor of the label PNG). Each pass over a training
    loader is a new augmentation epoch."""

    def __init__(self, split: str, n: int, batch: int, extractor):
        self.split, self.n, self.batch, self.extractor, self.passes = split, n, batch, extractor, 0

    def __len__(self):
        return -(-self.n // self.batch)

    def __iter__(self):
        epoch = self.passes if self.split == "train" else 0
        self.passes += 1
        for start in range(0, self.n, self.batch):
            ids = range(start, min(self.n, start + self.batch))
            masks = np.stack([SYNTH.mask(self.split, epoch, i) for i in ids])
            self.extractor.pending = [(self.split, epoch, i, m) for i, m in zip(ids, masks)]
            yield torch.zeros(1, 1, 1, 1).expand(len(ids), 3, SIZE, SIZE), torch.from_numpy(masks)[:, None] / 255.0


class _RefExtractor(torch.nn.Module):
    eval_spatial_resolution, d_model = GRID, DIM

    def forward_features(self, x):
        feats = np.stack([SYNTH.features(*p) for p in self.pending])
        return torch.from_numpy(feats).reshape(len(feats), GRID * GRID, DIM), None


class _CpuFlatFaiss:
    """The reference's NearestNeighborSearchFaiss interface on faiss-cpu IndexFlatIP (its own needs a GPU)."""

    def __init__(self, feature_memory, n_neighbors=30, **unused):
        import faiss

        self.n_neighbors = n_neighbors
        self.index = faiss.IndexFlatIP(feature_memory.size(1))
        self.index.add(feature_memory.cpu().numpy())

    def find_nearest_neighbors(self, q, k=None):
        distances, indices = self.index.search(q.cpu().numpy(), k or self.n_neighbors)
        return indices, distances


def run_reference(cfg: dict) -> dict:
    torch.manual_seed(0)
    import hbird.nn.search_faiss as ref_faiss
    from hbird.hbird_eval import HbirdEvaluation

    ref_faiss.NearestNeighborSearchFaiss = _CpuFlatFaiss
    HbirdEvaluation._create_memory = _timed(HbirdEvaluation._create_memory, "memory")
    HbirdEvaluation._create_nn = _timed(HbirdEvaluation._create_nn, "index")
    extractor = _RefExtractor()
    train = _RefLoader("train", cfg["train_images"], cfg["batch"], extractor)
    val = _RefLoader("val", cfg["queries"], cfg["batch"], extractor)
    start = clock()
    evaluator = HbirdEvaluation(
        extractor,
        train,
        num_classes=CLASSES,
        n_neighbours=30,
        augmentation_epoch=cfg["epochs"],
        device="cpu",
        nn_method="faiss" if cfg["search"] == "exact" else "scann",
        nn_params={},
        memory_size=cfg["memory"],
        dataset_size=cfg["train_images"],
    )
    jac = _timed(evaluator.evaluate, "search+metric")(val, eval_spatial_resolution=GRID, ignore_index=IGNORE)
    return {
        "miou": 100 * float(jac),
        **elapsed(start),
        "rows": int(evaluator.feature_memory.shape[0]),
        "phases": PHASES,
    }


# --- kNN ---------------------------------------------------------------------------------------------------------


def _clustered(rng: np.random.Generator, centres: np.ndarray, labels: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """float32 (N, D): the centre of each label plus N(0, 0.15²) noise, drawn in chunks so that the process's peak
    RSS is the features' own bytes plus what the protocol adds."""
    out = np.empty((len(labels), centres.shape[1]), dtype=np.float32)
    for start in range(0, len(labels), chunk):
        rows = out[start : start + chunk]
        rng.standard_normal(rows.shape, dtype=np.float32, out=rows)
        rows *= 0.15
        rows += centres[labels[start : start + chunk]]
    return out


def run_knn(cfg: dict) -> dict:
    from harness.protocols.knn import knn_accuracy, knn_neighbours

    rng, classes = np.random.default_rng(0), 1000
    centres = rng.standard_normal((classes, DIM), dtype=np.float32)
    train_labels, test_labels = rng.integers(0, classes, cfg["bank"]), rng.integers(0, classes, cfg["queries"])
    train, test = (torch.from_numpy(_clustered(rng, centres, labels)) for labels in (train_labels, test_labels))
    train_labels, test_labels = torch.from_numpy(train_labels), torch.from_numpy(test_labels)
    start = clock()
    sims, index = knn_neighbours(train, test, max(cfg["ks"]))
    top1 = {k: knn_accuracy(sims, index, train_labels, test_labels, k, 0.07, classes)[0] for k in cfg["ks"]}
    return {**elapsed(start), "top1": top1, "rows": cfg["bank"]}


# --- overclustering ---------------------------------------------------------------------------------------------


def run_overcluster(cfg: dict) -> dict:
    """Our overclustering protocol on VOC-val-sized dense features: `queries` images of a 32×32 patch grid (448 px
    at patch 14), masks nearest-resized to 100×100; the clustering is the evaluator's work."""
    from harness.data.transforms import resize_mask_nearest
    from harness.protocols import overcluster as oc
    from harness.protocols.base import RunContext

    def eval_sample(split, size, mask_size, i):
        SYNTH.cache[("val", 0, i)] = mask = SYNTH.mask("val", 0, i)
        return np.array([SPLIT_IDS["val"], 0, i]), resize_mask_nearest(mask, mask_size)

    class _Session(_TokenSession):
        patch = 14

    oc.neco_eval_sample = eval_sample
    params = oc.OverclusterParams(k=cfg["k"], input_size=448)
    ctx = RunContext(session=_Session(), seed=0, batch_size=cfg["batch"], num_workers=0, progress=False)
    start = clock()
    outcome = oc.OverclusterProtocol(params).run(_data(0, cfg["queries"]), ctx)
    return {
        "miou": outcome.metrics["miou"],
        **elapsed(start),
        "rows": outcome.details["points_clustered"],
        "phases": ctx.stopwatch.totals,
    }


# --- driver ------------------------------------------------------------------------------------------------------


def worker(cfg: dict) -> None:
    import faiss
    import psutil

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
        faiss.omp_set_num_threads(cfg["threads"])

    if cfg["side"] == "reference":  # the start RSS counts each side's imports
        sys.path.insert(0, cfg["ref_checkout"])
    importlib.import_module("hbird.hbird_eval" if cfg["side"] == "reference" else "harness.protocols.hummingbird")
    base_rss = psutil.Process().memory_info().rss
    runner = {"ours": run_ours, "reference": run_reference, "knn": run_knn, "overcluster": run_overcluster}
    result = runner[cfg["side"]](cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result.update(synth_s=SYNTH.seconds, synth_cpu=SYNTH.cpu_seconds, base_rss=base_rss, peak_rss=peak)
    print("RESULT " + json.dumps(result), flush=True)


# Both sides run as `python -m harness` runs ours: OpenMP threads sleep instead of busy-waiting (harness/__init__.py
# sets this before torch starts its thread pool; this script imports torch first, so the workers get it here).
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def launch(python: str, cfg: dict, log: Path) -> dict:
    """Run one configuration in a fresh process; its stderr goes to `log`."""
    print(f"... {cfg['label']}: {cfg['side']}", file=sys.stderr, flush=True)
    with open(log, "a") as err:
        err.write(f"\n=== {cfg['label']} {cfg['side']}\n")
        err.flush()
        proc = subprocess.run(
            [python, __file__, "_worker", json.dumps(cfg)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **WORKER_ENV},
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}, see {log}"}
    return {**json.loads(lines[-1][7:]), **cfg, "load_end": os.getloadavg()}


def reference_env(args) -> tuple[str, str]:
    """(python, checkout): the reference exported from its git mirror, and a venv that sees ours + lightning."""
    work = Path(args.ref_dir)
    checkout, venv = work / f"open-hummingbird-eval-{REF_COMMIT}", work / "venv"
    if not (checkout / "hbird" / "hbird_eval.py").exists():
        checkout.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(args.ref_repo), "archive", REF_COMMIT], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        (site / "vrbench-main.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, numpy, scann
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pytorch-lightning"], check=True)
    print(f"reference: open-hummingbird-eval {REF_COMMIT} at {checkout}, python {python}", file=sys.stderr)
    return str(python), str(checkout)


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="a,b,c,d,e,f")
    parser.add_argument("--train-images", type=int, default=10_582)
    parser.add_argument("--queries", type=int, default=300, help="query images of part a")
    parser.add_argument("--memory", type=int, default=1_024_000)
    parser.add_argument("--exact-train", type=int, default=50, help="training images of part b (x2 epochs x 1024)")
    parser.add_argument("--exact-queries", type=int, default=50)
    parser.add_argument("--huge-memory", type=int, default=10_240_000)
    parser.add_argument("--huge-queries", type=int, default=2, help="query images of part d")
    parser.add_argument("--knn-bank", type=int, default=1_281_167)
    parser.add_argument("--knn-queries", type=int, default=50_000)
    parser.add_argument("--overcluster-images", type=int, default=1_449)
    parser.add_argument("--overcluster-k", type=lambda v: [int(k) for k in v.split(",")], default=[100, 300, 500])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--sides",
        default="ours,reference,ours,ours@1",
        help="parts a and b: which sides run, in this order (ours@N: ours on N threads)",
    )
    parser.add_argument("--threads", type=int, default=0, help="threads of every side but ours@N (0: every core)")
    parser.add_argument("--ref-repo", default=str(REF_MIRROR))
    parser.add_argument("--ref-dir", default=os.path.join(tempfile.gettempdir(), "vrbench-hbird-ref"))
    parser.add_argument("--json", help="also write every measurement here")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="only print the table of earlier --json files")
    args = parser.parse_args()
    if args.report:
        report({k: v for path in args.report for k, v in json.loads(Path(path).read_text()).items()})
        return
    parts = set(args.parts.split(","))
    log = Path(tempfile.gettempdir()) / "bench_hummingbird.log"
    ours_py = sys.executable
    needs_ref = parts & {"a", "b"} and "reference" in args.sides
    ref_py, checkout = reference_env(args) if needs_ref else (None, None)
    base = {
        "train_images": args.train_images,
        "epochs": 2,
        "batch": args.batch,
        "ref_checkout": checkout,
        "threads": args.threads,
    }
    runs: dict[str, dict] = {}

    def both(label, **cfg):
        cfg = {**base, **cfg, "label": label}
        for token in args.sides.split(","):  # "ours,reference,ours" brackets the reference between two of ours
            side, _, threads = token.partition("@")
            name = f"{label} {token}" + ("" if f"{label} {token}" not in runs else " again")
            run = {**cfg, "side": side, **({"threads": int(threads)} if threads else {})}
            runs[name] = launch(ours_py if side == "ours" else ref_py, run, log)

    if "a" in parts:
        both("a", memory=args.memory, queries=args.queries, search="scann", dtype="float32")
    if "b" in parts:
        both(
            "b", memory=None, queries=args.exact_queries, train_images=args.exact_train, search="exact", dtype="float32"
        )
    if "c" in parts:
        cfg = {
            **base,
            "label": "c",
            "side": "ours",
            "memory": args.memory,
            "queries": 8,
            "search": "exact",
            "dtype": "float16",
        }
        runs["c ours"] = launch(ours_py, cfg, log)
    if "d" in parts:
        cfg = {
            **base,
            "label": "d",
            "side": "ours",
            "memory": args.huge_memory,
            "queries": args.huge_queries,
            "search": "exact",
            "dtype": "float16",
            "batch": max(args.huge_queries, 1),
        }
        runs["d ours"] = launch(ours_py, cfg, log)
    if "e" in parts:
        cfg = {
            "label": "e",
            "side": "knn",
            "bank": args.knn_bank,
            "queries": args.knn_queries,
            "ks": [10, 20, 100, 200],
        }
        runs["e knn"] = launch(ours_py, cfg, log)
    for k in args.overcluster_k if "f" in parts else []:
        cfg = {"label": "f", "side": "overcluster", "k": k, "queries": args.overcluster_images, "batch": args.batch}
        runs[f"f overcluster K={k}"] = launch(ours_py, cfg, log)
    report(runs)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


def _describe(r: dict) -> str:
    if r["side"] == "knn":
        return f"kNN exact float32, k {'/'.join(map(str, r['ks']))}, {r['queries']:,} queries"
    if r["side"] == "overcluster":
        return f"K={r['k']}, PCA 50, 5 seeds x best of 5 k-means x 100 iters, {r['queries']:,} images x 32x32"
    what = f"{r.get('search', 'exact')} {r.get('dtype', 'float32')}, memory {r.get('memory') or 'all'}"
    return what + f", {r['queries']:,} query images"


def _phase(phases: dict, step: str) -> str:
    if step not in phases:
        return "-"
    return f"{phases[step]:.1f}" + (f" / {phases[step + ' cpu']:.1f}" if step + " cpu" in phases else "")


def _load(run: dict) -> str:
    return f"{run['load_end'][2]:.1f}" if "load_end" in run else "-"


def report(runs: dict[str, dict]) -> None:
    from tabulate import tabulate

    headers = [
        "run",
        "configuration",
        "threads",
        "bank rows",
        "wall s",
        "eval s",
        "eval CPU s",
        "mIoU",
        "peak RSS GB",
        "RSS over start GB",
        "fp16 bank GB",
        "RSS / fp16 bank",
    ]
    rows = []
    for name, r in runs.items():
        if "error" in r:
            rows.append([name, r["error"]] + ["-"] * (len(headers) - 2))
            continue
        bank = r["rows"] * DIM * 2
        what = _describe(r)
        score = f"{r['miou']:.4f}" if "miou" in r else f"top-1@20 {r['top1']['20']:.2f}"
        rows.append(
            [
                name,
                what,
                r.get("threads") or "all",
                f"{r['rows']:,}",
                f"{r['wall']:.1f}",
                f"{r['wall'] - r['synth_s']:.1f}",
                f"{r['cpu'] - r['synth_cpu']:.1f}",
                score,
                gb(r["peak_rss"]),
                gb(r["peak_rss"] - r["base_rss"]),
                gb(bank),
                f"{r['peak_rss'] / bank:.2f}",
            ]
        )
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    steps = ["memory", "index", "search+metric"]
    split = [
        [name] + [_phase(r["phases"], k) for k in steps] + [_load(r)]
        for name, r in runs.items()
        if "error" not in r and "memory" in r.get("phases", {})
    ]
    if split:
        print("\nwall / CPU seconds per step (synthetic masks and features drawn inside memory and search+metric):")
        print(
            tabulate(split, headers=["run", *steps, "load avg 15 min at end"], tablefmt="github", disable_numparse=True)
        )
    for label in ("a", "b"):
        ours = [r for name, r in runs.items() if name.startswith(f"{label} ours") and "error" not in r]
        if len(ours) > 1:
            threads = ", ".join(str(r.get("threads") or "all") for r in ours)
            values = ", ".join(f"{r['miou']:.10f}" for r in ours)
            same = "identical" if len({r["miou"] for r in ours}) == 1 else "DIFFERENT"
            print(f"{label}: our {len(ours)} runs (threads {threads}) give {same} mIoU: {values}")
        ref = runs.get(f"{label} reference")
        for name in [n for n in runs if n.startswith(f"{label} ours")]:
            ours = runs.get(name)
            if not ours or not ref or "error" in ours or "error" in ref:
                continue
            wall = (ref["wall"] - ref["synth_s"]) / (ours["wall"] - ours["synth_s"])
            cpu = (ref["cpu"] - ref["synth_cpu"]) / (ours["cpu"] - ours["synth_cpu"])
            print(
                f"{name}: the reference takes {wall:.2f}x our eval time ({cpu:.2f}x our CPU time, "
                f"{ref['wall'] / ours['wall']:.2f}x our wall time); mIoU ours - reference = "
                f"{ours['miou'] - ref['miou']:+.5f} points"
            )
    print(
        f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (others' work slows wall times; "
        f"CPU times are what each run itself used)"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        worker(json.loads(sys.argv[2]))
    else:
        main()
