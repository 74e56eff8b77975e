"""images/neco/neco_train.py: NeCo fine-tuning (vpariza/NeCo 3932160 src/neco.py) in one process.

Small shapes on CPU. scripts/compare_neco_train.py checks the same code against PyPI diffsort and the reference's
NeCo.knn_loss; these tests check its parts without either.
"""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO

sys.path[:0] = [str(REPO / "images" / "_vit"), str(REPO / "images" / "neco")]
import neco_train  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("n", [2, 5, 16, 49])
def test_sorting_network_is_doubly_stochastic_and_sorts(n):
    x = torch.randn(64, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    soft, p = neco_train.DiffSort(n, steepness=100)(x)
    assert p.shape == (64, n, n) and soft.shape == (64, n)
    assert p.min() >= 0
    torch.testing.assert_close(p.sum(1), torch.ones(64, n, dtype=x.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(p.sum(2), torch.ones(64, n, dtype=x.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(soft, (x.unsqueeze(1) @ p).squeeze(1), rtol=0, atol=1e-12)
    ordered, order = x.sort(1)
    # relaxed: the soft sort is near the sort, not on it (a comparator of values 0.01 apart mixes 30/70 at steepness 100)
    assert (soft - ordered).abs().mean() < 0.05
    assert not torch.allclose(soft, ordered, atol=1e-6)
    hard_soft, hard = neco_train.DiffSort(n, steepness=1e9)(x)
    torch.testing.assert_close(hard_soft, ordered, rtol=0, atol=1e-7)
    assert torch.equal(hard.argmax(1), order)  # sorted position j holds element order[j]
    assert hard.max(1).values.min() > 1 - 1e-4  # the Cauchy tails: 1/(pi steepness |a - b|) per comparator


def test_sorting_network_gradient():
    x = torch.randn(4, 49, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    sorter = neco_train.DiffSort(49, steepness=100)
    target = torch.softmax(torch.randn(4, 49, 49, dtype=torch.float64), -1)
    torch.autograd.gradcheck(lambda v: (target * sorter(v)[1].log()).sum(), (x[:1].detach().requires_grad_(),))
    (target * sorter(x)[1].log()).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    with pytest.raises(ValueError, match=r"expected \(B, 49\)"):
        sorter(torch.zeros(2, 48))
