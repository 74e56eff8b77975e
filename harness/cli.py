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
    _add_data_parser(sub)
    return parser


def _add_data_parser(sub) -> None:
    """`bench data list|check|fingerprint|synth|fetch`."""
    root = argparse.ArgumentParser(add_help=False)
    root.add_argument("--data-root", type=Path, default=Path(os.environ.get("BENCH_DATA", "data")),
                      help="where datasets live (env BENCH_DATA, default ./data)")
    stand_in = argparse.ArgumentParser(add_help=False)
    stand_in.add_argument("--scale", choices=["tiny", "small"], default="tiny", help="procedural stand-in size")
    stand_in.add_argument("--seed", type=int, default=0, help="procedural stand-in seed")
    kind = argparse.ArgumentParser(add_help=False, parents=[stand_in])
    kind.add_argument("--data", choices=["real", "synthetic"], default="real",
                      help="the real dataset under the data root, or its procedural stand-in (made if absent)")
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
    p.add_argument("--sources", type=Path, default=None,
                   help="registry of archives (env BENCH_SOURCES, default harness/data/sources.yaml)")


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
        splits = ", ".join(f"{s} {reader.official_counts[s]:,}" if s in reader.official_counts else s
                           for s in reader.split_names)
        how = f"`bench data fetch {name}`" if name in fetchable else reader.how_to_get
        if args.markdown:  # the README's table: paths relative to the data root, nothing about this machine
            rows.append((name, f"`<data root>/{reader.subdir}`", splits, how))
        else:
            rows.append((name, str(root), presence(reader, root), splits, how.strip("`")))
    headers = ["dataset", "expected at", *([] if args.markdown else ["present"]), "splits (official counts)",
               "how to get"]
    print(tabulate(rows, headers=headers, tablefmt="github" if args.markdown else "simple", disable_numparse=True,
                   maxcolwidths=None if args.markdown else [None, None, None, 40, 60]))
    return 0


def cmd_data_check(args) -> int:
    from harness.data import DATASETS, synthetic_root
    from harness.data.check import check_folder, presence
    from harness.errors import DataError

    synthetic = args.data == "synthetic"
    names = _dataset_names(args.names) or [
        n for n, r in sorted(DATASETS.items()) if synthetic or presence(r, args.data_root / r.subdir) != "missing"]
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
    print(tabulate(rows, headers=["dataset", "data", "folder", "problems", "result"], tablefmt="simple",
                   disable_numparse=True))
    return 2 if any(row[-1] == "FAIL" for row in rows) else 0


def cmd_data_fingerprint(args) -> int:
    from harness.data import fingerprint, open_dataset

    reader = open_dataset(args.name, args.data_root, args.data == "synthetic", args.seed, args.scale)
    print(f"{fingerprint(reader.root, full=args.full)}  {reader.root}")
    return 0


def cmd_data_synth(args) -> int:
    from harness.data import DATASETS, synthetic_root

    names = sorted(DATASETS) if args.names in ([], ["all"]) else _dataset_names(args.names)
    rows = [(n, args.scale, args.seed, str(synthetic_root(DATASETS[n], args.data_root, args.scale, args.seed)))
            for n in names]
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


DATA_COMMANDS = {"list": cmd_data_list, "check": cmd_data_check, "fingerprint": cmd_data_fingerprint,
                 "synth": cmd_data_synth, "fetch": cmd_data_fetch}


def cmd_data(args) -> int:
    return DATA_COMMANDS[args.data_command](args)


COMMANDS = {"list": cmd_list, "run": cmd_run, "matrix": cmd_matrix, "leaderboard": cmd_leaderboard,
            "schema": cmd_schema, "data": cmd_data}


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
