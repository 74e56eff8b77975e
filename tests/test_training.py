"""`bench train` (harness/training.py): recipes run through the contract's train_* ops, checkpoints renamed only when
complete, resume after kill -9, a NaN loss stops the run, the artifact and its record in the weights store, and
`bench run --weights` evaluates exactly those weights. tests/methods/sgd is a real (small) SGD learner; the
procedural_dino test runs the real adapter for a few steps."""

from __future__ import annotations

import json
import os
import signal

import numpy as np

from harness import specs
from harness.results import RunResult
from harness.training import checkpoints

from conftest import REPO, TEST_METHODS, bench, bench_started, one_line_error, wait_for

ENV = {"BENCH_IMAGES": f"{TEST_METHODS}{os.pathsep}{REPO / 'images'}"}


def train(root, *extra, env=None):
    return bench("train", "--method", "sgd", "--recipe", "tiny", "--weights-root", str(root), "--no-progress", *extra,
                 env={**ENV, **(env or {})})  # fmt: skip


def record_of(root) -> dict:
    (path,) = root.glob("trained/*/training.json")
    return json.loads(path.read_text())


def test_train_makes_a_content_addressed_artifact_with_its_record(tmp_path):
    proc = train(tmp_path)
    assert proc.returncode == 0, proc.stderr
    sha = proc.stdout.strip()
    record = record_of(tmp_path)
    artifact = tmp_path / "trained" / sha / "sgd" / "sgd_w.npy"
    assert artifact.is_file() and record["weights_sha256"] == sha and record["recipe"] == "tiny"
    assert [s for s, _ in record["losses"]] == list(range(1, 41)) and record["steps"] == 40
    assert record["losses"][-1][1] < record["losses"][0][1] / 10  # it learns
    assert record["method_ref"].startswith("code-sha256:") and record["recipe_hash"]
    (run_dir,) = tmp_path.glob("runs/sgd/tiny/*")
    assert [step for step, _ in checkpoints(run_dir)] == [40]  # only the last is kept
    assert not list(run_dir.glob("unfinished-*"))


def test_bench_run_weights_evaluates_the_trained_artifact_and_links_its_record(tmp_path, data_root):
    sha = train(tmp_path).stdout.strip()
    results = tmp_path / "results"
    args = ("run", "--method", "sgd", "--task", "flowers102_knn", "--data", "synthetic", "--data-root", str(data_root), "--results",
            str(results), "--weights-root", str(tmp_path), "--no-progress")  # fmt: skip
    for selector in ("tiny", sha[:8]):
        proc = bench(*args, "--weights", selector, "--force", env=ENV)
        assert proc.returncode == 0, proc.stderr
        (path,) = results.rglob("seed0.json")
        r = RunResult.model_validate_json(path.read_text())
        assert r.provenance.weights == f"sha256:{sha}" and r.key.method_ref.endswith(f"+weights-sha256:{sha}")
        assert r.provenance.training["recipe"] == "tiny" and r.provenance.training["steps"] == 40
        assert json.loads(open(r.provenance.training["record"]).read())["weights_sha256"] == sha
    assert "no trained weights 'paper'" in one_line_error(bench(*args, "--weights", "paper", env=ENV))


