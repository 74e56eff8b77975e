"""`bench train`: run a method's training recipe (method.yaml `recipes:`) through the contract's training ops
(images/CONTRACT.md, "Training"), checkpointed and resumable, into a content-addressed weights artifact.

The harness drives the steps: `train_start` (the recipe's params, the seed, the checkpoint to resume from), then
`train_step` until the recipe's steps are done (the loss of each shown and kept; a non-finite loss stops the run),
`save_checkpoint` every `checkpoint_every` steps, `export_weights` at the end. The method writes only into its output
folder ($BENCH_OUTPUT, the one writable mount in a container), always under a temporary name the harness renames once
the method has answered: a half-written checkpoint is never used. Under the weights root:

    runs/<method>/<recipe>/<run key>/ckpt-<step>.ckpt   checkpoints; the run key covers the method's code, the recipe,
                                                        the seed and the steps, so a rerun (after kill -9) resumes
    trained/<sha256>/<method>/<file>                     the exported weights, named as method.yaml's `weights.file`
    trained/<sha256>/training.json                       their TrainingRecord

`bench run --weights <sha256 prefix | recipe>` evaluates them (trained_weights); results link the record.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from harness import specs
from harness.errors import MethodFailure, UserError
from harness.provenance import file_sha256, machine, now
from harness.results import write_atomic
from harness.runners import get_runner
from harness.weights import declared, default_root, resolve

RECORD = "training.json"


class TrainingRecord(BaseModel):
    """What made a weights artifact: written beside it, linked from every result that evaluates it."""

    model_config = ConfigDict(extra="forbid")
    method: str
    method_ref: str
    recipe: str
    recipe_hash: str
    params: dict
    seed: int
    steps: int
    weights_sha256: str
    weights_file: str
    data: str  # what it trained on
    losses: list[tuple[int, float]]  # (step, loss), every step
    resumed_at: list[int]  # the steps a run continued from a checkpoint
    wall_s: float  # this harness's training time, resumed runs included
    machine: dict
    backend: str
    started_at: str
    finished_at: str


@dataclass
class TrainOptions:
    backend: str = "local"
    weights_root: Path | None = None
    steps: int | None = None  # None: the recipe's
    seed: int = 0
    resume: bool = False  # insist on resuming (there must be a checkpoint)
    restart: bool = False  # discard the run's checkpoints
    progress: bool = True


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def recipe_of(method: specs.MethodSpec, name: str) -> specs.Recipe:
    if name not in method.recipes:
        known = ", ".join(method.recipes) or "none"
        raise UserError(f"{method.name} has no training recipe {name!r} (recipes: {known})", where=method.path)
    return method.recipes[name]


def _artifact_name(method: specs.MethodSpec) -> str:
    if not declared(method):
        raise UserError(
            f"{method.name}: recipes need `weights: {{file, url, sha256}}` in method.yaml, naming the file its "
            "evaluation loads",
            where=method.path,
        )
    return method.weights.file


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's complete checkpoints, (step, path), by step."""
    found = []
    for p in run_dir.glob("ckpt-*.ckpt"):
        try:
            found.append((int(p.stem.split("-")[1]), p))
        except ValueError:
            continue
    return sorted(found)


