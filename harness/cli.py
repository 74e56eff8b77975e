"""`bench`: run methods on tasks, list specs, build the leaderboard. User errors exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tabulate import tabulate

from harness import specs
from harness.errors import UserError
from harness.results import ResultStore, json_schema
from harness.specs import REPO_ROOT

DEFAULT_LEADERBOARD = REPO_ROOT / "leaderboard" / "README.md"


def _csv(kind: type):
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="local", help="where the method runs (default: local)")
    p.add_argument("--data", choices=["real", "synthetic"], default=None,
                   help="real datasets under the data root, or procedural stand-ins (default: real; suites may say)")
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("BENCH_DATA", "data")),
                   help="where datasets live (env BENCH_DATA, default ./data)")
    p.add_argument("--results", type=Path, default=None, help="results folder (env BENCH_RESULTS, "
                                                              "default leaderboard/results)")
    p.add_argument("--force", action="store_true", help="re-run cells that already have a result")
    p.add_argument("--timeout", type=float, default=None, help="seconds per cell (default: the task's)")
    p.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list tasks, methods or suites")
    p.add_argument("kind", choices=["tasks", "methods", "suites"])

    p = sub.add_parser("run", help="run one method on one task")
    p.add_argument("--method", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, default=0)
    _add_run_options(p)

    p = sub.add_parser("matrix", help="run every method x task x seed of a suite")
    p.add_argument("--suite", required=True)
    p.add_argument("--methods", type=_csv(str), default=None, help="comma-separated (default: the suite's)")
    p.add_argument("--seeds", type=_csv(int), default=None, help="comma-separated (default: the suite's)")
    _add_run_options(p)

    p = sub.add_parser("leaderboard", help="aggregate results into the markdown leaderboard")
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--out", type=Path, default=DEFAULT_LEADERBOARD)

    p = sub.add_parser("schema", help="print the JSON Schema of result files")
    p.add_argument("--out", type=Path, default=None)
    return parser


def _options(args):
    from harness.run import RunOptions

    return RunOptions(backend=args.backend, synthetic=args.data == "synthetic", data_root=args.data_root,
                      force=args.force, timeout_s=args.timeout, progress=not args.no_progress,
                      num_workers=args.workers)


def cmd_list(args) -> int:
    if args.kind == "tasks":
        rows = [(t.name, t.version, t.protocol, t.dataset, t.output, t.description) for t in specs.load_all("task")]
        headers = ["task", "version", "protocol", "dataset", "needs", "description"]
    elif args.kind == "methods":
        rows = [(m.name, m.version, ",".join(m.outputs), m.patch_size or "", "yes" if m.baseline else "",
                 m.image or "(built from images/" + m.name + ")", m.description) for m in specs.load_all("method")]
        headers = ["method", "version", "outputs", "patch", "baseline", "image", "description"]
    else:
        rows = [(s.name, ",".join(s.tasks), ",".join(s.methods or ["(baselines)"]), ",".join(map(str, s.seeds)),
                 s.data, s.description) for s in specs.load_all("suite")]
        headers = ["suite", "tasks", "methods", "seeds", "data", "description"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    return 0


def cmd_run(args) -> int:
    from harness.run import run_cell

    opts = _options(args)
    result = run_cell(args.method, args.task, args.seed, opts, ResultStore(args.results))
    return 0 if result.status == "ok" else 1


def cmd_matrix(args) -> int:
    from harness.run import run_matrix

    if args.data is None:
        args.data = specs.get("suite", args.suite).data
    results = run_matrix(args.suite, _options(args), ResultStore(args.results), args.methods, args.seeds)
    bad = [r for r in results if r.status != "ok"]
    print(f"bench: {len(results)} cells, {len(results) - len(bad)} ok, {len(bad)} failed or timed out",
          file=sys.stderr)
    return 0 if not bad else 1


def cmd_leaderboard(args) -> int:
    from harness import leaderboard

    print(leaderboard.write(ResultStore(args.results).all(), args.out))
    print(f"bench: wrote {args.out}", file=sys.stderr)
    return 0


def cmd_schema(args) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "matrix": cmd_matrix, "leaderboard": cmd_leaderboard,
            "schema": cmd_schema}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
