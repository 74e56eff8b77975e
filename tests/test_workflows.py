"""The GitHub workflows pass actionlint (also run by `make lint`), with our self-hosted runner labels declared."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

ACTIONLINT = Path(sys.executable).with_name("actionlint")


def actionlint(root: Path) -> subprocess.CompletedProcess:
    """actionlint over `root`'s workflows with its config, as `make lint` runs it in the repository."""
    config = root / ".github" / "actionlint.yaml"
    args = [str(ACTIONLINT), "-config-file", str(config), *map(str, sorted(root.glob(".github/workflows/*.yml")))]
    return subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=120)


def test_the_workflows_pass_actionlint_and_an_undeclared_runner_label_does_not(tmp_path):
    assert (REPO / ".github" / "workflows" / "gpu-regression.yml").exists()
    proc = actionlint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.copytree(REPO / ".github", tmp_path / ".github")
    workflow = tmp_path / ".github" / "workflows" / "gpu-regression.yml"
    workflow.write_text(
        workflow.read_text().replace("[self-hosted, linux, x64, gpu]", "[self-hosted, linux, x64, gpux]")
    )
    proc = actionlint(tmp_path)
    assert proc.returncode == 1 and 'label "gpux" is unknown' in proc.stdout, proc.stdout
