"""Uniform dequantization: the offsets, the cells, the counter-based draws, and the Jensen bound (1) of
:mod:`ppl_diffusion.dequantize` against numerical integration of a known density over the cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ppl_diffusion import dequantize as dq
from ppl_diffusion import noise
from ppl_diffusion.data import to_model_space

from .common import assert_mc_close, mean_se


def test_offsets():
    assert dq.offset_bits("uniform") == pytest.approx(math.log2(127.5), rel=1e-15)
    assert dq.offset_bits("uniform") == pytest.approx(6.9944, abs=1e-4)
    assert dq.offset_bits("score-sde") == 7.0  # score_sde's "+7": 8 bits for 1/256 cells on [0, 1], −1 for ×2
    assert dq.offset_bits("none") == 0.0
    assert dq.cell_width("uniform") == 2 / 255 and dq.cell_width("score-sde") == 2 / 256


def pixels(n=40, shape=(3, 2, 2), seed=0):
    k = np.random.default_rng(seed).integers(0, 256, (n, *shape))
    k[0] = 0  # the edge cells
    k[1] = 255
    return k, to_model_space(k).numpy()


@pytest.mark.parametrize("kind", ["uniform", "score-sde"])
def test_draws_fill_the_cells(kind):
    k, x = pixels()
    y = np.stack([dq.dequantize(x, kind, seed=3, indices=np.arange(len(x)), draw=r) for r in range(4)]).astype(
        np.float64)
    if kind == "uniform":  # centred on x = 2k/255 − 1, width 2/255
        u = (y - (2 * k / 255 - 1)) * 255 / 2 + 0.5
    else:  # [2k/256 − 1, 2(k + 1)/256 − 1)
        u = (y + 1) * 128 - k
    assert u.min() > -1e-4 and u.max() < 1 + 1e-4  # float32 rounding of y
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-4
    # u is exactly noise.uniform of (seed, index, draw) up to float32 rounding of y
    want = noise.uniform(3, np.arange(len(x)), 2, x.shape[1:], stream=noise.DEQUANT)
    np.testing.assert_allclose(u[2], want, atol=2e-4 * (255 if kind == "uniform" else 256) / 2)


def test_draws_do_not_depend_on_batching():
    _, x = pixels(12)
    full = dq.dequantize(x, "uniform", seed=1, indices=np.arange(12), draw=1)
    part = dq.dequantize(x[3:7], "uniform", seed=1, indices=np.arange(3, 7), draw=1)
    np.testing.assert_array_equal(part, full[3:7])
    assert (dq.dequantize(x, "uniform", seed=1, indices=np.arange(12), draw=0) != full).all()  # draws differ
    assert (dq.dequantize(x, "uniform", seed=2, indices=np.arange(12), draw=1) != full).all()  # seeds differ
    assert dq.dequantize(x, "none", seed=1, indices=np.arange(12)) is not None


def test_resolve_and_bad_input():
    assert dq.resolve("auto", True) == "uniform" and dq.resolve("auto", False) == "none"
    assert dq.resolve("score-sde", True) == "score-sde" and dq.resolve("none", False) == "none"
    with pytest.raises(ValueError, match="not a likelihood"):
        dq.resolve("none", True)
    with pytest.raises(ValueError, match="no discrete cells"):
        dq.resolve("uniform", False)
    with pytest.raises(ValueError, match="unknown dequantization 'logit'"):
        dq.resolve("logit", True)
    with pytest.raises(ValueError, match="pixel grid"):
        dq.dequantize(np.full((2, 3), 0.5, np.float32), "uniform", seed=0, indices=[0, 1])


# ---------------------------------------------------------------------------------------- the bound (1)
def _cell_nodes(lo, h, n=12):
    """Gauss–Legendre nodes and weights on the 2-D cell [lo, lo + h)² (weights sum to h²)."""
    g, w = np.polynomial.legendre.leggauss(n)
    t = lo[:, None] + h * (g + 1) / 2  # [2 x n]
    xx, yy = np.meshgrid(t[0], t[1], indexing="ij")
    ww = np.outer(w, w) * (h / 2) ** 2
    return np.stack([xx.ravel(), yy.ravel()], 1), ww.ravel()


@pytest.mark.parametrize("kind", ["uniform", "score-sde"])
def test_bound_holds_and_is_tight_for_a_gaussian(kind):
    """A correlated 2-D Gaussian density p on model space: the exact discrete −log2 P(k)/D, P(k) the integral of
    p over k's cell (Gauss–Legendre, exact to ~1e-12 for a density smooth on the cell's scale), is below
    E_u[−log2 p(y)]/D + offset (the same quadrature) by the Jensen gap, which is ≥ 0 and small (~h²/(24 σ²)
    nats per dimension ≈ 1e-4 bits here; an offset off by log2(128/127.5) = 0.0056 would fail either side), and
    the Monte-Carlo mean over dequantize's draws matches the quadrature within 5 SE."""
    mean, cov = np.array([0.1, -0.2]), np.array([[0.04, 0.012], [0.012, 0.03]])
    p = stats.multivariate_normal(mean, cov)
    h = {"uniform": 2 / 255, "score-sde": 2 / 256}[kind]  # the cells by their definitions, not the module's
    rng = np.random.default_rng(0)
    ks = np.clip(np.round((rng.multivariate_normal(mean, cov, 25) + 1) * 127.5), 0, 255).astype(np.int64)
    x = to_model_space(ks).numpy()
    for i, k in enumerate(ks):
        lo = (2 * k / 255 - 1 - h / 2) if kind == "uniform" else (2 * k / 256 - 1)
        nodes, weights = _cell_nodes(lo, h)
        exact = -np.log2(weights @ p.pdf(nodes)) / 2  # −log2 P(k) / D
        jensen = (weights @ -p.logpdf(nodes)) / (h * h) / (2 * math.log(2)) + dq.offset_bits(kind)
        assert 0 <= jensen - exact < 5e-4, (k, jensen - exact)
        if i < 3:  # the draws of dequantize estimate the same right-hand side
            r = np.arange(4000)  # draw r of example i, one row each
            y = dq.dequantize(np.repeat(x[i:i + 1], len(r), 0), kind, seed=0, indices=np.full(len(r), i), draw=r)
            mc = dq.bits_per_dim(p.logpdf(y.astype(np.float64)), 2, kind)
            assert_mc_close(mean_se(mc), (jensen, 0.0), what=f"E_u bound at k = {k}")
