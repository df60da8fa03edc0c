"""Counter-based standard-normal noise: a pure function of integer coordinates, the same bits on every backend.

The bound's Monte-Carlo draws and the sampler's noise are indexed by *where they are used* rather than by the
state of a generator: the draw for example ``index`` at step ``t`` of ``stream`` under ``seed`` is

    ε[index, t, stream, e] = BoxMuller(u_1, u_2),   (u_1, u_2) = splitmix64 outputs 2⌊e/2⌋ + 1, 2⌊e/2⌋ + 2
                                                    of the state h(seed, index, t, stream)

for element ``e`` of one example (cosine for even e, sine for odd e), computed in NumPy with uint64 arithmetic
and float64 Box–Muller and cast at the end. So a batch, a subset, a shard of another process, the PyTorch and
the JAX backend all see the same float32 numbers for the same coordinates, and evaluation and sampling give the
same result on 1 or N processes. The key h chains splitmix64's finaliser over the coordinates, and the draws
of one key are splitmix64's outputs from that state (Steele, Lea and Flood 2014, a generator that passes
BigCrush); the tests check moments, a Kolmogorov–Smirnov test and correlations between neighbouring keys.

Streams keep the different draws of one (example, t) independent:

=================  ====================================================================================
``XT``             ε_t of x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε_t, the bound's draw at step t
``PREV``           x_{t−1} ~ q(x_{t−1}|x_t, x_0), the Monte-Carlo step term (``analytic=False``)
``PRIOR``          x_T ~ q(x_T|x_0), the prior term of a prior without closed-form KL (t = 0)
``SAMPLE``         ancestral sampling: the draw of the site x_s at t = s (x_T from the prior, x_{t−1} given
                   x_t, the decoder's x_0 at s = 0)
``REPLICATE``      the generator seed of replicate r of the study's fixed-θ measurements (:func:`seed_of`)
``PROBE``          probe k of example i for the probability-flow ODE's Hutchinson trace (at t = k; Rademacher
                   probes are the signs of these normals)
``DEQUANT``        draw r of example i's uniform dequantization (:func:`uniform`, at t = r)
``TIMESTEP``       draw r of stratum k of example i's step in the bound's estimate (:func:`uniform`, at
                   t = k·m + r, m draws per stratum; :mod:`ppl_diffusion.infer.estimate`)
``HOLDOUT``        training example i's rank for the validation examples held out of the training split
                   (:func:`uniform`, at t = 0; :mod:`ppl_diffusion.train.validation`)
``DIFFUSION``      ε of draw j of example i's continuous-time diffusion term, x_t = α_t x_0 + σ_t ε at the draw's
                   time (at t = j; :mod:`ppl_diffusion.infer.continuous_bound`, whose draws of t are ``TIMESTEP``'s)
=================  ====================================================================================
"""

from __future__ import annotations

import numbers

import numpy as np

# The streams (see the table above), one integer each.
XT = 0  #: stream of ε_t of x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε_t, the bound's draw at step t
PREV = 1  #: stream of x_{t−1} ~ q(x_{t−1}|x_t, x_0), the Monte-Carlo step term
PRIOR = 2  #: stream of x_T ~ q(x_T|x_0), the prior term of a prior without closed-form KL
SAMPLE = 3  #: stream of ancestral sampling's draw of the site x_s at t = s
REPLICATE = 4  #: stream of the generator seed of a replicate (:func:`seed_of`)
PROBE = 5  #: stream of the probability-flow ODE's Hutchinson probes
DEQUANT = 6  #: stream of the uniform dequantization draws (:func:`uniform`)
TIMESTEP = 7  #: stream of the bound's draws of the step t (:func:`uniform`)
HOLDOUT = 8  #: stream of the validation hold-out ranks (:func:`uniform`)
DIFFUSION = 9  #: stream of ε of the continuous-time diffusion term
#: The streams by name.
STREAMS = {"XT": XT, "PREV": PREV, "PRIOR": PRIOR, "SAMPLE": SAMPLE, "REPLICATE": REPLICATE, "PROBE": PROBE,
           "DEQUANT": DEQUANT, "TIMESTEP": TIMESTEP, "HOLDOUT": HOLDOUT, "DIFFUSION": DIFFUSION}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
