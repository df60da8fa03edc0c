"""Uniform dequantization of 8-bit data in model space, and the offset that turns a density into bits/dim.

A continuous density p (the probability-flow ODE's) on discrete pixels is not a likelihood: its value at a
point can exceed 1, and −log2 p(x)/D can be negative (score_sde issue 24). A density defines a discrete model
by integrating it over a cell around each value, P(k) = ∫_cell(k) p(y) dy, and with y uniform on the cell
(volume V = h^D for cells of width h) Jensen's inequality bounds that model's code length:

    −log P(k) = −log V − log E_u[p(y)] ≤ −log V + E_u[−log p(y)],      y = cell(k) point at u ~ U[0, 1)^D,

so, per dimension and in bits,

    −log2 P(k) / D ≤ E_u[−log2 p(y)] / D − log2 h.                                              (1)

The right-hand side is estimated by draws of u (:func:`dequantize`); ``offset_bits`` is −log2 h. Two cell
conventions for our images x = 2k/255 − 1, k ∈ 0..255 (:mod:`ppl_diffusion.data`):

``"uniform"`` (ours, the default)
    y = x + (2/255)(u − ½): cells of width h = 2/255 centred on the training values, the bins of the
    discretized decoder (DDPM §3.3). Offset −log2(2/255) = log2(127.5) = 6.9944 bits.
``"score-sde"`` (score_sde's, for comparing with its figures)
    data are scaled to [0, 1] as (k + u)/256 and then to [−1, 1]: y = 2(k + u)/256 − 1, cells of width
    h = 2/256. Offset −log2(2/256) = 7 bits: score_sde's "+7" (score_sde_pytorch issue 51). In their terms,
    cells of width 1/256 on [0, 1] cost −log2(1/256) = 8 bits, and the map [0, 1] → [−1, 1] doubles lengths,
    so the density on [−1, 1] is 2^−D times the density on [0, 1]: −1 bit per dimension, 8 − 1 = 7. These
    cells are *not* centred on our training values (k/255 against (k + ½)/256: up to half a cell off at
    the ends), so the net is scored a little off the data it was trained on.
``"none"`` (continuous data: the 2-D toys, ``gaussian``)
    y = x and no offset: bits/dim = −log2 p(x)/D, a differential entropy's estimate, which may be negative.

``"none"`` is refused for 8-bit images and the two dequantizations for continuous data (:func:`resolve`), each
with one line. Draws are counter-based: draw r of test example i is ``noise.uniform(seed, i, r, shape,
stream=noise.DEQUANT)``, so results do not depend on batching, processes or the backend. Both sides of (1) are
tested against numerical integration over the cells of a known Gaussian (``tests/test_likelihood.py``): the
bound holds and is tight to ~h²/σ² for a density that is smooth on the scale of a cell.
"""

from __future__ import annotations

import math

import numpy as np

from . import noise

#: The dequantizations by name (``--dequantization``; ``"auto"`` is resolved by :func:`resolve`).
KINDS = ("uniform", "score-sde", "none")
PIXEL_BINS = 256  # 8-bit pixels


def cell_width(kind: str, bins: int = PIXEL_BINS) -> float | None:
    """h: the width of a cell in model space (``None`` for ``"none"``): 2/(bins − 1) for ``"uniform"``, 2/bins for
    ``"score-sde"``.

    :param str kind: one of :data:`KINDS`.
    :param int bins: the number of pixel values (256).

    >>> round(cell_width("uniform"), 6), cell_width("score-sde"), cell_width("none")
    (0.007843, 0.0078125, None)
    """
    _check_kind(kind)
    return {"uniform": 2.0 / (bins - 1), "score-sde": 2.0 / bins, "none": None}[kind]


def offset_bits(kind: str, bins: int = PIXEL_BINS) -> float:
    r"""−log2 h, the bits per dimension added to −log2 p(y)/D (0 for ``"none"``); see (1) of the module.

    .. math::

        -\frac{\log_2 P(k)}{D} \le \frac{\mathbb{E}_u[-\log_2 p(y)]}{D} - \log_2 h.

    :param str kind: one of :data:`KINDS`.
    :param int bins: the number of pixel values (256).

    >>> round(offset_bits("uniform"), 4), offset_bits("score-sde"), offset_bits("none")  # log2(127.5), 7, 0
    (6.9944, 7.0, 0.0)
    """
    h = cell_width(kind, bins)
    return 0.0 if h is None else -math.log2(h)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown dequantization {kind!r}; choose one of {('auto',) + KINDS} (--dequantization)")


def resolve(kind: str, images: bool) -> str:
    """``kind`` checked against the data (``"auto"``: ``"uniform"`` for 8-bit images, ``"none"`` otherwise).

    :param str kind: ``"auto"`` or one of :data:`KINDS`.
    :param bool images: whether the data are 8-bit images (a discretized decoder,
        ``ppl_diffusion.sampling.is_images``).
    :raises ValueError: for ``"none"`` on images, a dequantization on continuous data, or an unknown name.

    >>> resolve("auto", images=True), resolve("auto", images=False)
    ('uniform', 'none')
    >>> resolve("none", images=True)
    Traceback (most recent call last):
    ...
    ValueError: dequantization 'none' on 8-bit images: ...
    """
    if kind == "auto":
        return "uniform" if images else "none"
    _check_kind(kind)
    if images and kind == "none":
        raise ValueError("dequantization 'none' on 8-bit images: a density at discrete points is not a likelihood "
                         "(bits/dim can go negative); pass --dequantization uniform (or score-sde, or auto)")
    if not images and kind != "none":
        raise ValueError(f"dequantization {kind!r} on continuous data: a decoder/data pairing that has no discrete "
                         "cells to dequantize; pass --dequantization none (or auto)")
    return kind


