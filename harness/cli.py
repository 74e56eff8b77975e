"""`bench`: run methods on tasks, list specs, build the leaderboard. User errors exit 2 with one line."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError
from tabulate import tabulate

from harness import specs
from harness.errors import MethodFailure, UserError
from harness.lifetime import Interrupted, interruptible
from harness.results import ResultStore, json_schema
from harness.specs import REPO_ROOT

DEFAULT_LEADERBOARD = REPO_ROOT / "leaderboard" / "README.md"


class _Parser(argparse.ArgumentParser):
    """Bad arguments are user errors like any other: one line, exit 2 (main prints it)."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _checked(annotated):
    """An argparse type: the text validated as `annotated` (e.g. specs.Seconds), pydantic's reason its message."""
    adapter = TypeAdapter(annotated)

    def parse(text: str):
        try:
            return adapter.validate_python(text)
        except ValidationError as e:
            raise argparse.ArgumentTypeError(f"{e.errors()[0]['msg']}, got {text!r}") from None

    return parse


_seconds, _seed, _workers = _checked(specs.Seconds), _checked(specs.Seed), _checked(Annotated[int, Field(ge=0)])


def _csv(kind):
    return lambda s: [kind(x.strip()) for x in s.split(",") if x.strip()]


def _add_run_options(
    p: argparse.ArgumentParser,
    runner: bool = True,
    results: bool = True,
    data_help: str = "default: real; suites may say",
    force_help: str = "re-run cells that already have a result",
) -> None:
    if runner:
        p.add_argument(
            "--backend",
            default="local",
            help="where the method runs: local (default), docker "
            "(sandboxed images) or inprocess (unsandboxed, no time limit)",
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="override a task parameter (repeatable); results are kept apart as task+NAME=VALUE",
        )
    else:
        p.set_defaults(backend="external", timeout=None)
    p.add_argument(
        "--data",
        choices=["real", "synthetic"],
        default=None,
        help=f"real datasets under the data root, or procedural stand-ins ({data_help})",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("BENCH_DATA", "data")),
        help="where datasets live (env BENCH_DATA, default ./data)",
    )
    if results:
        _add_results(p)
    p.add_argument("--force", action="store_true", help=force_help)
    if runner:
        _add_weights_root(p)
        p.add_argument("--timeout", type=_seconds, default=None, help="seconds per cell (default: the task's)")
        p.add_argument(
            "--no-cache",
            action="store_true",
            help="send every request to the method: no reply is read from or written to the feature cache",
        )
    p.add_argument("--workers", type=_workers, default=2, help="data loading processes (default 2)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_slurm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Slurm (--executor slurm)")
    g.add_argument("--executor", choices=["local", "slurm"], default="local", help="run cells here, or as Slurm jobs")
    for flag in ("partition", "account", "qos"):
        g.add_argument(f"--{flag}", default=None, help=f"sbatch --{flag}")
    g.add_argument("--max-parallel", type=_checked(Annotated[int, Field(ge=1)]), default=None, help="jobs at once")
    g.add_argument(
        "--max-retries", type=_workers, default=2, help="resubmissions or requeues of a cell's job (default 2)"
    )
    g.add_argument("--detach", action="store_true", help="submit and exit; `bench status` shows the cells")


def _add_results(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--results", type=Path, default=None, help="results folder (env BENCH_RESULTS, default leaderboard/results)"
    )


