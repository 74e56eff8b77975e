"""The feature cache (harness.cache, harness.runners.cached): replies keyed by content, served without the method,
bit-identical metrics, never for nondeterministic methods, atomic under concurrent writers, bounded, and its CLI."""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest

from harness import specs
from harness.cache import FeatureCache, ReplyKeys, cache_root
from harness.results import ResultStore
from harness.run import RunOptions, run_cell

from conftest import bench, method_spec, one_line_error

TASK = "imagenette_knn"  # procedural: 5 requests of 32 images (train and val), a second or two with pixels


@pytest.fixture
def store(tmp_path):
    return ResultStore(tmp_path / "results")


def run(method: specs.MethodSpec, store: ResultStore, seed: int = 0, task: str = TASK, **opts):
    options = RunOptions(synthetic=True, force=True, progress=False, num_workers=0, **opts)
    result = run_cell(method, specs.get("task", task), seed, options, store)
    assert result.status == "ok", result.error
    return result


def cache_of(store: ResultStore) -> FeatureCache:
    return FeatureCache(cache_root(store.root))


def test_a_repeated_cell_is_served_without_the_method_and_scores_identically(store):
    pixels = method_spec("pixels")
    cold = run(pixels, store)
    warm = run(pixels, store)
    without = run(pixels, store, cache=False)
    assert cold.timings.cached_requests == 0 and cold.timings.images_sent > 0
    assert warm.timings.cached_requests > 0
    assert warm.timings.images_sent == 0 and warm.timings.method_s == 0  # the method never started
    assert warm.provenance.method_info == cold.provenance.method_info  # its info, stored at the first start
    assert without.timings.cached_requests == 0 and without.timings.images_sent == cold.timings.images_sent
    assert cold.metrics == warm.metrics == without.metrics  # bit for bit
    assert cold.details == warm.details == without.details


def test_no_cache_neither_reads_nor_writes(store):
    run(method_spec("pixels"), store, cache=False)
    assert not any(cache_of(store).root.rglob("*"))


def test_the_seed_is_part_of_the_key_unless_the_method_declares_it_changes_nothing(store):
    pixels = method_spec("pixels")  # its masks' k-means is seeded: the seed matters
    run(pixels, store, seed=0)
    assert run(pixels, store, seed=1).timings.cached_requests == 0
    fixed = pixels.model_copy(update={"seed_independent": True})
    run(fixed, store, seed=0)
    assert run(fixed, store, seed=1).timings.images_sent == 0
    # a random init is seeded: there the seed matters whatever the method declares
    random_init = fixed.model_copy(update={"random_init": True})
    run(random_init, store, seed=0)
    assert run(random_init, store, seed=1).timings.cached_requests == 0


def test_a_method_declared_nondeterministic_is_never_cached(store):
    run(method_spec("pixels").model_copy(update={"deterministic": False}), store)
    assert not any(cache_of(store).root.rglob("*"))


def test_a_method_validate_found_nondeterministic_is_never_cached(store, capfd):
    from harness.runners.local import LocalRunner

    pixels = method_spec("pixels")
    cache = cache_of(store)
    cache.record_determinism(LocalRunner().prepare(pixels), "outputs differ: max |diff| {'global': 0.5}")
    run(pixels, store)
    assert not cache.entries() and "found it nondeterministic" in capfd.readouterr().err
    cache.record_determinism(LocalRunner().prepare(pixels), None)  # a later validate found it deterministic
    run(pixels, store)
    assert cache.entries()


def test_a_fit_stage_always_runs_and_keys_what_follows(store):
    fitter = method_spec("fitter")  # its embeddings are the mean of what its fit stage saw
    first = run(fitter, store, seed=0)
    again = run(fitter, store, seed=0)
    assert again.timings.fit_s > 0 and again.timings.cached_requests > 0 and again.metrics == first.metrics
    # another seed shuffles the fit stream (another digest) and is keyed apart
    assert run(fitter, store, seed=1).timings.cached_requests == 0


def test_replies_are_stored_in_the_dtype_the_method_sent(tmp_path):
    cache = FeatureCache(tmp_path)
    keys = ReplyKeys.of("m", "ref", "cpu", None)
    images = np.zeros((2, 8, 8, 3), np.uint8)
    key = keys.request("embed", images)
    cache.put("m", key, {"features": np.arange(6, dtype=np.float16).reshape(2, 3)})
    got = cache.get("m", key)
    assert got["features"].dtype == np.float16 and got["features"].tolist() == [[0, 1, 2], [3, 4, 5]]
    # every byte of the request counts
    other = images.copy()
    other[1, 7, 7, 2] = 1
    assert keys.request("embed", other) != key and keys.request("embed_dense", images) != key
    assert ReplyKeys.of("m", "ref", "cpu", 0).request("embed", images) != key