def train(method: specs.MethodSpec, recipe_name: str, opts: TrainOptions) -> tuple[TrainingRecord, Path]:
    """Run (or resume) the recipe; returns its record and the artifact's path. Bad arguments raise UserError before
    anything starts; a method that fails or diverges raises MethodFailure, its checkpoints kept."""
    recipe = recipe_of(method, recipe_name)
    if recipe.variant and method.variant_name != recipe.variant:
        if method.variant_name:
            raise UserError(f"recipe {recipe_name} trains {method.base}@{recipe.variant}, not {method.name}")
        method = specs.get("method", f"{method.base}@{recipe.variant}")
    file = _artifact_name(method)
    root = Path(opts.weights_root or default_root())
    steps = opts.steps or recipe.steps
    runner = get_runner(opts.backend)
    if runner.name == "inprocess":
        raise UserError("bench train runs methods with the local or docker backend")
    base = resolve(method, opts.weights_root, synthetic=True)  # its declared weights, if present (a fine-tune's)
    ref = runner.prepare(base)
    key = hashlib.sha256(json.dumps([ref, recipe.hash, opts.seed, steps]).encode()).hexdigest()[:16]
    run_dir = root / "runs" / method.name / recipe_name / key
    if opts.restart and run_dir.exists():
        shutil.rmtree(run_dir)
    done = checkpoints(run_dir)
    if opts.resume and not done:
        raise UserError(f"nothing to resume: no complete checkpoint in {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o777 if os.getuid() == 0 else 0o755)  # root runs containers as nobody
    history = _History.load(run_dir)
    last_step, last_ckpt = done[-1] if done else (0, None)
    if last_step:
        _log(f"{method.name} {recipe_name}: resuming at step {last_step} from {last_ckpt}")
    t0 = time.perf_counter()
    spec = base.model_copy(update={"output_dir": run_dir})
    task = {"name": f"train:{recipe_name}", "version": 0, "output": None, "seed": opts.seed}
    with runner.start(spec, opts.seed, task, recipe.timeout_s) as running:
        session = running.session
        header, _ = session.request(
            "train_start",
            {"recipe": recipe_name, "params": recipe.params, "seed": opts.seed,
             "checkpoint": last_ckpt.name if last_ckpt else None},
        )  # fmt: skip
        step = int(header.get("step", 0))
        if step != last_step:
            raise MethodFailure(
                f"train_start: the method says it resumed at step {step}, its checkpoint is {last_step}"
            )
        if last_step:
            history.resumed_at.append(last_step)
        history.losses = [(s, v) for s, v in history.losses if s <= step]
        bar = _progress(steps, step, f"{method.name} {recipe_name}", opts.progress)
        while step < steps:
            header, _ = session.request("train_step")
            loss = header.get("loss")
            step += 1
            if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                kept = f"the last checkpoint (step {last_step}) is kept in {run_dir}" if last_step else "no checkpoint"
                raise MethodFailure(f"training diverged: loss {loss} at step {step}: stopped; {kept}")
            history.losses.append((step, float(loss)))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % recipe.checkpoint_every == 0 or step == steps:
                _save(session, run_dir, step)
                last_step = step
                history.wall_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                history.save(run_dir)
        bar.close()
        tmp = f"unfinished-export-{file}"
        session.request("export_weights", {"path": tmp})
    history.wall_s += time.perf_counter() - t0
    history.save(run_dir)
    return _install(base, recipe_name, recipe, opts, steps, ref, run_dir / tmp, file, root, history, runner.name)


def _save(session, run_dir: Path, step: int) -> None:
    """A checkpoint, written by the method under a temporary name, renamed once it has answered; older ones go."""
    tmp, final = f"unfinished-ckpt-{step:08d}.tmp", run_dir / f"ckpt-{step:08d}.ckpt"
    session.request("save_checkpoint", {"path": tmp})
    if not (run_dir / tmp).is_file():
        raise MethodFailure(f"save_checkpoint: the method wrote no file {tmp} in its output folder")
    os.replace(run_dir / tmp, final)
    for _, old in checkpoints(run_dir)[:-1]:
        old.unlink(missing_ok=True)


@dataclass
class _History:
    """The losses and timing of a run so far, beside its checkpoints (history.json), so a resumed run's record
    covers every step."""

    losses: list
    resumed_at: list
    wall_s: float
    started_at: str

    @classmethod
    def load(cls, run_dir: Path) -> "_History":
        try:
            d = json.loads((run_dir / "history.json").read_text())
            return cls([tuple(x) for x in d["losses"]], d["resumed_at"], d["wall_s"], d["started_at"])
        except (FileNotFoundError, ValueError, KeyError):
            return cls([], [], 0.0, now())

    def save(self, run_dir: Path) -> None:
        write_atomic(run_dir / "history.json", json.dumps(self.__dict__))


def _install(method, recipe_name, recipe, opts, steps, ref, exported: Path, file, root, history, backend):
    if not exported.is_file():
        raise MethodFailure(f"export_weights: the method wrote no file {exported.name} in its output folder")
    sha = file_sha256(exported)
    folder = root / "trained" / sha
    (folder / method.base).mkdir(parents=True, exist_ok=True)
    target = folder / method.base / file
    os.replace(exported, target)
    record = TrainingRecord(
        method=method.name,
        method_ref=ref,
        recipe=recipe_name,
        recipe_hash=recipe.hash,
        params=recipe.params,
        seed=opts.seed,
        steps=steps,
        weights_sha256=sha,
        weights_file=file,
        data="procedural images the method generates (recipe params)",
        losses=history.losses,
        resumed_at=history.resumed_at,
        wall_s=history.wall_s,
        machine=machine(),
        backend=backend,
        started_at=history.started_at,
        finished_at=now(),
    )
    write_atomic(folder / RECORD, record.model_dump_json(indent=1))
    return record, target


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stderr, unit="step")


def records(
    method: specs.MethodSpec, weights_root: Path | None, any_variant: bool = False
) -> list[tuple[TrainingRecord, Path]]:
    """Every artifact of `method` (of any of its variants) in the store, (record, its training.json), oldest first."""
    found = []
    for path in sorted((Path(weights_root or default_root()) / "trained").glob(f"*/{RECORD}")):
        try:
            record = TrainingRecord.model_validate_json(path.read_text())
        except (ValidationError, ValueError):
            _log(f"skipped {path}: not a training record")
            continue
        if record.method == method.name or any_variant and record.method.partition("@")[0] == method.base:
            found.append((record, path))
    return sorted(found, key=lambda rp: rp[0].finished_at)


def trained_weights(method: specs.MethodSpec, selector: str, weights_root: Path | None) -> specs.MethodSpec:
    """`method` with the artifact `selector` names (a sha256 prefix, or a recipe: its latest artifact) as its weights,
    verified by sha256 like downloaded ones; one clear line when none or several match."""
    _artifact_name(method)
    mine = records(method, weights_root)
    matches = [rp for rp in mine if rp[0].recipe == selector] or [
        rp for rp in mine if len(selector) >= 6 and rp[0].weights_sha256.startswith(selector)
    ]
    if not matches:
        if elsewhere := [r.method for r, _ in records(method, weights_root, any_variant=True) if r.recipe == selector]:
            raise UserError(f"{selector!r} trained {elsewhere[-1]}: evaluate it with --method {elsewhere[-1]}")
        have = ", ".join(f"{r.recipe} ({r.weights_sha256[:12]})" for r, _ in mine) or "none"
        raise UserError(f"{method.name}: no trained weights {selector!r} (have: {have}); make them with bench train")
    if len({r.weights_sha256 for r, _ in matches}) > 1 and matches[0][0].recipe != selector:
        raise UserError(f"{method.name}: {selector!r} matches several trained weights: give more of the sha256")
    record, path = matches[-1]
    source = specs.WeightsSource(file=record.weights_file, url=None, sha256=record.weights_sha256)
    return method.model_copy(update={"weights": source, "weights_root": path.parent, "training": str(path)})
