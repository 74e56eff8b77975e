"""What the ClevrTex model tests (tests/test_<model>_model.py) share: disc images, seeded generators, weight
perturbation, the one-thread fixture and the common checks (masks partition the image, finite gradients, the
generator alone decides the draw, evaluation matches training, the loss falls over a few Adam steps).

A test module imports the module (`import objseg_checks as checks`) and the fixture by name (`from objseg_checks
import one_thread`): pytest uses an autouse fixture found in the test module's namespace. `discs` is
scripts/objseg_reference.py's (the compare scripts' images).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from objseg_reference import discs  # noqa: E402, F401 (the disc images the compare scripts use too)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def image_module(name: str):
    """images/<name>/<name>.py, imported with images/_objseg and images/<name> first on sys.path (as in the image)."""
    sys.path[:0] = [str(REPO / "images" / "_objseg"), str(REPO / "images" / name)]
    return importlib.import_module(name)


def builder(module, small: dict) -> Callable[..., torch.nn.Module]:
    """model(seed=0, **over): module.build({**small, **over}) under torch.manual_seed(seed)."""

    def model(seed: int = 0, **over) -> torch.nn.Module:
        torch.manual_seed(seed)
        return module.build({**small, **over})

    return model


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturbed(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """m with every weight + N(0, 1/fan_in) and every vector + N(0, 0.01), drawn from gen(seed): away from an
    initialisation where the outputs hardly depend on the input (each test module says why it needs this)."""
    g = gen(seed)
    with torch.no_grad():
        for p in m.parameters():
            p += torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.1)
    return m


def assert_partition(out, x: torch.Tensor, slots: int, atol: float = 1e-5) -> None:
    """Masks (B, slots, H, W) and canvas shaped as x, a finite scalar loss, non-negative masks summing to 1."""
    b, _, h, w = x.shape
    assert out.masks.shape == (b, slots, h, w) and out.canvas.shape == x.shape
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert (out.masks >= 0).all()
    torch.testing.assert_close(out.masks.sum(1), torch.ones(b, h, w), atol=atol, rtol=0)


def assert_gradients(m: torch.nn.Module, nonzero: bool = False, skip: Callable[[str], bool] | None = None) -> None:
    """After backward: every parameter has a finite gradient (and a non-zero one with nonzero); a parameter that
    skip(name) picks must have none."""
    for name, p in m.named_parameters():
        if skip is not None and skip(name):
            assert p.grad is None, name
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if nonzero:
            assert p.grad.abs().max() > 0, name


def assert_same_draw(a, b) -> None:
    assert torch.equal(a.canvas, b.canvas) and torch.equal(a.masks, b.masks) and torch.equal(a.loss, b.loss)


def draws(m: torch.nn.Module, x: torch.Tensor, **kw):
    """m's outputs on x under no_grad with gen(5), gen(5) again, gen(6), and gen(5) after reseeding the global RNG
    (a, b, c, d); checks that a == b == d (the generator decides the draw, the global RNG plays no part) and that
    the model leaves grad mode as it found it."""
    with torch.no_grad():
        a, b, c = m(x, gen(5), **kw), m(x, gen(5), **kw), m(x, gen(6), **kw)
        torch.manual_seed(123)
        d = m(x, gen(5), **kw)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert_same_draw(a, b)
    assert_same_draw(a, d)
    return a, b, c, d


def assert_draws_in_both_modes(m: torch.nn.Module, x: torch.Tensor, modes: Iterable[tuple[bool, int | None]]):
    """For each (training, step): draws() agree, and another seed moves both canvas and masks."""
    for mode, step in modes:
        m.train(mode)
        a, _, c, _ = draws(m, x, step=step)
        assert not torch.allclose(a.canvas, c.canvas) and not torch.allclose(a.masks, c.masks)


def assert_eval_matches_train(t, a, rel: float = 1e-6) -> None:
    """A training forward t computes the same masks, canvas (1e-6) and loss (rel) as the evaluation forward a."""
    torch.testing.assert_close(t.masks, a.masks, rtol=0, atol=1e-6)
    torch.testing.assert_close(t.canvas, a.canvas, rtol=0, atol=1e-6)
    assert t.loss.item() == pytest.approx(a.loss.item(), rel=rel)


def fit(
    m: torch.nn.Module,
    x: torch.Tensor,
    lr: float,
    record: Callable = lambda out: out.loss.item(),
    steps: int = 30,
    clip: float | None = None,
    step_index: bool = True,
) -> list:
    """`steps` Adam steps (lr) of m on x, one generator (gen(0)) for all, passing step=i (or step=None without
    step_index), the gradient norm clipped to clip; returns record(out) of every step."""
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    g = gen(0)
    values = []
    for i in range(steps):
        out = m(x, g, step=i if step_index else None)
        opt.zero_grad()
        out.loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
        opt.step()
        values.append(record(out))
    return values


def assert_falls(values: list, below: float) -> None:
    """The mean of the last three values is below `below` times the mean of the first three."""
    first, last = np.mean(values[:3]), np.mean(values[-3:])
    assert last < below * first, values


def assert_falls_by(values: list, fraction: float) -> None:
    """The mean of the last three values is below the mean of the first three by fraction of its magnitude (for
    values that may be negative, as a Gaussian NLL)."""
    first, last = np.mean(values[:3]), np.mean(values[-3:])
    assert last < first - fraction * abs(first), values