def test_a_damaged_entry_is_a_miss_and_a_temporary_file_is_never_read(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("m", "ab" * 32, {"features": np.ones((2, 3), np.float32)})
    path = next(tmp_path.glob("m/*/*.npz"))
    path.write_bytes(path.read_bytes()[:100])  # as a disk error would leave it (a harness never writes in place)
    assert cache.get("m", "ab" * 32) is None and not path.exists()
    (path.parent / ".tmp-dead.npz").write_bytes(b"half")  # what a harness killed while writing leaves
    assert cache.entries() == []
    old = time.time() - 2 * 3600
    os.utime(path.parent / ".tmp-dead.npz", (old, old))
    cache.prune(older_than_s=1e9)
    assert not (path.parent / ".tmp-dead.npz").exists()


def _hammer(root: str, key: str, times: int) -> None:
    cache, value = FeatureCache(root), np.full((64, 4096), 7, np.float32)
    for _ in range(times):
        cache.put("m", key, {"features": value})


def test_concurrent_writers_never_let_a_reader_see_a_partial_entry(tmp_path):
    key = "cd" * 32
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_hammer, args=(str(tmp_path), key, 150)) for _ in range(2)]
    for w in writers:
        w.start()
    cache, reads = FeatureCache(tmp_path), 0
    while any(w.is_alive() for w in writers):
        got = cache.get("m", key)
        if got is not None:
            assert got["features"].shape == (64, 4096) and (got["features"] == 7).all()
            reads += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert reads > 0
    assert [p.name for p in (tmp_path / "m").glob("*/*")] == [f"{key}.npz"]  # no temporary file left


def test_the_size_limit_removes_the_least_recently_used_first(tmp_path):
    cache = FeatureCache(tmp_path, limit=3 * 4096 + 2000)
    for i, key in enumerate(["01" * 32, "02" * 32, "03" * 32, "04" * 32]):
        cache.put("m", key, {"features": np.zeros(1024, np.float32)})  # 4096 bytes of data each, plus npz headers
        path = next(tmp_path.glob(f"m/*/{key}.npz"))
        os.utime(path, (1000 + i, 1000 + i))
    cache.get("m", "01" * 32)  # used now: the most recent
    cache.enforce_limit()
    left = sorted(e.path.stem[:2] for e in cache.entries())
    assert "02" not in left and "01" in left and "04" in left
    assert sum(e.bytes for e in cache.entries()) <= 0.9 * cache.limit


def test_bench_cache_ls_du_prune(tmp_path):
    root = tmp_path / "cache"
    env = {"BENCH_CACHE": str(root)}
    cache = FeatureCache(root)
    for method in ("dino", "pixels"):
        cache.put(method, "ef" * 32, {"features": np.zeros((4, 384), np.float32)})
    old = time.time() - 10 * 86400
    os.utime(next(root.glob("dino/*/*.npz")), (old, old))

    ls = bench("cache", "ls", env=env)
    assert ls.returncode == 0 and "dino" in ls.stdout and "pixels" in ls.stdout, ls.stderr
    du = bench("cache", "du", env=env)
    assert du.returncode == 0 and "2 entries" in du.stdout and str(root) in du.stdout
    assert "--older-than" in one_line_error(bench("cache", "prune", env=env))
    assert "duration" in bench("cache", "prune", "--older-than", "soon", env=env).stderr

    pruned = bench("cache", "prune", "--older-than", "7d", env=env)
    assert pruned.returncode == 0 and "removed 1 entries" in pruned.stdout
    assert [e.method for e in cache.entries()] == ["pixels"]
    assert bench("cache", "prune", "--all", "--method", "dino", env=env).stdout.startswith("removed 0 entries")
    assert bench("cache", "prune", "--all", env=env).stdout.startswith("removed 1 entries")
    assert "empty" in bench("cache", "ls", env=env).stdout


def test_a_bad_size_limit_is_one_line(tmp_path):
    err = one_line_error(bench("cache", "du", env={"BENCH_CACHE": str(tmp_path), "BENCH_CACHE_MAX_GB": "lots"}))
    assert "BENCH_CACHE_MAX_GB='lots'" in err


def test_the_cache_lives_beside_the_results_unless_bench_cache_says(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_CACHE")
    assert cache_root(tmp_path / "results") == tmp_path / "feature-cache"
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root(tmp_path / "results") == tmp_path / "elsewhere"