# One constant per coordinate, so that (index, t) = (a, b) and (b, a) have different keys.
_COORD = tuple(np.uint64(c) for c in (0x8CB92BA72F3D8DD7, 0xD6E8FEB86659FD93, 0xA0761D6478BD642F,
                                        0xE7037ED1A0B428DB))


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection of uint64 with full avalanche), elementwise, wrapping arithmetic."""
    with np.errstate(over="ignore"):  # arrays wrap silently; 0-d ones would warn
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _coordinate(name: str, value) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise ValueError(f"noise coordinate {name} = {value!r} must be integers; pass an int array")
    if a.size and a.min() < 0:
        raise ValueError(f"noise coordinate {name} has the negative value {int(a.min())}; pass integers >= 0")
    return a.astype(np.uint64)


def key(seed: int, index, t, stream: int = XT) -> np.ndarray:
    """The splitmix64 state of each (seed, index, t, stream), uint64 of the broadcast shape of ``index`` and ``t``.

    h = mix(mix(mix(mix(seed + γ) ⊕ mix(index + c_1)) ⊕ mix(t + c_2)) ⊕ mix(stream + c_3)), with splitmix64's
    finaliser ``mix`` and increment γ: every draw of :func:`normal` and :func:`uniform` is a function of it.

    :param int seed: in 0..2⁶⁴ − 1.
    :param index: example indices, integers >= 0.
    :param t: steps, integers >= 0, broadcast against ``index``.
    :param int stream: one of :data:`STREAMS`.
    :rtype: numpy.ndarray

    Example: keys depend on the coordinates alone, not on the other entries of the batch.

    >>> k = key(0, [0, 1, 2], 5)
    >>> k.shape, k.dtype.name
    ((3,), 'uint64')
    >>> bool(key(0, 2, 5) == k[2]), bool(key(0, 5, 2) == k[2])
    (True, False)
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed = {seed!r}; pass an integer in 0..2**64 - 1 (--seed)")
    if stream not in STREAMS.values():
        raise ValueError(f"unknown noise stream {stream!r}; choose one of {STREAMS}")
    index, t = np.broadcast_arrays(_coordinate("index", index), _coordinate("t", t))
    with np.errstate(over="ignore"):
        h = _mix(np.full(index.shape, np.uint64(seed)) + _GOLDEN)
        for c, value in zip(_COORD, (index, t, np.full(index.shape, np.uint64(stream)))):
            h = _mix(h ^ _mix(value + c))
    return h


def seed_of(seed: int, index: int, t: int = 0, stream: int = REPLICATE) -> int:
    """A 31-bit generator seed (for ``pyro.set_rng_seed`` or ``jax.random.PRNGKey``) that depends on (seed,
    index, t, stream) alone: a replicate's randomness when it is drawn by a library's generator.

    It is the top 31 bits of :func:`key`.

    :param int seed: in 0..2⁶⁴ − 1.
    :param int index: the replicate (or example) index, >= 0.
    :param int t: a second coordinate, >= 0.
    :param int stream: one of :data:`STREAMS` (default :data:`REPLICATE`).
    :rtype: int

    Example:

    >>> s = seed_of(0, 3)
    >>> 0 <= s < 2 ** 31, s == seed_of(0, 3), s == seed_of(0, 4)
    (True, True, False)
    """
    return int(key(seed, index, t, stream)) >> 33


def _bits(seed: int, index, t, shape, stream: int, count) -> tuple[np.ndarray, tuple]:
    """53 random bits per draw, ``[*batch x count(m)]`` (m = prod(shape)): splitmix64 outputs 1, 2, … of the key."""
    shape = (int(shape),) if isinstance(shape, numbers.Integral) else tuple(int(s) for s in shape)
    h = key(seed, index, t, stream)  # [*batch]
    m = int(np.prod(shape, dtype=np.int64))
    n = np.arange(1, count(m) + 1, dtype=np.uint64) * _GOLDEN
    with np.errstate(over="ignore"):
        return _mix(h[..., None] + n) >> np.uint64(11), shape


