"""Counter-based noise (ppl_diffusion.noise): a pure function of its coordinates, standard normal, independent
across neighbouring indices, steps, streams and seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ppl_diffusion import noise

# z of the false-alarm probability 1e-4 (two-sided) for the moment checks; the KS test at p > 1e-4.
Z = stats.norm.isf(0.5e-4)
P_MIN = 1e-4


def test_pinned_values():
    """The numbers themselves are part of the contract (a seed means the same bits in every version, on both
    backends): float64 values pinned when the module was written."""
    np.testing.assert_array_equal(noise.normal(0, [0, 1], 5, (3,), dtype=np.float64), [
        [0.08776810805842025, -0.9996912384760055, 0.5625967533865947],
        [0.0533698234197798, 0.5731200791553448, -0.20744866179826357]])
    np.testing.assert_array_equal(noise.normal(2 ** 64 - 1, 12345, 999, (2,), stream=noise.SAMPLE, dtype=np.float64),
                                  [0.1484019564478461, 0.6040853516140083])
    assert noise.normal(0, [0, 1], 5, (3,)).dtype == np.float32
    np.testing.assert_array_equal(noise.normal(0, [0, 1], 5, (3,)),
                                  noise.normal(0, [0, 1], 5, (3,), dtype=np.float64).astype(np.float32))


def test_rows_do_not_depend_on_the_batch():
    """Row i is a function of (seed, index[i], t[i], stream) alone: any subset, order or broadcast of the
    coordinates gives the same row, and a 1-element shape is the first element of a longer one's pair."""
    index, ts = np.arange(7), np.arange(1, 5)
    full = noise.normal(4, index[None, :], ts[:, None], (2, 3))  # [4 x 7 x 2 x 3]
    assert full.shape == (4, 7, 2, 3)
    for j, t in enumerate(ts):
        np.testing.assert_array_equal(full[j], noise.normal(4, index, t, (2, 3)))
        np.testing.assert_array_equal(full[j, 5], noise.normal(4, 5, t, (2, 3)))
        np.testing.assert_array_equal(full[j, ::-2], noise.normal(4, index[::-2], t, (2, 3)))
    np.testing.assert_array_equal(noise.normal(4, index, 3, 6).reshape(7, 2, 3), full[2])  # shape only reshapes
    np.testing.assert_array_equal(noise.normal(4, index, 3, (6,)), noise.normal(4, index, 3, (6,)))  # determinism


@pytest.mark.parametrize("change", ["seed", "index", "t", "stream"])
def test_every_coordinate_changes_the_draw(change):
    base = dict(seed=1, index=2, t=3, stream=noise.XT)
    other = {**base, change: base[change] + 1}
    a = noise.normal(base["seed"], base["index"], base["t"], (16,), stream=base["stream"])
    b = noise.normal(other["seed"], other["index"], other["t"], (16,), stream=other["stream"])
    assert not np.any(a == b)


def test_standard_normal_moments_and_ks():
    z = noise.normal(0, np.arange(2000)[:, None], np.arange(20)[None, :], (25,), dtype=np.float64).ravel()
    n = z.size  # 1e6 draws
    assert abs(z.mean()) < Z / math.sqrt(n), z.mean()
    assert abs(z.var() - 1) < Z * math.sqrt(2 / n), z.var()  # Var(s²) = 2σ⁴/n for a normal
    assert abs((z ** 4).mean() - 3) < Z * math.sqrt(96 / n), (z ** 4).mean()  # Var(z⁴) = 105 − 9
    assert stats.kstest(z, "norm").pvalue > P_MIN
    assert stats.kstest(noise.normal(7, np.arange(1000), 0, (3,), stream=noise.PRIOR).ravel(), "norm").pvalue > P_MIN


@pytest.mark.parametrize("neighbour", ["index", "t", "stream", "seed", "element"])
def test_neighbours_are_uncorrelated(neighbour):
    """Pearson r between draws at neighbouring coordinates (and neighbouring elements, the two halves of one
    Box–Muller pair) is within 5 standard errors (1/√n) of 0, also for |r| of squares (dependence beyond
    correlation, e.g. a shared radius)."""
    index, t = np.arange(20000), 5
    a = noise.normal(3, index, t, (4,), dtype=np.float64)
    b = {"index": lambda: noise.normal(3, index + 1, t, (4,), dtype=np.float64),
         "t": lambda: noise.normal(3, index, t + 1, (4,), dtype=np.float64),
         "stream": lambda: noise.normal(3, index, t, (4,), stream=noise.PREV, dtype=np.float64),
         "seed": lambda: noise.normal(4, index, t, (4,), dtype=np.float64),
         "element": lambda: a[:, [1, 2, 3, 0]]}[neighbour]()
    n = a.size
    for f in (lambda x: x, np.square):
        r = np.corrcoef(f(a).ravel(), f(b).ravel())[0, 1]
        assert abs(r) < 5 / math.sqrt(n), (neighbour, r)


@pytest.mark.parametrize("call, message", [
    (lambda: noise.normal(-1, 0, 0), "seed = -1"),
    (lambda: noise.normal(2 ** 64, 0, 0), "seed = "),
    (lambda: noise.normal(0, [0, -2], 0), "negative value -2"),
    (lambda: noise.normal(0, 0.5, 0), "must be integers"),
    (lambda: noise.normal(0, 0, 1, stream=len(noise.STREAMS)), f"unknown noise stream {len(noise.STREAMS)}"),
], ids=["negative-seed", "big-seed", "negative-index", "float-index", "stream"])
def test_bad_coordinates_one_line(call, message):
    with pytest.raises(ValueError, match=message):
        call()
