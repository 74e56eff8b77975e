"""The faiss and ScaNN search backends, their options, and the tasks that use them."""

import numpy as np
import pytest
import scann
import torch
from pydantic import ValidationError

from harness import specs
from harness.errors import SpecError, UserError
from harness.protocols.ann import FaissSearch
from harness.protocols.hummingbird import HummingbirdParams
from harness.protocols.search import ExactSearch, make_search


def random_unit(rng, n, dim):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))


def clustered(rng, n, dim, clusters, spread):
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return torch.from_numpy((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.numpy(), truth.numpy())])


# --- faiss -------------------------------------------------------------------------------------------------------


def test_faiss_flat_equals_exact_search():
    rng = np.random.default_rng(0)
    bank, queries = random_unit(rng, 3000, 48), random_unit(rng, 200, 48)
    expected_scores, expected_index = ExactSearch(bank, query_chunk=64, max_block=64 * 500).search(queries, 30)
    search = make_search("faiss", bank, gpu=False)
    assert isinstance(search, FaissSearch) and type(search.index).__name__ == "IndexFlatIP"
    scores, index = search.search(queries, 30)
    assert scores.dtype == torch.float32 and index.dtype == torch.int64 and index.shape == (200, 30)
    np.testing.assert_array_equal(index.numpy(), expected_index.numpy())
    np.testing.assert_allclose(scores.numpy(), expected_scores.numpy(), rtol=0, atol=1e-6)


def test_faiss_float16_scores_the_stored_half_precision_values():
    rng = np.random.default_rng(1)
    bank, queries = random_unit(rng, 2000, 32), random_unit(rng, 100, 32)
    search = make_search("faiss", bank, dtype="float16", gpu=False)
    assert type(search.index).__name__ == "IndexScalarQuantizer"
    scores, index = search.search(queries, 10)
    # the same thing computed by hand: float32 queries against the bank rounded to float16
    brute = queries.numpy() @ bank.half().float().numpy().T
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(index.numpy(), expected)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(brute, expected, 1), atol=1e-4)
    exact_half = ExactSearch(bank, dtype="float16").search(queries, 10)  # and the torch backend agrees
    np.testing.assert_array_equal(exact_half[1].numpy(), index.numpy())


# --- ScaNN -------------------------------------------------------------------------------------------------------


def test_scann_recall_against_exact_on_clustered_data():
    rng = np.random.default_rng(2)
    data = clustered(rng, 21_000, 64, clusters=50, spread=0.6)
    bank, queries = data[:20_000], data[20_000:]
    truth = ExactSearch(bank).search(queries, 30)
    search = make_search("scann", bank, num_leaves=100, num_leaves_to_search=10, threads=1)
    scores, index = search.search(queries, 30)
    assert scores.dtype == torch.float32 and index.dtype == torch.int64 and index.shape == (1000, 30)
    assert recall(index, truth[1]) >= 0.9
    # the reordered scores are the exact inner products of the returned rows, best first
    np.testing.assert_allclose(scores.numpy(), torch.einsum("qd,qkd->qk", queries, bank[index]).numpy(), atol=1e-5)
    assert np.all(np.diff(scores.numpy(), axis=1) <= 1e-6)
    # fewer searched leaves cost recall: the options reach ScaNN
    narrow = make_search("scann", bank, num_leaves=100, num_leaves_to_search=1, threads=1).search(queries, 30)[1]
    assert recall(narrow, truth[1]) < recall(index, truth[1])


def test_scann_applies_dimensions_per_block_as_configured():
    bank = random_unit(np.random.default_rng(3), 1000, 16)
    for dims in (2, 4):
        config = make_search("scann", bank, num_leaves=10, num_leaves_to_search=2, dimensions_per_block=dims).config
        assert f"num_dims_per_block: {dims}" in config and "noise_shaping_threshold: 0.2" in config
        assert "approx_num_neighbors: 120" in config and "num_children: 10" in config
    # why the option exists: the reference's score_ah(2, ..., dimensions_per_block=4) really gives 2
    builder = scann.scann_ops_pybind.builder(bank.numpy(), 10, "dot_product")
    assert builder.score_ah(2, dimensions_per_block=4).params["score_ah"]["dimensions_per_block"] == 2