def test_a_rerun_after_kill_9_resumes_from_the_last_complete_checkpoint(tmp_path):
    proc = bench_started("train", "--method", "sgd", "--recipe", "tiny", "--weights-root", str(tmp_path),
                         "--no-progress", env={**ENV, "SGD_STEP_SLEEP": "0.05"})  # fmt: skip
    wait_for(lambda: any(tmp_path.glob("runs/sgd/tiny/*/ckpt-00000020.ckpt")), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = tmp_path.glob("runs/sgd/tiny/*")
    done = checkpoints(run_dir)[-1][0]
    assert 20 <= done < 40 and not list(tmp_path.glob("trained/*"))
    resumed = train(tmp_path, "--resume")
    assert resumed.returncode == 0 and f"resuming at step {done}" in resumed.stderr, resumed.stderr
    record = record_of(tmp_path)
    assert record["resumed_at"] == [done] and [s for s, _ in record["losses"]] == list(range(1, 41))
    # the same weights as an uninterrupted run: the data is seeded by the step, the state is in the checkpoint
    fresh = tmp_path / "fresh"
    assert train(fresh).stdout.strip() == record["weights_sha256"]


def test_a_nan_loss_stops_the_run_with_one_line_keeping_its_checkpoint(tmp_path):
    proc = train(tmp_path, env={"SGD_NAN_AT": "25"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "training diverged: loss nan at step 25" in proc.stderr and "step 20" in proc.stderr
    (run_dir,) = tmp_path.glob("runs/sgd/tiny/*")
    assert [s for s, _ in checkpoints(run_dir)] == [20] and not list(tmp_path.glob("trained/*"))


def test_bad_arguments_are_one_line(tmp_path):
    assert "no training recipe 'huge'" in one_line_error(
        bench("train", "--method", "sgd", "--recipe", "huge", "--weights-root", str(tmp_path), env=ENV)
    )
    assert "nothing to resume" in one_line_error(train(tmp_path, "--resume"))
    assert "recipes: none" in one_line_error(
        bench("train", "--method", "pixels", "--recipe", "tiny", "--weights-root", str(tmp_path))
    )


def test_weights_nobody_publishes_point_to_bench_train(tmp_path):
    method = specs.get("method", "procedural_dino")
    from harness.weights import fetch_command

    assert "bench train --method procedural_dino --recipe tiny|paper" in fetch_command(method)
    line = one_line_error(bench("weights", "fetch", "procedural_dino", "--weights-root", str(tmp_path)))
    assert "no weights are published" in line and "bench train" in line


def test_procedural_dino_trains_and_its_export_loads_in_the_evaluation(tmp_path, data_root):
    """Two steps of the real tiny recipe (ViT-Ti/16 on KML Mixup images), then its teacher evaluated."""
    proc = bench("train", "--method", "procedural_dino", "--recipe", "tiny", "--steps", "2", "--weights-root",
                 str(tmp_path), "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "bench run --method procedural_dino@vitt16" in proc.stderr
    record = record_of(tmp_path)
    assert record["method"] == "procedural_dino@vitt16" and len(record["losses"]) == 2
    assert all(np.isfinite(loss) for _, loss in record["losses"])
    assert "evaluate it with --method procedural_dino@vitt16" in one_line_error(
        bench("run", "--method", "procedural_dino", "--task", "flowers102_knn", "--weights", "tiny",
              "--weights-root", str(tmp_path), "--data", "synthetic", "--data-root", str(data_root))
    )  # fmt: skip
    run = bench("run", "--method", "procedural_dino@vitt16", "--task", "flowers102_knn", "--weights", "tiny",
                "--weights-root", str(tmp_path), "--data", "synthetic", "--data-root", str(data_root), "--results", str(tmp_path / "r"),
                "--no-progress")  # fmt: skip
    assert run.returncode == 0, run.stderr
    (path,) = (tmp_path / "r").rglob("seed0.json")
    r = RunResult.model_validate_json(path.read_text())
    assert r.provenance.method_info["weights"] == "procedural_dino_vitt16.pth" and r.status == "ok"


def test_train_in_docker_writes_only_its_output_folder(tmp_path, docker_ready):
    """The sandbox of evaluation (read-only root, no network, not root) with one writable mount: the output folder."""
    proc = train(tmp_path, "--backend", "docker")
    assert proc.returncode == 0, proc.stderr
    record = record_of(tmp_path)
    assert record["backend"] == "docker" and "sha256:" in record["method_ref"]  # an image, not a code hash
    assert (tmp_path / "trained" / record["weights_sha256"] / "sgd" / "sgd_w.npy").is_file()
    assert record["losses"][-1][1] < record["losses"][0][1] / 10


def test_procedural_dino_reads_a_folder_of_images_step_by_step(tmp_path, monkeypatch):
    """The paper recipe's data: the S. KML Mixup images made beforehand, read per step (never all in memory)."""
    import sys

    from PIL import Image

    for folder in ("images/procedural_dino", "images/_vit"):
        monkeypatch.syspath_prepend(str(REPO / folder))
    monkeypatch.delitem(sys.modules, "adapter", raising=False)
    from adapter import ProceduralDino

    (tmp_path / "train" / "all").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "train" / "all" / f"{i}.png")
    method = ProceduralDino("vitt16")
    params = {"data": f"folder:{tmp_path / 'train'}", "batch_size": 2, "global_size": 32, "local_size": 16,
              "local_crops_number": 2, "out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "epochs": 1,
              "steps_per_epoch": 2, "warmup_epochs": 0, "vit_overrides": {"depth": 2}}  # fmt: skip
    assert method.train_start("t", params, 0, None) == 0
    assert not isinstance(method.images, np.ndarray) and len(method.images) == 3
    assert all(np.isfinite(method.train_step(None)) for _ in range(2))