def pixels_of(x: np.ndarray, bins: int = PIXEL_BINS) -> np.ndarray:
    """k = round((x + 1)(bins − 1)/2), int64, for model-space values ``x`` on the 8-bit grid (one-line error if a
    value is off the grid by more than float32 rounding).

    :param numpy.ndarray x: values 2k/(bins − 1) − 1 in model space.
    :param int bins: the number of pixel values (256).

    >>> pixels_of([-1.0, 1 / 255, 1.0]).tolist()
    [0, 128, 255]
    """
    x = np.asarray(x, dtype=np.float64)
    scaled = (x + 1.0) * (bins - 1) / 2.0
    k = np.rint(scaled)
    if x.size and (np.abs(scaled - k).max() > 1e-3 or k.min() < 0 or k.max() > bins - 1):
        raise ValueError(f"x is not on the {bins}-value pixel grid 2k/{bins - 1} − 1 (off by up to "
                         f"{np.abs(scaled - k).max():.3g} pixels, range {x.min():.3g}..{x.max():.3g}); dequantize "
                         "8-bit images in model space (ppl_diffusion.data), or pass dequantization 'none'")
    return k.astype(np.int64)


def dequantize(x, kind: str, *, seed: int, indices, draw: int = 0, bins: int = PIXEL_BINS) -> np.ndarray:
    """Draw ``draw`` of the dequantized y ``[N x *event]`` for the examples ``x`` ``[N x *event]`` (model space,
    NumPy or tensor), example n being test example ``indices[n]``: u = ``noise.uniform(seed, indices[n], draw,
    event, stream=DEQUANT)``, y in float64 from the exact pixel k, cast to float32 (``x`` itself for ``"none"``).
    ``draw`` is an int or one per example ``[N]``.

    ``"uniform"``: y = x + (2/255)(u − ½); ``"score-sde"``: y = 2(k + u)/256 − 1 (see the module).

    :param x: examples on the pixel grid, ``[N x *event]``.
    :param str kind: one of :data:`KINDS`.
    :param int seed: the run's seed.
    :param indices: the test examples' indices ``[N]``, integers >= 0.
    :param draw: which draw of u (an int, or one per example).
    :param int bins: the number of pixel values (256).

    Example: each value stays inside its own cell of width 2/255, and the draw depends on (seed, index, draw) alone.

    >>> import numpy as np
    >>> x = np.array([[-1.0, 1 / 255, 1.0]], dtype=np.float32)
    >>> y = dequantize(x, "uniform", seed=0, indices=[5])
    >>> y.shape, y.dtype.name, bool((np.abs(y - x) <= 1 / 255).all())
    ((1, 3), 'float32', True)
    >>> bool((dequantize(x, "uniform", seed=0, indices=[5]) == y).all())
    True
    """
    _check_kind(kind)
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if kind == "none":
        return x
    indices = np.asarray(indices, dtype=np.int64)
    if indices.shape != (len(x),):
        raise ValueError(f"indices must be {len(x)} integers >= 0 (one per example), got shape {indices.shape}")
    k = pixels_of(x, bins)
    u = noise.uniform(seed, indices, draw, tuple(x.shape[1:]), stream=noise.DEQUANT)
    if kind == "uniform":
        y = (2.0 * k + 2.0 * u - 1.0) / (bins - 1) - 1.0  # x + (2/255)(u − ½)
    else:
        y = 2.0 * (k + u) / bins - 1.0
    return y.astype(np.float32)


def bits_per_dim(log_prob, num_dims: int, kind: str, bins: int = PIXEL_BINS) -> np.ndarray:
    """−log p(y) / (D ln 2) + :func:`offset_bits`: the right-hand side of (1) for one draw (``log_prob`` in nats).

    :param log_prob: log p(y) per example, in nats, ``[N]``.
    :param int num_dims: D, the dimensions of one example.
    :param str kind: one of :data:`KINDS`.
    :param int bins: the number of pixel values (256).
    :rtype: numpy.ndarray

    Example: a density of 1 per unit volume (log p = 0) on 8-bit data costs log2(127.5) bits per dimension.

    >>> bits_per_dim([0.0], num_dims=3, kind="uniform").round(4).tolist()
    [6.9944]
    >>> bits_per_dim([-3 * np.log(2)], num_dims=3, kind="none").tolist()  # 1 bit per dimension
    [1.0]
    """
    return -np.asarray(log_prob, dtype=np.float64) / (num_dims * math.log(2.0)) + offset_bits(kind, bins)


__all__ = ["KINDS", "bits_per_dim", "cell_width", "dequantize", "offset_bits", "pixels_of", "resolve"]
