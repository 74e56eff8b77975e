"""Rewrite harness/protocols/versions.lock.json: each protocol's `version` and the sha256 of its code.

Run it after deciding, for each protocol whose code changed, whether its numbers can change (then bump its
`version`, which keeps its old results apart) or not (a refactor: the version stays)."""

import json

from harness import REPO_ROOT
from harness.protocols import evaluator_sources

LOCK = REPO_ROOT / "harness" / "protocols" / "versions.lock.json"

if __name__ == "__main__":
    lock = {name: {"version": cls.version, "sources": digest} for name, cls, digest in evaluator_sources()}
    LOCK.write_text(json.dumps(lock, indent=2) + "\n")
    print(f"wrote {LOCK}: " + ", ".join(f"{name} v{entry['version']}" for name, entry in lock.items()))