def test_scann_errors_and_padding():
    rng = np.random.default_rng(4)
    with pytest.raises(UserError, match="num_leaves=512 but the memory has only 300 rows"):
        make_search("scann", random_unit(rng, 300, 8))
    bank = random_unit(rng, 600, 8)
    search = make_search("scann", bank, num_leaves=20, num_leaves_to_search=4, num_reordering_candidates=30)
    with pytest.raises(UserError, match="k=40 exceeds ScaNN's num_reordering_candidates=30"):
        search.search(bank[:3], 40)
    # one searched leaf of ~1 row cannot supply 30 neighbours: the padding gets no weight (score -inf)
    sparse = make_search("scann", bank, num_leaves=512, num_leaves_to_search=1)
    scores, index = sparse.search(bank[:20], 30)
    assert scores[:, 0].isfinite().all() and (scores[:, -1] == -torch.inf).all() and sparse.padded > 0
    assert torch.softmax(scores / 0.02, dim=1).isfinite().all()


# --- options and tasks -------------------------------------------------------------------------------------------


def test_unknown_or_bad_options_are_clear_errors():
    bank = torch.zeros(10, 4)
    with pytest.raises(UserError, match="search backend 'scann' has no option 'leaves' .*num_leaves_to_search"):
        make_search("scann", bank, leaves=8)
    with pytest.raises(UserError, match="search backend 'exact' has no option 'query_chunks' \\(its options: none\\)"):
        make_search("exact", bank, query_chunks=8)
    with pytest.raises(ValidationError, match="search backend 'faiss' has no option 'use_gpu'"):
        HummingbirdParams(search="faiss", search_options={"use_gpu": True})
    with pytest.raises(ValidationError, match="num_leaves_to_search=64 exceeds num_leaves=32"):
        HummingbirdParams(search="scann", search_options={"num_leaves": 32, "num_leaves_to_search": 64})
    filled = HummingbirdParams(search="scann", search_options={"num_leaves_to_search": 64}).search_options
    assert filled["num_leaves_to_search"] == 64 and filled["num_leaves"] == 512 and filled["dimensions_per_block"] == 2


def test_a_bad_option_in_a_task_file_names_its_line(tmp_path, monkeypatch):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "seg.yaml").write_text(
        "name: seg\nversion: 1\ndescription: d\nprotocol: hummingbird\ndataset: voc\n"
        "params:\n  search: scann\n  search_options:\n    num_leaves: 512\n    reorder: 9\n"
    )
    monkeypatch.setenv("BENCH_BENCHMARKS", str(tmp_path))
    with pytest.raises(SpecError, match=r"seg.yaml:9: params.search_options: .*has no option 'reorder'"):
        specs.get("task", "seg")


def test_the_hummingbird_tasks_carry_the_published_settings():
    efficient = specs.get("task", "voc_hummingbird_efficient").protocol_params
    assert (efficient.num_train_samples, efficient.aug_epochs, efficient.memory_size) == (83, 8, None)
    assert (efficient.k, efficient.temperature, efficient.search) == (90, 0.1, "scann")
    assert efficient.search_options == {
        "num_leaves": 512,
        "num_leaves_to_search": 256,
        "anisotropic_quantization_threshold": 0.2,
        "dimensions_per_block": 4,
        "num_reordering_candidates": 1800,
        "training_sample_size": None,
        "threads": 0,
        "clustering_seed": 1,  # ours, for numbers that are the same run to run (ann.py)
        "min_partition_size": 1,
        "center_init": "kmeans++",  # ours: random centres follow a per-process hash seed (ann.py)
    }
    ade = specs.get("task", "ade20k_hummingbird")
    params = ade.protocol_params
    assert ade.dataset == "ade20k" and (params.train_split, params.eval_split) == ("training", "validation")
    assert (params.memory_size, params.k, params.temperature, params.aug_epochs) == (102_400, 30, 0.02, 2)


def test_protocol_runs_with_each_backend():
    from test_hummingbird import Colour, run_protocol

    for search, options in [("faiss", {"gpu": False}), ("scann", {"num_leaves": 8, "num_leaves_to_search": 8})]:
        outcome, ctx = run_protocol(Colour(), search=search, search_options=options)
        assert outcome.metrics["miou"] == pytest.approx(100), search
        assert outcome.metrics["miou_identity"] == pytest.approx(100), search