def _add_weights_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights-root",
        type=Path,
        default=None,
        help="where declared weights files live, as <root>/<method>/<file> (env BENCH_WEIGHTS_ROOT, default ./weights)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list tasks, methods or suites")
    p.add_argument("kind", choices=["tasks", "methods", "suites"])

    p = sub.add_parser("run", help="run one method on one task")
    p.add_argument("--method", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument(
        "--weights", default=None, metavar="SHA256_PREFIX|RECIPE", help="evaluate weights `bench train` made"
    )
    _add_run_options(p)

    p = sub.add_parser("train", help="run a method's training recipe into a weights artifact (resumable)")
    p.add_argument("--method", required=True)
    p.add_argument("--recipe", required=True, help="one of the method.yaml's `recipes:`")
    p.add_argument("--backend", default="local", help="local (default) or docker (sandboxed, writes only its output)")
    p.add_argument("--steps", type=_checked(Annotated[int, Field(ge=1)]), default=None, help="default: the recipe's")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint (a rerun does anyway)")
    p.add_argument("--restart", action="store_true", help="discard the run's checkpoints and start again")
    p.add_argument(
        "--data", choices=["synthetic"], default="synthetic", help="the recipes here generate their own images"
    )
    _add_weights_root(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = sub.add_parser("matrix", help="run every method x task x seed of a suite")
    p.add_argument("--suite", required=True)
    p.add_argument("--methods", type=_csv(str), default=None, help="comma-separated (default: the suite's)")
    p.add_argument("--seeds", type=_csv(_seed), default=None, help="comma-separated (default: the suite's)")
    _add_run_options(p)
    _add_slurm_options(p)
    for name, help_ in (
        ("status", "per-cell state of the matrices submitted to Slurm (pending/running/done/failed/timed out)"),
        ("cancel", "cancel the pending and running Slurm jobs of submitted matrices"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--suite", default=None, help="default: every suite submitted to this results folder")
        _add_results(p)

    p = sub.add_parser("inputs", help="export the exact inputs a task sends, for a method run outside the harness")
    p.add_argument("--task", required=True)
    p.add_argument("--out", type=Path, required=True, help="folder to create: manifest.json and requests/")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument(
        "--info",
        type=Path,
        default=None,
        help="JSON file: the method's contract `info` (outputs, patch_size, embed_dim, ...)",
    )
    p.add_argument("--patch-size", type=int, default=None, help="pixels per patch side (dense tasks)")
    p.add_argument("--embed-dim", type=int, default=None, help="feature width (global and dense tasks)")
    p.add_argument(
        "--no-background",
        action="store_true",
        help="the masks have no background slot (info masks_have_background: false)",
    )
    _add_run_options(
        p, runner=False, results=False, data_help="default: real", force_help="replace an existing --out folder"
    )

    p = sub.add_parser("score", help="score outputs saved for the inputs of `bench inputs` (result marked external)")
    p.add_argument("--task", required=True)
    p.add_argument("--outputs", type=Path, required=True, help="the folder of `bench inputs`, with replies/ added")
    p.add_argument("--name", default=None, help="the method's name in results (default: the folder's name)")
    p.add_argument("--seed", type=_seed, default=None, help="default: the one the inputs were exported with")
    _add_run_options(p, runner=False, data_help="default: as exported")

    p = sub.add_parser("leaderboard", help="aggregate results into the leaderboard: markdown, index.html, plots/")
    p.add_argument("--results", type=Path, default=None)
    p.add_argument(
        "--from",
        dest="sources",
        type=Path,
        action="append",
        metavar="DIR",
        help="a results folder to merge (repeatable: the folders of several machines; default: --results)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_LEADERBOARD, help="the markdown; index.html, plots/ beside it")

    p = sub.add_parser("schema", help="print the JSON Schema of result files")
    p.add_argument("--out", type=Path, default=None)
    _add_data_parser(sub)
    _add_weights_parser(sub)
    _add_cache_parser(sub)
    _add_image_parsers(sub)
    _add_ci_parsers(sub)
    return parser


def _add_ci_parsers(sub) -> None:
    """`bench regress` and `bench ci plan`: regression checks against stored baselines, and the cells a change
    touches."""
    p = sub.add_parser("regress", help="compare results with a suite's baseline; exit 1 on a regression")
    p.add_argument("--baseline", type=Path, required=True, help="leaderboard/baselines/<suite>.json")
    _add_results(p)
    p.add_argument("--abs-tol", type=float, default=None, help="allowed change of any number (overrides the rules)")
    p.add_argument("--rel-tol", type=float, default=None, help="allowed change as a fraction of the number")
    p.add_argument(
        "--strict",
        action="store_true",
        help="improvements and stale baseline numbers fail too (a deterministic baseline: update it with the change)",
    )
    p.add_argument("--update", action="store_true", help="rewrite the baseline's cells from the current results")
    p.add_argument(
        "--summary", type=Path, default=None, help="append a markdown summary here (default: $GITHUB_STEP_SUMMARY)"
    )
    p = sub.add_parser("ci", help="continuous integration helpers")
    ci = p.add_subparsers(dest="ci_command", required=True)
    p = ci.add_parser("plan", help="the cells (method, task, seeds, data) a change set touches")
    p.add_argument("--changed", nargs="*", default=[], metavar="FILE", help="changed files, relative to the repo")
    p.add_argument("--json", action="store_true", help="print JSON: {cells: [...], changes: [...]}")


def _add_weights_parser(sub) -> None:
    """`bench weights list|fetch`."""
    p = sub.add_parser("weights", help="list or download the weights files methods declare")
    weights = p.add_subparsers(dest="weights_command", required=True)
    p = weights.add_parser("list", help="every method and variant with weights: file, expected path, checksum")
    _add_weights_root(p)
    p = weights.add_parser(
        "fetch", help="download, verify and install a method's weights (records a checksum where none is published)"
    )
    p.add_argument("methods", nargs="+", metavar="METHOD[@VARIANT]")
    _add_weights_root(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _duration(text: str) -> float:
    """`90s`, `30m`, `12h`, `7d` (or plain seconds) -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"a duration like 90s, 30m, 12h or 7d, got {text!r}")
    return seconds


def _add_cache_parser(sub) -> None:
    """`bench cache ls|du|prune`."""
    p = sub.add_parser("cache", help="the feature cache of method replies: list, size, prune")
    cache = p.add_subparsers(dest="cache_command", required=True)
    for name, help_ in (
        ("ls", "per method: entries, size, last used"),
        ("du", "the cache's total size and its limit"),
        ("prune", "remove entries by age or method (least recently used first when over the size limit)"),
    ):
        p = cache.add_parser(name, help=help_)
        _add_results(p)
        p.add_argument(
            "--cache", type=Path, default=None, help="env BENCH_CACHE, default feature-cache/ beside --results"
        )
        if name != "du":
            p.add_argument("--method", default=None, help="only this method's entries (METHOD[@VARIANT])")
        if name == "prune":
            p.add_argument("--older-than", type=_duration, default=None, metavar="D", help="last used before: 7d, 12h")
            p.add_argument("--all", action="store_true", help="every entry (of --method, if given)")


def _add_data_parser(sub) -> None:
    """`bench data list|check|fingerprint|synth|fetch`."""
    root = argparse.ArgumentParser(add_help=False)
    root.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("BENCH_DATA", "data")),
        help="where datasets live (env BENCH_DATA, default ./data)",
    )
    stand_in = argparse.ArgumentParser(add_help=False)
    stand_in.add_argument("--scale", choices=["tiny", "small"], default="tiny", help="procedural stand-in size")
    stand_in.add_argument("--seed", type=_seed, default=0, help="procedural stand-in seed")
    kind = argparse.ArgumentParser(add_help=False, parents=[stand_in])
    kind.add_argument(
        "--data",
        choices=["real", "synthetic"],
        default="real",
        help="the real dataset under the data root, or its procedural stand-in (made if absent)",
    )
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = sub.add_parser("data", help="list, check, fingerprint, generate or download datasets")
    data = p.add_subparsers(dest="data_command", required=True)
    p = data.add_parser("list", parents=[root], help="every dataset: where it is expected, whether it is there")
    p.add_argument("--markdown", action="store_true", help="the README's markdown table (no 'present' column)")
    p = data.add_parser("check", parents=[root, kind, quiet], help="list every problem of datasets; exit 2 if any")
    p.add_argument("names", nargs="*", metavar="NAME", help="default: all present (all with --data synthetic)")
    p.add_argument("--sample", type=int, default=16, help="images (and masks) decoded per split, evenly spread")
    p.add_argument("--full", action="store_true", help="decode every image and mask")
    p = data.add_parser("fingerprint", parents=[root, kind], help="content fingerprint of a dataset folder")
    p.add_argument("name")
    p.add_argument("--full", action="store_true", help="sha256 of every file's whole content (slow)")
    p = data.add_parser("synth", parents=[root, stand_in], help="generate procedural stand-ins")
    p.add_argument("names", nargs="*", metavar="NAME", help="datasets, or 'all' (default)")
    p = data.add_parser("fetch", parents=[root, quiet], help="download, verify and install the official archives")
    p.add_argument("name")
    p.add_argument(
        "--sources",
        type=Path,
        default=None,
        help="registry of archives (env BENCH_SOURCES, default harness/data/sources.yaml)",
    )


def _options(args):
    from harness.run import RunOptions

    return RunOptions(
        backend=args.backend,
        synthetic=args.data == "synthetic",
        data_root=args.data_root,
        weights_root=getattr(args, "weights_root", None),
        force=args.force,
        timeout_s=args.timeout,
        progress=not args.no_progress,
        num_workers=args.workers,
        cache=not getattr(args, "no_cache", False),
    )


def cmd_list(args) -> int:
    if args.kind == "tasks":
        rows = [(t.name, t.version, t.protocol, t.dataset, t.output, t.description) for t in specs.load_all("task")]
        headers = ["task", "version", "protocol", "dataset", "needs", "description"]
    elif args.kind == "methods":
        rows = [
            (
                m.name,
                m.version,
                ",".join(m.outputs),
                m.patch_size or "",
                m.embed_dim or "",
                "yes" if m.baseline and not m.variant_name else "",
                m.weights if isinstance(m.weights, str) else m.weights.file if m.weights else "",
                m.image or f"(built from {_shown(m.folder)})",
                m.description,
            )
            for m in specs.load_all("method")
        ]
        headers = ["method", "version", "outputs", "patch", "dim", "baseline", "weights", "image", "description"]
    else:
        rows = [
            (
                s.name,
                ",".join(s.tasks),
                ",".join(s.methods or ["(baselines)"]),
                ",".join(map(str, s.seeds)),
                s.data,
                s.description,
            )
            for s in specs.load_all("suite")
        ]
        headers = ["suite", "tasks", "methods", "seeds", "data", "description"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    return 0


def _shown(path: Path) -> str:
    """`path` relative to the repository when inside it (images/dino), else as it is (a BENCH_IMAGES folder)."""
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _overrides(pairs: list[str]) -> dict[str, str]:
    """--set NAME=VALUE pairs; a malformed one is one line naming it."""
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.strip():
            raise UserError(f"--set {pair!r}: expected NAME=VALUE, e.g. --set k=5")
        out[name.strip()] = value.strip()
    return out


def cmd_run(args) -> int:
    from harness.run import run_cell

    opts = _options(args)
    task = specs.get("task", args.task).with_overrides(_overrides(args.overrides))
    method = specs.get("method", args.method)
    if args.weights:
        from harness.training import trained_weights

        method = trained_weights(method, args.weights, args.weights_root)
        opts.weights_root = None  # the spec points at the artifact's own folder
    result = run_cell(method, task, args.seed, opts, ResultStore(args.results))
    return 0 if result.status == "ok" else 1


def cmd_train(args) -> int:
    from harness.training import TrainOptions, train

    opts = TrainOptions(
        backend=args.backend,
        weights_root=args.weights_root,
        steps=args.steps,
        seed=args.seed,
        resume=args.resume,
        restart=args.restart,
        progress=not args.no_progress,
    )
    try:
        record, path = train(specs.get("method", args.method), args.recipe, opts)
    except MethodFailure as e:
        tail = [ln for ln in e.log_tail.splitlines() if ln.strip()][-1:]
        print(
            f"bench: {args.method} {args.recipe}: {e}" + (f" (log: {tail[0][:300]})" if tail else ""), file=sys.stderr
        )
        return 1
    loss = f"loss {record.losses[0][1]:.4f} -> {record.losses[-1][1]:.4f}" if record.losses else "no steps"
    print(
        f"bench: {record.method} {record.recipe}: {record.steps} steps ({loss}) in {record.wall_s:.1f}s -> {path}\n"
        f"bench: evaluate them with: bench run --method {record.method} --task TASK --weights {record.recipe} "
        f"(or --weights {record.weights_sha256[:12]})",
        file=sys.stderr,
    )
    print(record.weights_sha256)
    return 0


def cmd_matrix(args) -> int:
    from harness.run import run_matrix

    suite = specs.get("suite", args.suite)
    if args.data is None:
        args.data = suite.data
    cells = (suite, _options(args))
    rest = (ResultStore(args.results), args.methods, args.seeds, _overrides(args.overrides))
    if args.executor == "local":
        if args.detach:
            raise UserError("--detach needs --executor slurm (a local matrix runs here, attached)")
        results, raised = run_matrix(*cells, *rest), 0
    else:
        from harness.slurm import SlurmOptions, run_matrix_slurm

        sopts = SlurmOptions(**{k: getattr(args, k) for k in ("partition", "account", "qos", "max_parallel")})
        sopts.max_retries, sopts.detach = args.max_retries, args.detach
        sopts.poll_s = float(os.environ.get("BENCH_SLURM_POLL_S", sopts.poll_s))
        if (outcome := run_matrix_slurm(*cells, sopts, *rest)) is None:
            return 0
        results, raised = outcome
    bad = [r for r in results if r.status != "ok"]
    n, failed = len(results) + raised, len(bad) + raised
    print(f"bench: {n} cells, {n - failed} ok, {failed} failed or timed out", file=sys.stderr)
    return 0 if not failed else 1


def cmd_status(args) -> int:
    from harness.slurm import render_status, status

    rows, counts = status(ResultStore(args.results), args.suite)
    print(render_status(rows))
    print("bench: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())), file=sys.stderr)
    return 0


def cmd_cancel(args) -> int:
    from harness.slurm import cancel

    n = cancel(ResultStore(args.results), args.suite)
    print(f"bench: cancelled {n} slurm job(s)" + (f" of suite {args.suite}" if args.suite else ""), file=sys.stderr)
    return 0


def cmd_inputs(args) -> int:
    from harness.external import export_inputs

    info = {}
    if args.info is not None:
        try:
            info = json.loads(args.info.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"not a readable JSON file ({e})", where=args.info) from None
        if not isinstance(info, dict):
            raise UserError("must hold a JSON object (the contract's info reply)", where=args.info)
    flags = {
        "patch_size": args.patch_size,
        "embed_dim": args.embed_dim,
        "masks_have_background": False if args.no_background else None,
    }
    info |= {k: v for k, v in flags.items() if v is not None}
    export_inputs(
        args.task,
        args.out,
        args.seed,
        info,
        _options(args),
        force=args.force,
        info_source=str(args.info) if args.info else None,
    )
    return 0


def cmd_score(args) -> int:
    from harness.external import score_outputs

    result = score_outputs(
        args.task, args.outputs, args.name, args.seed, args.data, _options(args), ResultStore(args.results)
    )
    return 0 if result.status == "ok" else 1


def cmd_leaderboard(args) -> int:
    from harness import leaderboard

    results, files = leaderboard.load(args.sources or [ResultStore(args.results).root], must_exist=bool(args.sources))
    board, made, drawn = leaderboard.write(results, files, args.out)
    where = f"{args.out.parent / 'plots'}/"
    print(
        f"bench: wrote {args.out}, {args.out.parent / 'index.html'} and {made} plots in {where} ({drawn} redrawn)",
        file=sys.stderr,
    )
    print(leaderboard.markdown.summaries(board), end="")
    return 0


def cmd_schema(args) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")
    return 0


def _dataset_names(names: list[str]) -> list[str]:
    from harness.data import DATASETS
    from harness.errors import DataError

    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise DataError(f"unknown dataset '{unknown[0]}'; known: {', '.join(sorted(DATASETS))}")
    return names


def cmd_data_list(args) -> int:
    from harness.data import DATASETS
    from harness.data.check import presence
    from harness.data.fetch import load_sources

    fetchable = load_sources()
    rows = []
    for name, reader in sorted(DATASETS.items()):
        root = args.data_root / reader.subdir
        splits = ", ".join(
            f"{s} {reader.official_counts[s]:,}" if s in reader.official_counts else s for s in reader.split_names
        )
        how = f"`bench data fetch {name}`" if name in fetchable else reader.how_to_get
        if args.markdown:  # the README's table: paths relative to the data root, nothing about this machine
            rows.append((name, f"`<data root>/{reader.subdir}`", splits, how))
        else:
            rows.append((name, str(root), presence(reader, root), splits, how.strip("`")))
    headers = [
        "dataset",
        "expected at",
        *([] if args.markdown else ["present"]),
        "splits (official counts)",
        "how to get",
    ]
    print(
        tabulate(
            rows,
            headers=headers,
            tablefmt="github" if args.markdown else "simple",
            disable_numparse=True,
            maxcolwidths=None if args.markdown else [None, None, None, 40, 60],
        )
    )
    return 0


def cmd_data_check(args) -> int:
    from harness.data import DATASETS, synthetic_root
    from harness.data.check import check_folder, presence
    from harness.errors import DataError

    synthetic = args.data == "synthetic"
    names = _dataset_names(args.names) or [
        n for n, r in sorted(DATASETS.items()) if synthetic or presence(r, args.data_root / r.subdir) != "missing"
    ]
    if not names:
        raise DataError(f"no dataset found under {args.data_root}; `bench data list` shows where each belongs")
    rows = []
    for name in names:
        reader = DATASETS[name]
        root = args.data_root / reader.subdir
        try:
            root = synthetic_root(reader, args.data_root, args.scale, args.seed) if synthetic else root
            found = check_folder(reader, root, args.sample, args.full, progress=not args.no_progress)
        except DataError as err:
            found = [str(err)]
        for line in found:
            print(line)
        rows.append((name, presence(reader, root), str(root), len(found), "FAIL" if found else "pass"))
    print(
        tabulate(
            rows, headers=["dataset", "data", "folder", "problems", "result"], tablefmt="simple", disable_numparse=True
        )
    )
    return 2 if any(row[-1] == "FAIL" for row in rows) else 0


def cmd_data_fingerprint(args) -> int:
    from harness.data import fingerprint, open_dataset

    reader = open_dataset(args.name, args.data_root, args.data == "synthetic", args.seed, args.scale)
    print(f"{fingerprint(reader.root, full=args.full)}  {reader.root}")
    return 0


def cmd_data_synth(args) -> int:
    from harness.data import DATASETS, synthetic_root

    names = sorted(DATASETS) if args.names in ([], ["all"]) else _dataset_names(args.names)
    rows = [
        (n, args.scale, args.seed, str(synthetic_root(DATASETS[n], args.data_root, args.scale, args.seed)))
        for n in names
    ]
    print(tabulate(rows, headers=["dataset", "scale", "seed", "folder"], tablefmt="simple", disable_numparse=True))
    return 0


def cmd_data_fetch(args) -> int:
    from harness.data import DATASETS
    from harness.data.check import check_folder
    from harness.data.fetch import fetch

    target = fetch(args.name, args.data_root, args.sources, progress=not args.no_progress)
    found = check_folder(DATASETS[args.name], target, progress=not args.no_progress)
    for line in found:
        print(line)
    print(f"{args.name}: {'usable' if not found else f'{len(found)} problem(s)'} at {target}")
    return 2 if found else 0


DATA_COMMANDS = {
    "list": cmd_data_list,
    "check": cmd_data_check,
    "fingerprint": cmd_data_fingerprint,
    "synth": cmd_data_synth,
    "fetch": cmd_data_fetch,
}


def cmd_data(args) -> int:
    return DATA_COMMANDS[args.data_command](args)


def cmd_weights(args) -> int:
    from harness import weights

    if args.weights_command == "list":
        rows = []
        for m in specs.load_all("method"):
            if m.weights is not None:
                m = m.model_copy(update={"weights_root": args.weights_root}) if args.weights_root else m
                rows.append((m.name, *weights.status(m)))
        if not rows:
            print("no method declares weights")
            return 0
        headers = ["method", "file", "expected at", "present", "checksum"]
        print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
        return 0
    methods = [specs.get("method", name) for name in dict.fromkeys(args.methods)]  # every name checked first
    for method in methods:
        if args.weights_root:
            method = method.model_copy(update={"weights_root": args.weights_root})
        print(weights.fetch(method, progress=not args.no_progress))
    return 0


def cmd_cache(args) -> int:
    from harness.cache import FeatureCache, cache_root

    cache = FeatureCache(args.cache or cache_root(ResultStore(args.results).root))
    if args.cache_command == "prune":
        if args.older_than is None and not args.all:
            raise UserError("bench cache prune: say what to remove: --older-than D, --all (with --method: its entries)")
        n, size = cache.prune(args.older_than, args.method)
        print(f"removed {n} entries ({_size(size)}) from {cache.root}")
        return 0
    entries = cache.entries(getattr(args, "method", None))
    if args.cache_command == "du":
        print(
            f"{_size(sum(e.bytes for e in entries))} in {len(entries)} entries, limit {_size(cache.limit)}: {cache.root}"
        )
        return 0
    rows = []
    for method in sorted({e.method for e in entries}):
        mine = [e for e in entries if e.method == method]
        used = dt.datetime.fromtimestamp(max(e.used for e in mine)).isoformat(" ", "seconds")
        rows.append((method, len(mine), _size(sum(e.bytes for e in mine)), used))
    print(tabulate(rows, headers=["method", "entries", "size", "last used"]) if rows else f"{cache.root}: empty")
    return 0


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _add_image_parsers(sub) -> None:
    """`bench build METHOD`, `bench validate IMAGE` and `bench submit IMAGE --name NAME`: method images."""
    p = sub.add_parser("build", help="build a method's docker image (on BENCH_BASE_IMAGE) and print its image ID")
    p.add_argument("method")
    p.add_argument(
        "--dockerfile",
        action="store_true",
        help="only print the Dockerfile it is built from (the folder's own, or the one generated for it)",
    )
    for name, help_ in (
        ("validate", "check a method image against the contract, in the docker sandbox"),
        ("submit", "validate an image pushed to a registry and write images/NAME/method.yaml"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "image",
            help="REPO@sha256:..., REPO:TAG or a local image ID"
            + (
                ", or METHOD[@VARIANT]: that method's image, with its method.yaml's fit recipe"
                if name == "validate"
                else ""
            ),
        )
        p.add_argument(
            "--data-root",
            type=Path,
            default=Path(os.environ.get("BENCH_DATA", "data")),
            help="where procedural stand-ins are made (env BENCH_DATA, default ./data)",
        )
        p.add_argument("--timeout", type=_seconds, default=600, help="seconds per check (default 600)")
        p.add_argument("--tasks", type=_csv(str), default=None, help="comma-separated (default: the smoke suite's)")
    p.add_argument("--name", required=True, help="the method's name (its folder under images/)")
    for meta in ("description", "paper", "code", "license"):
        p.add_argument(f"--{meta}", default=None)
    p.add_argument("--images-dir", type=Path, default=REPO_ROOT / "images", help="default: images/")
    p.add_argument("--force", action="store_true", help="overwrite an existing method.yaml")


def _validated(args, method: specs.MethodSpec | None = None):
    from harness.validate import validate

    resolved, info, checks = validate(args.image, args.data_root, args.timeout, args.tasks, method)
    rows = [(c.name, {True: "pass", False: "FAIL", None: "-"}[c.ok], c.detail) for c in checks]
    print(
        tabulate(
            rows,
            headers=["check", "result", "detail"],
            tablefmt="simple",
            disable_numparse=True,
            maxcolwidths=[None, None, 90],
        )
    )
    ok = all(c.ok is not False for c in checks)
    print(f"bench: {args.image}: {'conforms to' if ok else 'does NOT conform to'} the contract", file=sys.stderr)
    return resolved, info, ok


def cmd_build(args) -> int:
    from harness.runners.images import method_dockerfile, resolve_method

    method = specs.get("method", args.method)
    if args.dockerfile:
        path = method_dockerfile(method)
        print(f"# {path.relative_to(REPO_ROOT)}\n{path.read_text()}", end="")
    else:
        print(resolve_method(method).id)
    return 0


def cmd_validate(args) -> int:
    return 0 if _validated(args, _method_named(args.image))[2] else 1


def _method_named(name: str) -> specs.MethodSpec | None:
    """The method (or method@variant) `name` names, or None where it names none (an image reference)."""
    return specs.get("method", name) if name.partition("@")[0] in specs.names("method") else None


def cmd_submit(args) -> int:
    from harness.runners.images import resolve
    from harness.validate import candidate_yaml

    target = args.images_dir / args.name / "method.yaml"
    specs.check_method_name(args.name, "--name")
    if target.exists() and not args.force:
        raise UserError(f"{target} already exists (--force to overwrite)")
    if "@sha256:" not in resolve(args.image).ref:
        raise UserError(
            f"image {args.image} has no registry digest: push it to a registry, then submit "
            "REPO@sha256:<digest> (or the pushed REPO:TAG)"
        )
    resolved, info, ok = _validated(args)
    if not ok:
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        candidate_yaml(
            args.name,
            resolved.ref,
            info,
            description=args.description,
            paper=args.paper,
            code=args.code,
            license=args.license,
        )
    )
    specs.load_spec(specs.MethodSpec, target)  # what we wrote must load
    print(f"wrote {target} (pinned to {resolved.ref})")
    print(f"to submit it, commit that file:\n  git add {target}\n  git commit -m 'Add method {args.name}'")
    return 0


def cmd_regress(args) -> int:
    from pydantic import ValidationError

    from harness import regress

    try:
        cli_tol = None
        if args.abs_tol is not None or args.rel_tol is not None:
            cli_tol = regress.Tolerance(abs=args.abs_tol or 0.0, rel=args.rel_tol or 0.0)
    except ValidationError:
        raise UserError("--abs-tol and --rel-tol take numbers >= 0") from None
    suite = regress.suite_of(args.baseline)
    baseline = regress.load(args.baseline)
    if baseline is None and not args.update:
        raise UserError("no baseline here: `bench regress --update` writes one from the results", where=args.baseline)
    store = ResultStore(args.results)
    current = regress.current_results(store.all(), suite)
    if args.update and not current:
        raise UserError(f"no results of suite {suite.name} in {store.root}: run `bench matrix --suite {suite.name}`")
    rows = regress.compare(baseline or regress.Baseline(suite=suite.name, updated_at="", cells=[]), current, cli_tol)
    failing = regress.failed(rows, args.strict) and not args.update
    print(regress.table(rows) or "No cell changed.")
    print(f"bench regress: {args.baseline}: {regress.counts(rows)}")
    if summary := args.summary or regress.summary_path():
        regress.append_summary(summary, regress.markdown(rows, args.baseline, failing))
    if args.update:
        regress.write(regress.updated(baseline, suite.name, current), args.baseline)
        print(f"bench: wrote {args.baseline}", file=sys.stderr)
    return 1 if failing else 0


def cmd_ci(args) -> int:
    from harness import ciplan

    plan = ciplan.plan(args.changed)
    print(json.dumps(plan.as_json(), indent=2) if args.json else plan.render())
    return 0


COMMANDS = {
    "list": cmd_list,
    "run": cmd_run,
    "train": cmd_train,
    "matrix": cmd_matrix,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "inputs": cmd_inputs,
    "score": cmd_score,
    "leaderboard": cmd_leaderboard,
    "schema": cmd_schema,
    "data": cmd_data,
    "weights": cmd_weights,
    "cache": cmd_cache,
    "build": cmd_build,
    "validate": cmd_validate,
    "submit": cmd_submit,
    "regress": cmd_regress,
    "ci": cmd_ci,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with interruptible():  # SIGTERM too stops the method and cleans up, as Ctrl-C does
            return COMMANDS[args.command](args)
    except UserError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"bench: {'terminated' if signum == signal.SIGTERM else 'interrupted'}", file=sys.stderr, flush=True)
        if argv is None:  # bench itself, not a caller's main([...]): its methods are stopped and its folders gone, so
            sys.stdout.flush()  # exit now, without the second or two Python takes to tear down torch
            os._exit(128 + signum)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