def uniform(seed: int, index, t, shape=(), *, stream: int = DEQUANT, dtype=np.float64) -> np.ndarray:
    """Uniform draws on [0, 1) ``[*batch x *shape]``, a multiple of 2⁻⁵³, for the coordinates as :func:`normal`
    (element e is splitmix64's output e + 1 of the key). Cast to ``dtype`` at the end (float64 by default: a
    float32 cast could round a draw up to 1).

    :param int seed: in 0..2⁶⁴ − 1.
    :param index: example indices, integers >= 0.
    :param t: a second coordinate (e.g. the draw r), integers >= 0, broadcast against ``index``.
    :param shape: the shape of one example's draw.
    :param int stream: one of :data:`STREAMS` (default :data:`DEQUANT`).
    :param dtype: the NumPy dtype of the result.
    :rtype: numpy.ndarray

    Example: row i is the same whatever the other rows are.

    >>> u = uniform(0, [0, 1, 2, 3], 0, (2, 3))
    >>> u.shape, bool(((u >= 0) & (u < 1)).all())
    ((4, 2, 3), True)
    >>> bool((uniform(0, [2], 0, (2, 3))[0] == u[2]).all())
    True
    """
    bits, shape = _bits(seed, index, t, shape, stream, lambda m: m)
    return (bits * 2.0 ** -53).astype(dtype).reshape(bits.shape[:-1] + shape)


def normal(seed: int, index, t, shape=(), *, stream: int = XT, dtype=np.float32) -> np.ndarray:
    r"""Standard normal draws ``[*batch x *shape]`` for the coordinates (``batch`` the broadcast shape of
    ``index`` and ``t``, e.g. ``[len(index)]``): row ``i`` holds ``prod(shape)`` draws of (seed, index[i],
    t[i], stream), whatever the other rows are. Computed in float64 and cast to ``dtype``.

    :param int seed: in 0..2⁶⁴ − 1.
    :param index: example (or sample, replicate) indices, integers >= 0.
    :param t: steps, integers >= 0, broadcast against ``index``.
    :param tuple shape: the shape of one example's draw.
    :param int stream: one of :data:`STREAMS` (:data:`XT`, :data:`PREV`, :data:`PRIOR`, :data:`SAMPLE`, ...).
    :param dtype: the NumPy dtype of the result (float32 by default).
    :rtype: numpy.ndarray

    Each pair of elements (2p, 2p + 1) is one Box–Muller transform of two uniforms u_1 ∈ (0, 1], u_2 ∈ [0, 1):

    .. math::

        \varepsilon_{2p} = \sqrt{-2 \log u_1} \cos(2\pi u_2), \qquad
        \varepsilon_{2p+1} = \sqrt{-2 \log u_1} \sin(2\pi u_2).

    Example: a batch, a subset or a single example see the same numbers; the moments are standard normal's.

    >>> eps = normal(0, [0, 1, 2, 3], 7, (1, 2, 2))
    >>> eps.shape, eps.dtype.name
    ((4, 1, 2, 2), 'float32')
    >>> bool((normal(0, 3, 7, (1, 2, 2)) == eps[3]).all())
    True
    >>> z = normal(1, range(2000), 0, 10, dtype=float)
    >>> bool(abs(z.mean()) < 0.03), bool(abs(z.std() - 1) < 0.03)  # 20,000 draws: 4 standard errors
    (True, True)
    """
    # splitmix64 from state h: output n is mix(h + n·γ), n = 1, 2, …; pair p uses outputs 2p + 1 and 2p + 2.
    bits, shape = _bits(seed, index, t, shape, stream, lambda m: 2 * ((m + 1) // 2))  # [*batch x 2 pairs]
    h_shape, m, pairs = bits.shape[:-1], int(np.prod(shape, dtype=np.int64)), bits.shape[-1] // 2
    u1 = (bits[..., 0::2] + 1.0) * 2.0 ** -53  # (0, 1]: log is finite
    u2 = bits[..., 1::2] * 2.0 ** -53  # [0, 1)
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    z = np.empty(h_shape + (2 * pairs,), dtype=np.float64)
    z[..., 0::2] = r * np.cos(theta)
    z[..., 1::2] = r * np.sin(theta)
    return z[..., :m].astype(dtype).reshape(h_shape + shape)


__all__ = ["DEQUANT", "DIFFUSION", "PREV", "PRIOR", "PROBE", "REPLICATE", "SAMPLE", "STREAMS", "XT", "key", "normal",
           "seed_of", "uniform"]
