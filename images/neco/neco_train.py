"""NeCo fine-tuning in one process: the training loop of vpariza/NeCo 3932160 (src/neco.py class `NeCo`,
src/neco_transforms.py `NeCoTransforms`, experiments/train_with_neco.py), our own code.

What it reproduces, and where the reference has it:
- `DiffSort`: the relaxed bitonic sorting network of PyPI `diffsort==0.2.0` (`DiffSortNet('bitonic', n, steepness,
  distribution='cauchy')`, networks.py `bitonic_network`, functional.py `execute_sort`), which NeCo sorts with. n
  that is not a power of two is padded to 2^k as diffsort pads: the n real wires are the top ones, a comparator
  between two padding wires is dropped and one between a padding wire and a real wire passes the real one through.
  The returned P (B, n, n) is diffsort's: P[b, i, j] = the weight of element i at sorted (ascending) position j, so
  x @ P is the relaxed sort of x. Written with index gathers, one per layer, where diffsort multiplies by 0/1
  matrices (the same arithmetic: scripts/compare_neco_train.py measures the difference).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# --- the differentiable sorting network (diffsort 0.2.0) -----------------------------------------------------------


def bitonic_layers(n: int) -> list[tuple[torch.Tensor, ...]]:
    """The layers of diffsort's bitonic network on n wires (real-wire indices 0..n-1), each as index tensors
    (a, b, to_min, to_max, through): comparator k compares wire a[k] with the higher wire b[k] and sends the soft
    minimum to wire to_min[k], the soft maximum to to_max[k] (swapped in the descending halves of a block); the
    wires in `through` (paired with a padding wire) keep their value."""
    if n < 2:
        raise ValueError(f"a sorting network needs at least 2 wires, not {n}")
    blocks = math.ceil(math.log2(n))
    pad = 2**blocks - n  # padding wires 0..pad-1 sit below the real ones
    layers = []
    for block in range(blocks):
        for layer in range(block + 1):
            m = 2 ** (block - layer)  # comparator span
            a, b, to_min, to_max, through = [], [], [], [], []
            for lo in range(2**blocks):
                hi = lo + m
                if lo % (2 * m) >= m or hi < pad:  # not a comparator's lower wire, or two padding wires
                    continue
                if lo < pad:
                    through.append(hi - pad)
                    continue
                descending = (lo // 2 ** (block + 1)) % 2 == 1
                a.append(lo - pad)
                b.append(hi - pad)
                to_min.append((hi if descending else lo) - pad)
                to_max.append((lo if descending else hi) - pad)
            layers.append(tuple(torch.tensor(v, dtype=torch.long) for v in (a, b, to_min, to_max, through)))
    return layers


class DiffSort(nn.Module):
    """diffsort's DiffSortNet('bitonic', n, steepness=..., distribution='cauchy'): forward(x (B, n)) returns the
    relaxed ascending sort (B, n) and the doubly-stochastic relaxed permutation P (B, n, n) (see the module
    docstring). A comparator of a and b (a on the lower wire) mixes with alpha = atan(steepness (b - a)) / pi + 1/2:
    min = alpha a + (1 - alpha) b, max = (1 - alpha) a + alpha b, and the columns of P the same way."""

    def __init__(self, n: int, steepness: float = 100.0):
        super().__init__()
        self.n, self.steepness = n, float(steepness)
        self.layers = []
        for i, tensors in enumerate(bitonic_layers(n)):
            a, b, to_min, to_max, through = tensors
            # the wire order of cat((min, max, through)) -> wire order: its inverse permutation
            order = torch.empty(n, dtype=torch.long)
            order[torch.cat((to_min, to_max, through))] = torch.arange(n)
            for name, t in zip(("a", "b", "through", "order"), (a, b, through, order)):
                self.register_buffer(f"layer{i}_{name}", t, persistent=False)
            self.layers.append(i)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 2 or x.shape[1] != self.n:
            raise ValueError(f"expected (B, {self.n}) values to sort, got {tuple(x.shape)}")
        p = torch.eye(self.n, dtype=x.dtype, device=x.device).expand(len(x), -1, -1)
        for i in self.layers:
            a, b, through, order = (getattr(self, f"layer{i}_{k}") for k in ("a", "b", "through", "order"))
            xa, xb = x[:, a], x[:, b]
            alpha = 1 / math.pi * torch.atan(self.steepness * (xb - xa)) + 0.5
            x = torch.cat((alpha * xa + (1 - alpha) * xb, (1 - alpha) * xa + alpha * xb, x[:, through]), 1)[:, order]
            pa, pb, w = p[:, :, a], p[:, :, b], alpha.unsqueeze(-2)
            p = torch.cat((w * pa + (1 - w) * pb, (1 - w) * pa + w * pb, p[:, :, through]), 2)[:, :, order]
        return x, p
