"""What every test module shares: the procedural data root, the `bench` command (as a subprocess or in-process),
the one-line error check, method specs, in-process sessions, an HTTP server of files (`bench data fetch`, `bench
weights fetch`), and the Docker fixtures.

Markers: `docker` (set here on every test that uses the `docker_ready` fixture: needs dockerd, the registry and
the base image), `slurm` (every test using `slurm_ready`: a single-node Slurm cluster) and `slow` (a test of a
minute or more). `make test-fast` runs the rest: no root, no services.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import benchsdk
from harness.errors import UserError
from harness.specs import MethodSpec, load_spec

REPO = Path(__file__).resolve().parent.parent
TEST_METHODS = REPO / "tests" / "methods"
HOSTILE = REPO / "tests" / "hostile"
BASE = "vrbench/base:bookworm"  # the local CPU base image (scripts/build_base_image.sh)
REGISTRY = "127.0.0.1:5000"
LABEL = "vrbench.harness"


def pytest_collection_modifyitems(items):
    for item in items:
        if "docker_ready" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)
        if "slurm_ready" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(autouse=True)
def own_feature_cache(tmp_path_factory, monkeypatch):
    """Each test's runs (in this process and in its `bench` subprocesses) store and find method replies in a feature
    cache of the test's own, never the checkout's or another test's."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path_factory.mktemp("feature-cache")))


@pytest.fixture(autouse=True)
def own_catalog_cache(tmp_path_factory, monkeypatch):
    """In this process, the leaderboard's cache of the specs' facts lives in a folder of each test's own: a test
    that patches a protocol's version would otherwise write what it saw into the checkout's .cache/leaderboard/
    under the files' real digest, and the next real `bench regress` / `bench leaderboard` would read every knn
    result as stale. (`bench` subprocesses patch nothing and use the checkout's cache.)"""
    from harness.leaderboard import catalog

    monkeypatch.setattr(catalog, "CACHE", tmp_path_factory.mktemp("catalog"))


# --- running bench ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")  # procedural datasets are generated here once per session


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_root) -> tuple[tuple[str, ...], Path, subprocess.CompletedProcess]:
    """The smoke suite with the raw-pixel baseline on procedural data, run once per session (the end-to-end test
    and the smoke baseline's regression check read the same results): its `bench` arguments, results folder and
    process."""
    results = tmp_path_factory.mktemp("smoke") / "results"
    args = ("matrix", "--suite", "smoke", "--methods", "pixels", "--data-root", str(data_root))
    args += ("--results", str(results), "--no-progress")
    return args, results, bench(*args)


