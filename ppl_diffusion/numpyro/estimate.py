"""The NumPyro half of the bound's estimate (:mod:`ppl_diffusion.infer.estimate`, ``evaluate --bound estimate
--backend numpyro``): the terms of arbitrary (example, step) rows by the compiled
:func:`~ppl_diffusion.numpyro.chain.step_terms`, with
the full bound's counter-based noise computed on the host (:mod:`ppl_diffusion.noise`, the Pyro backend's
numbers). The plan, the draws of t and the sums are NumPy and shared with the Pyro backend."""

from __future__ import annotations

import jax
import numpy as np

from .. import noise
from .chain import step_terms
from .sampling import _compiled, params_of


def row_terms(diffusion, x: np.ndarray, t: np.ndarray, index: np.ndarray, *, seed: int,
              size: int) -> tuple[np.ndarray, np.ndarray]:
    """L_{t[r]−1} of ``x[r]`` and the prior term L_T of each row, ``([R], [R])`` float64 nats, for ``x``
    ``[R x ...]`` (R <= ``size``), steps ``t`` ``[R]`` and example indices ``index`` ``[R]``: one compiled call,
    padded to ``size`` rows (one compilation per size).

    Row r's terms are those of the full bound (:func:`~ppl_diffusion.numpyro.sampling.per_example_terms`) of
    example ``index[r]`` at step ``t[r]``, for the same ``seed``.

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule and a fixed
        prior.
    :param x: the rows' data ``[R x *event_shape]``.
    :param t: the rows' steps ``int[R]`` in 1..T.
    :param index: the rows' example indices ``int[R]``.
    :param int seed: the seed of the counter-based noise.
    :param int size: the rows per compiled call (R <= size).
    :returns: ``(L_{t−1} [R], L_T [R])``, float64 NumPy, nats.

    Example (the full bound's terms, row by row):

    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.numpyro.estimate import row_terms
    >>> from ppl_diffusion.numpyro.sampling import per_example_terms
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> x = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(3, 2)
    >>> full = per_example_terms(diffusion, x, seed=0)
    >>> term, prior = row_terms(diffusion, x[[2, 0]], np.array([3, 1]), np.array([2, 0]), seed=0, size=4)
    >>> bool(np.allclose(term, [full[2, 2], full[0, 0]], rtol=1e-5)), bool(np.allclose(prior, full[[2, 0], 4]))
    (True, True)
    """
    r = len(t)
    shape = tuple(diffusion.event_shape)
    eps = noise.normal(seed, index, t, shape, stream=noise.XT)
    eps_T = noise.normal(seed, index, 0, shape, stream=noise.PRIOR)
    x = np.asarray(x, np.float32)
    t = np.asarray(t, np.int32)
    if r < size:  # pad with copies of row 0: the shapes stay those of the compiled call
        pad = lambda a: np.concatenate([a, np.repeat(a[:1], size - r, axis=0)])  # noqa: E731
        x, t, eps, eps_T = pad(x), pad(t), pad(eps), pad(eps_T)
    fn = _compiled(diffusion, ("step_terms",), lambda: jax.jit(
        lambda p, x0, tt, e, e_T: step_terms(diffusion, p, x0, tt, e, e_T)))
    term, prior = fn(params_of(diffusion), x, t, eps, eps_T)
    return np.asarray(term, np.float64)[:r], np.asarray(prior, np.float64)[:r]


__all__ = ["row_terms"]