def bench(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    """`bench ARGS` as a user runs it: a fresh Python process in the repository (local methods' images build FROM
    the local base)."""
    full = dict(os.environ, BENCH_BASE_IMAGE=BASE, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=full, cwd=REPO, timeout=timeout
    )


def bench_started(*args, env=None) -> subprocess.Popen:
    """`bench ARGS` started as a terminal starts it, in a process group of its own (`os.killpg(proc.pid, SIGINT)`
    is the terminal's Ctrl-C); stdout and stderr piped, as text."""
    full = dict(os.environ, BENCH_BASE_IMAGE=BASE, **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120):
    """Poll `condition()` until it is truthy and return that; fail with bench's stderr if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if proc.poll() is not None:
            pytest.fail(f"bench exited with {proc.returncode} first: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.1)
    return found


def orphaned_folder(parent: Path, prefix: str) -> Path:
    """A folder in `parent` named by lifetime.owned_prefix(prefix) for another process, which has exited since:
    what a harness killed before its own cleanup leaves."""
    code = "import sys, tempfile; from harness.lifetime import owned_prefix; "
    code += "print(tempfile.mkdtemp(prefix=owned_prefix(sys.argv[1]), dir=sys.argv[2]))"
    made = subprocess.run([sys.executable, "-c", code, prefix, str(parent)], capture_output=True, text=True, cwd=REPO)
    assert made.returncode == 0, made.stderr
    return Path(made.stdout.strip())


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`bench ARGS` in this process (the CLI's own main): exit code, stdout, stderr. Saves a Python start-up."""
    from harness.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(proc) -> str:
    """A user error: exit 2, one line on stderr, no traceback. `proc`: a CompletedProcess or cli()'s tuple."""
    code, err = (proc.returncode, proc.stderr) if isinstance(proc, subprocess.CompletedProcess) else (proc[0], proc[2])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- methods and sessions -----------------------------------------------------------------------------------------


def images(n=3, h=32, w=48, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def method_spec(name: str, folders: tuple[Path, ...] = (TEST_METHODS, REPO / "images")) -> MethodSpec:
    """A method folder's spec, from the first of `folders` that has it (default: tests/methods, then images/)."""
    folder = next(d / name for d in folders if (d / name).is_dir())
    return load_spec(MethodSpec, folder / "method.yaml")


SHARED_ADAPTER = """import numpy as np

from benchsdk import Method, serve
from shared_width import WIDTH  # from the included folder ../_shared


class Shared(Method):
    name, version, outputs = "shared_user", "0", ("global",)
    embed_dim = WIDTH

    def setup(self, seed, task):
        pass

    def embed(self, images):
        return np.full((len(images), WIDTH), WIDTH, dtype=np.float32)


if __name__ == "__main__":
    serve(Shared())
"""


def shared_code_method(methods: Path, width: int = 5) -> MethodSpec:
    """`methods`/shared_user, a method whose adapter imports its width from `include: [../_shared]`
    (`methods`/_shared/shared_width.py, written with `width`)."""
    (methods / "_shared").mkdir(parents=True, exist_ok=True)
    (methods / "_shared" / "shared_width.py").write_text(f"WIDTH = {width}\n")
    folder = methods / "shared_user"
    folder.mkdir(exist_ok=True)
    (folder / "adapter.py").write_text(SHARED_ADAPTER)
    (folder / "method.yaml").write_text(
        "name: shared_user\nversion: '0'\ndescription: x\noutputs: [global]\ninclude: [../_shared]\n"
        "variants:\n  other: {description: y}\n"
    )
    return load_spec(MethodSpec, folder / "method.yaml")


def hostile_spec(name: str) -> MethodSpec:
    """A hostile test image's spec (tests/hostile, whose names may also be test methods'), or one of images/."""
    return method_spec(name, (HOSTILE, REPO / "images"))


def session_of(method: benchsdk.Method, seed: int = 0):
    """A benchsdk Method as a protocol's session, through the in-process backend: every reply validated as a live
    method's."""
    from harness.runners.inprocess import InProcessSession

    session = InProcessSession(method)
    session.handshake(seed, {"name": "test"}, None)
    return session


# --- HTTP ---------------------------------------------------------------------------------------------------------


class ArchiveServer:
    """Serves `files` by name with Range support; `cuts[name] = [n, ...]` drops the connection after n bytes of
    the body, once per listed n (consumed in order)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cuts, self.requests = files, {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = int(match.group(1)) if match else 0
                if start >= len(data) and match:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206 if match else 200)
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = server.cuts.get(name, [])
                if cut:
                    self.wfile.write(body[: cut.pop(0)])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# --- docker -------------------------------------------------------------------------------------------------------


def _bring_up() -> str | None:
    """Start the services and the base image (idempotent scripts); None when ready, else why not."""
    for script in ("services.sh", "build_base_image.sh"):
        proc = subprocess.run(["bash", str(REPO / "scripts" / script)], capture_output=True, text=True, timeout=900)
        if proc.returncode:
            return f"scripts/{script} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    try:
        from harness.runners.images import client

        client()
    except (UserError, ImportError) as e:
        return str(e)
    return None


def unavailable(what: str, problem: str) -> None:
    """Skip the test, saying why; with CI=true, fail it: CI must have every service."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} unavailable under CI: {problem}")
    pytest.skip(f"{what} unavailable: {problem}")


@pytest.fixture(scope="session")
def docker_ready():
    """Skip (or, with CI=true, fail) every test that needs dockerd, the registry and the base image."""
    if problem := _bring_up():
        unavailable("docker services", problem)
    from harness.runners.images import client

    return client()


@pytest.fixture(scope="session")
def slurm_ready() -> None:
    """Skip (or, with CI=true, fail) every test that needs Slurm: scripts/slurm.sh installs and starts a single-node
    cluster if it is not up."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm.sh")], capture_output=True, text=True, timeout=900)
    if proc.returncode:
        unavailable("slurm", (proc.stderr.strip().splitlines() or ["?"])[-1])


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's chromium, installed by scripts/browser.sh if missing; skip (or, with CI=true, fail)
    where it cannot run."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "browser.sh")], capture_output=True, text=True, timeout=900)
    if proc.returncode:
        unavailable("chromium", (proc.stderr.strip().splitlines() or ["?"])[-1])
    return shutil.which("chromium")


def container_backends() -> list[str]:
    """Every registered backend that sandboxes its methods: the sandbox and hostile-image tests run over each."""
    from harness.runners import RUNNERS, runner_class

    return [name for name in RUNNERS if runner_class(name).sandboxed]


@pytest.fixture(params=container_backends())
def backend(request, docker_ready) -> str:
    """The name of a container backend (each in turn)."""
    return request.param


@pytest.fixture(scope="session")
def built(docker_ready):
    """Every hostile image and pixels, built once per session FROM the local base (with no network)."""
    from harness.runners.images import build

    names = ["pixels"] + sorted(p.parent.name for p in HOSTILE.glob("*/method.yaml"))
    return {name: build(hostile_spec(name), base=BASE, quiet=True) for name in names}


def ours_or_orphaned(container) -> bool:
    """Started by this test process, or by one of its `bench` subprocesses, all gone by now (other harness
    processes on this machine may be running their own containers meanwhile)."""
    host, _, pid = container.labels.get(f"{LABEL}.owner", "").partition(":")
    return host == socket.gethostname() and (pid == str(os.getpid()) or not Path(f"/proc/{pid}").exists())


@pytest.fixture(autouse=True)
def no_container_left(request, monkeypatch):
    """Method images build FROM the local base; after each test that used docker, no container of ours is left."""
    monkeypatch.setenv("BENCH_BASE_IMAGE", BASE)
    yield
    if "docker_ready" in request.fixturenames:
        left = [
            c.name
            for c in request.getfixturevalue("docker_ready").containers.list(all=True, filters={"label": LABEL})
            if ours_or_orphaned(c)
        ]
        assert not left, f"containers left behind: {left}"
