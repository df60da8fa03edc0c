"""The probability-flow ODE on the NumPyro backend, solved with diffrax: the twin of :mod:`ppl_diffusion.ode`.

The same ODE, continuous-time maps, options and validation as the PyTorch module (read its docstring for the
math): log p_ε(x) = log p_1(x(1)) + ∫_ε^1 tr(∂f/∂x)(x(s), s) ds, one ``diffeqsolve`` for the batch in the state
``[B x (D + 1)]`` = [x flattened, ∫ tr], from s = ε to 1. What differs is how JAX computes it:

* the exact trace is D Jacobian-vector products (forward mode, ``jax.jvp`` under ``vmap`` over the basis
  vectors e_j, the same e_j for every example: the examples are independent, so column j of each example's
  Jacobian comes out at once): one pass of the net over the batch carrying D tangents, no reverse pass and no
  stored activations; Hutchinson's trace is K JVPs vᵀ(∂f/∂x)v. On CPU, D JVPs and D vector-Jacobian products
  (``exact_mode="vjp"``) cost the same for the digits MLP (D = 64, batch 64: 6.8 and 6.1 ms per evaluation at
  best, 10.5 and 11.4 median, shared 2-core machine); forward mode is the default as it keeps no activations for
  a reverse pass. Either is ~4x cheaper per evaluation than the PyTorch side's D copies of each example and one
  reverse pass;
* the step controller is diffrax's ``PIDController`` with the PyTorch side's norm: the largest over the batch of
  each example's RMS scaled error (so both backends control the same quantity); solvers by name
  (:data:`SOLVERS`, dopri5 by default, torchdiffeq's method: on the digits MLP at rtol = atol = 1e-5 it took
  452 evaluations against Tsit5's 764);
* ``adjoint=False`` differentiates through the solver (``RecursiveCheckpointAdjoint``), ``adjoint=True`` solves
  the continuous adjoint backwards (``BacksolveAdjoint``, with the same per-example norm over the state and its
  adjoint and the parameters' adjoint left out of step control: Kidger et al. 2021's seminorm);
* NFE is not counted by a side effect but computed from diffrax's step statistics (:func:`nfe_of`);
* the solve is ``jax.jit``-compiled once per (diffusion, options) and kept on the diffusion object.

Example::

    from ppl_diffusion.numpyro.ode import ProbabilityFlow, log_likelihood, sample_ode

    res = log_likelihood(diffusion, x, trace="hutchinson", seed=0)   # res.log_prob: nats, [B]
    x0, nfe = sample_ode(diffusion, n=16, seed=0)

    def model(x):                                 # maximum likelihood through the ODE with plain SVI
        net = nnx_module("denoiser", diffusion.denoiser)
        numpyro.sample("x", ProbabilityFlow(diffusion, net=net), obs=x)
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .. import noise
from ..continuous import ContinuousTime
from ..ode import PROBES, TRACES, check_options  # noqa: F401  (the same names and one-line errors)

#: The diffrax solvers by name (``--solver``); dopri5 (torchdiffeq's default) is the default.
SOLVERS = ("dopri5", "tsit5", "dopri8", "bosh3")
#: How the exact trace is computed, by D Jacobian-vector products (default) or D vector-Jacobian products.
EXACT_MODES = ("jvp", "vjp")  # the exact trace by D JVPs (default) or D VJPs (as fast on CPU; for comparison)
MAX_STEPS = 4096  # diffrax's bound on the number of steps (its default; RecursiveCheckpointAdjoint needs one)


def _diffrax():
    try:
        import diffrax
    except ImportError:
        raise ImportError("the probability-flow ODE on the NumPyro backend needs diffrax: "
                          "(pip install diffrax)") from None
    return diffrax


def check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS} (--solver)")


def check_model(diffusion) -> None:
    """The ODE needs the original net at every step (a respaced model is refused) and a fixed prior (a learned
    NumPyro prior's parameters are not arguments of the compiled solve): one-line errors."""
    from .priors import Prior
    from .sampling import RespacedDenoiser

    if isinstance(getattr(diffusion, "denoiser", None), RespacedDenoiser):
        raise ValueError("this diffusion is respaced: its net exists only at the kept steps, the ODE calls it "
                         "between steps; pass the model it was respaced from")
    if isinstance(diffusion.prior, Prior):
        raise ValueError("the probability-flow ODE takes a fixed prior; for a learned one pass its trained "
                         "distribution, GaussianDiffusion(prior=handlers.substitute(prior, data=params)(), ...)")


# --------------------------------------------------------------------------------------- time and drift
def coefficients(ct: ContinuousTime, s, dtype) -> tuple:
    r"""``(t, σ, β)`` of the map ``ct`` at a 0-d ``s``: the formulas of the NumPy reference
    (``ContinuousTime.alpha_bar``, ``.beta``, ``.step``) on jnp scalars, computed in float64 under ``jax_enable_x64``
    (else float32)
    and cast to ``dtype``.

    .. math:: \sigma(s) = \sqrt{1 - \bar\alpha(s)}, \quad \beta(s) = -\frac{d}{ds} \log \bar\alpha(s)

    :param ct: the continuous-time map of the schedule (:class:`ppl_diffusion.continuous.ContinuousTime`).
    :param s: the ODE's time in [ε, 1], 0-d.
    :param dtype: the results' dtype.
    :returns: ``(t, σ, β)``: the net's step label, the noise level and the rate, 0-d arrays.

    Example (σ² = 1 − ᾱ(s) of the NumPy reference):

    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.continuous import ContinuousTime
    >>> from ppl_diffusion.numpyro.ode import coefficients
    >>> ct = ContinuousTime(NoiseSchedule.linear(T=10), "vp-linear")
    >>> t, sigma, beta = coefficients(ct, 0.5, np.float32)
    >>> bool(np.isclose(float(sigma) ** 2, 1 - ct.alpha_bar(0.5), rtol=1e-5))
    True
    """
    work = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    s = jnp.asarray(s, work)
    if ct.kind != "vp-linear":
        t = ct.T * s
        tc = jnp.clip(t, 1.0, float(ct.T))
        k = jnp.clip(jnp.floor(tc).astype(jnp.int32), 1, ct.T - 1)  # segment [k, k + 1] of the spline
        c0, c1, c2, c3 = jnp.moveaxis(jnp.asarray(ct.spline, work)[k - 1], -1, 0)
        w = tc - k
        log_sigma = ((c0 * w + c1) * w + c2) * w + c3
        var = jax.nn.sigmoid(2.0 * log_sigma)  # 1 − ᾱ = σ̃² / (1 + σ̃²)
        beta = 2.0 * ct.T * ((3.0 * c0 * w + 2.0 * c1) * w + c2) * var
    else:
        t = 1.0 + (ct.T - 1) * s
        log_ab = -ct.beta_min * s - 0.5 * (ct.beta_max - ct.beta_min) * s ** 2
        var = -jnp.expm1(log_ab)
        beta = ct.beta_min + s * (ct.beta_max - ct.beta_min)
    return t.astype(dtype), jnp.sqrt(var).astype(dtype), beta.astype(dtype)


class TimeCoefficients:
    """:func:`coefficients` of ``ct`` as a callable ``coef(s, dtype) -> (t, σ, β)`` (the PyTorch class's name).

    :param ct: the continuous-time map (:class:`ppl_diffusion.continuous.ContinuousTime`).

    Example:

    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.continuous import ContinuousTime
    >>> from ppl_diffusion.numpyro.ode import TimeCoefficients
    >>> t, sigma, beta = TimeCoefficients(ContinuousTime(NoiseSchedule.linear(T=10)))(1.0, np.float32)
    >>> round(float(t), 4)   # s = 1 is the last step
    10.0
    """

    def __init__(self, ct: ContinuousTime) -> None:
        self.ct = ct

    def __call__(self, s, dtype):
        return coefficients(self.ct, s, dtype)


def drift(diffusion, coef: TimeCoefficients, net, x, s):
    r"""f(x, s) = −½ β(s) [x − ε̂_θ(x, t(s)) / σ(s)] ``[B x ...]``; ``net(x_t, t)`` the denoiser (t a float array
    ``[B]``; the ε̂ half of a learned-variance net).

    .. math:: \frac{dx}{ds} = f(x, s) = -\tfrac12 \beta(s) \Big[x - \frac{\hat\epsilon_\theta(x, t(s))}{\sigma(s)}\Big]

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule.
    :param coef: its :class:`TimeCoefficients`.
    :param net: the denoiser, a callable ``net(x_t, t)``.
    :param x: the state ``[B x *event_shape]``.
    :param s: the time, 0-d.
    :returns: ``[B x *event_shape]``.

    Example (ε̂ = 0: the drift is −½ β(s) x):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.continuous import ContinuousTime
    >>> from ppl_diffusion.numpyro import GaussianDiffusion
    >>> schedule = NoiseSchedule.linear(T=10)
    >>> zero = lambda x_t, t: jnp.zeros_like(x_t)   # ε̂ = 0: the flow only rescales x
    >>> diffusion = GaussianDiffusion(schedule=schedule, denoiser=zero, event_shape=(2,))
    >>> from ppl_diffusion.numpyro.ode import TimeCoefficients, drift
    >>> coef = TimeCoefficients(ContinuousTime(schedule))
    >>> f = drift(diffusion, coef, zero, jnp.ones((3, 2)), 0.5)
    >>> bool(jnp.allclose(f, -0.5 * coef(0.5, jnp.float32)[2]))
    True
    """
    t, sigma, beta = coef(s, x.dtype)
    eps = diffusion.predict_eps(net, x, jnp.full((x.shape[0],), t))
    return -0.5 * beta * (x - eps / sigma)


def make_probes(diffusion, n: int, *, probes: int, probe: str, seed: int | None = None, indices=None, key=None,
                dtype=jnp.float32):
    """Hutchinson probes ``[n x K x *event]``: counter-based for ``seed`` (probe k of example ``indices[i]``, the
    PyTorch backend's numbers), else from the JAX ``key``; Rademacher probes are the signs of the normals.

    :param diffusion: the diffusion (its event shape).
    :param int n: the number of examples.
    :param int probes: K per example.
    :param str probe: ``"rademacher"`` or ``"gaussian"``.
    :param int seed: counter-based probes for (seed, ``indices[i]``, k), or None.
    :param indices: the examples' indices ``int[n]`` (default 0..n − 1).
    :param key: a JAX PRNG key (when ``seed`` is None).
    :returns: ``[n x K x *event_shape]``.

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.continuous import ContinuousTime
    >>> from ppl_diffusion.numpyro import GaussianDiffusion
    >>> schedule = NoiseSchedule.linear(T=10)
    >>> zero = lambda x_t, t: jnp.zeros_like(x_t)   # ε̂ = 0: the flow only rescales x
    >>> diffusion = GaussianDiffusion(schedule=schedule, denoiser=zero, event_shape=(2,))
    >>> from ppl_diffusion.numpyro.ode import make_probes
    >>> v = make_probes(diffusion, 3, probes=4, probe="rademacher", seed=0)
    >>> v.shape, sorted(set(np.asarray(v).ravel().tolist()))
    ((3, 4, 2), [-1.0, 1.0])
    """
    shape = tuple(diffusion.event_shape)
    if seed is not None:
        from ..infer.bound import check_indices

        index = check_indices(indices, n)
        z = jnp.asarray(noise.normal(seed, index[:, None], np.arange(probes)[None, :], shape, stream=noise.PROBE,
                                     dtype=np.float64), dtype)
    elif key is not None:
        z = jax.random.normal(key, (n, probes, *shape), dtype)
    else:
        raise ValueError("Hutchinson probes need seed= (counter-based, the PyTorch backend's numbers) or key= "
                         "(a JAX PRNG key)")
    return jnp.where(z >= 0, 1.0, -1.0).astype(dtype) if probe == "rademacher" else z


def _per_example_rms(y):
    """The largest over the batch of each example's RMS of ``y`` ``[B x ...]``."""
    return jnp.sqrt(jnp.mean(jnp.square(y.reshape(y.shape[0], -1)), 1)).max()


def per_example_norm(y):
    r"""The step controller's norm (the PyTorch side's ``_per_example_norm``): the largest over the batch of each
    example's RMS scaled error. On the adjoint's augmented state (y, a_y, a_args, a_terms) the largest of it over
    y and a_y: the parameters' adjoint does not control the step (a seminorm).

    .. math:: \lVert y \rVert = \max_b \sqrt{\tfrac1D \textstyle\sum_j y_{bj}^2}

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.ode import per_example_norm
    >>> round(float(per_example_norm(jnp.array([[3.0, 4.0], [0.0, 1.0]]))), 4)   # √(25/2)
    3.5355
    """
    if isinstance(y, tuple):
        return jnp.maximum(_per_example_rms(y[0]), _per_example_rms(y[1]))
    return _per_example_rms(y)


ORDERS = {"tsit5": 5, "dopri5": 5, "dopri8": 8, "bosh3": 3}  # the solvers' orders (of the propagated solution)


def _solver(name: str):
    d = _diffrax()
    return {"tsit5": d.Tsit5, "dopri5": d.Dopri5, "dopri8": d.Dopri8, "bosh3": d.Bosh3}[name]()


def nfe_of(solver: str, num_steps):
    """Vector-field evaluations of ``solve`` from diffrax's step count ``num_steps`` (accepted and rejected
    steps): 2 before the solve (f(t0, y0) and the probe f(t0 + h0, y0 + h0 f0) of the initial step size), then
    per step the solver's stages, less the first for an FSAL solver (its f(t0, y0) is the previous step's last
    stage, or the f(t0, y0) handed in; a rejected step reuses it): Tsit5 and dopri5 6, bosh3 3, dopri8 13 (all four
    are FSAL in diffrax). Tested against a vector field that counts its calls.

    :param str solver: a name of :data:`SOLVERS`.
    :param num_steps: diffrax's ``num_steps``.

    Example:

    >>> from ppl_diffusion.numpyro.ode import nfe_of
    >>> nfe_of("dopri5", 10), nfe_of("dopri8", 10)   # 2 + 6 · 10, 2 + 13 · 10
    (62, 132)
    """
    tableau = _solver(solver).tableau
    return 2 + (tableau.num_stages - int(tableau.fsal)) * num_steps


def _initial_step(field, t0, y0, f0, args, *, order: int, rtol: float, atol: float, direction: float):
    """The first step size by Hairer, Nørsett & Wanner's rule (as torchdiffeq's ``_select_initial_step``, with the
    per-example norm): one more evaluation of the field. diffrax's own choice is skipped because, for the
    direction-wrapped terms diffeqsolve builds, it is a fixed 0.01."""
    norm = per_example_norm
    scale = atol + jnp.abs(y0) * rtol
    d0, d1 = norm(y0 / scale), norm(f0 / scale)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.where(d1 < 1e-5, 1.0, d1))
    f1 = field(t0 + direction * h0, y0 + direction * h0 * f0, args)
    d2 = norm((f1 - f0) / scale) / h0
    max_d = jnp.maximum(d1, d2)
    h1 = jnp.where(max_d <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                   (0.01 / jnp.maximum(max_d, 1e-15)) ** (1.0 / (order + 1)))
    return jax.lax.stop_gradient(jnp.minimum(100 * h0, h1))  # as diffrax and torchdiffeq: no gradient through h


def solve(field, y0, t0: float, t1: float, args, *, rtol: float, atol: float, solver: str = "dopri5",
          adjoint: bool = False, max_steps: int = MAX_STEPS):
    """One adaptive ``diffeqsolve`` of ``field(s, y, args)`` from ``t0`` to ``t1`` (either direction) with the
    per-example norm; returns (y(t1), NFE (a 0-d int array, :func:`nfe_of`), diffrax's result code).

    f(t0, y0) is evaluated here, for the first step size (``_initial_step``), and handed to an FSAL solver as
    its first stage, so that the count of evaluations is exact (diffrax re-evaluates the first stage on every
    attempt until a step is accepted when it computes f(t0, y0) itself).

    :param field: the vector field ``field(s, y, args)``, ``y`` ``[B x ...]``.
    :param y0: the state at ``t0``.
    :param float t0: the start.
    :param float t1: the end.
    :param args: passed to ``field``.
    :param float rtol: the relative tolerance.
    :param float atol: the absolute tolerance.
    :param str solver: a name of :data:`SOLVERS`.
    :param bool adjoint: differentiate by the continuous adjoint (``BacksolveAdjoint``).
    :param int max_steps: diffrax's bound on the steps.
    :returns: ``(y(t1), NFE, result code)`` (0: success).

    The solve of :func:`log_likelihood`, :func:`sample_ode` and :class:`ProbabilityFlow` (their examples run it).
    """
    d = _diffrax()
    direction = 1.0 if t1 >= t0 else -1.0
    controller = d.PIDController(rtol=rtol, atol=atol, norm=per_example_norm)
    solv = _solver(solver)
    f0 = field(t0, y0, args)
    dt0 = direction * _initial_step(field, t0, y0, f0, args, order=ORDERS[solver], rtol=rtol, atol=atol,
                                    direction=direction)
    state = None
    if solv.tableau.fsal:  # diffrax's FSAL state: (first step?, f(t0, y0))
        state = (jnp.array(False), jax.lax.stop_gradient(f0) if adjoint else f0)
    if adjoint:  # the backward solve picks its own first step, with the seminorm of per_example_norm
        adj = d.BacksolveAdjoint(stepsize_controller=controller, dt0=None)
    else:
        adj = d.RecursiveCheckpointAdjoint()
    sol = d.diffeqsolve(d.ODETerm(field), solv, t0, t1, dt0, y0, args, stepsize_controller=controller,
                        adjoint=adj, max_steps=max_steps, throw=False, solver_state=state)
    return sol.ys[-1], nfe_of(solver, sol.stats["num_steps"]), sol.result._value


def _trace_field(diffusion, ct: ContinuousTime, apply, trace: str, exact_mode: str = "jvp"):
    """The augmented vector field ``(s, [B x (D + 1)], (params, probes)) -> (f, tr ∂f/∂x)``."""
    coef = TimeCoefficients(ct)
    shape = tuple(diffusion.event_shape)

    def field(s, state, args):
        params, v = args
        b, d = state.shape[0], state.shape[1] - 1

        def f(x_flat):  # [B x D] -> [B x D]
            net = lambda x_t, t: apply(params, x_t, t)  # noqa: E731
            return drift(diffusion, coef, net, x_flat.reshape(b, *shape), s).reshape(b, d)

        x = state[:, :d]
        if trace == "exact" and exact_mode == "jvp":
            # column j of every example's Jacobian from one JVP with tangent e_j in each row
            eye = jnp.eye(d, dtype=state.dtype)
            fx, cols = jax.vmap(lambda e: jax.jvp(f, (x,), (jnp.broadcast_to(e, x.shape),)), out_axes=(None, 0))(eye)
            div = jnp.einsum("jbj->b", cols)
        elif trace == "exact":
            fx, pullback = jax.vjp(f, x)
            eye = jnp.eye(d, dtype=state.dtype)
            rows = jax.vmap(lambda e: pullback(jnp.broadcast_to(e, x.shape))[0])(eye)  # [D x B x D]
            div = jnp.einsum("jbj->b", rows)
        else:
            vf = v.reshape(b, -1, d)
            fx, jv = jax.vmap(lambda u: jax.jvp(f, (x,), (u,)), in_axes=1, out_axes=(None, 1))(vf)
            div = jnp.sum(jv * vf, (1, 2)) / vf.shape[1]
        return jnp.concatenate([fx, div[:, None].astype(state.dtype)], 1)

    return field


def _apply_of(diffusion):
    """(apply(params, x_t, t), params) of the diffusion's denoiser: a Flax NNX module split into its weights (a
    pure dict) and the rest, or any other callable ``net(x_t, t)`` with no parameters (``{}``)."""
    from flax import nnx

    from .chain import denoiser_apply
    from .sampling import params_of

    if isinstance(diffusion.denoiser, nnx.Module):
        return denoiser_apply(diffusion), params_of(diffusion)
    return (lambda params, x_t, t: diffusion.denoiser(x_t, t)), {}


def _convert_net(net, x, t):
    """(apply(params, x_t, t), params) of a callable ``net(x_t, t)``: for ``nnx_module``'s (a partial of its apply
    function on the weights, the NumPyro param site's value) those weights and the diffusion's own compiled apply;
    for any other callable closing over traced weights, they are hoisted out as ``params`` (``jax.closure_convert``)
    so that the adjoint differentiates with respect to them. (``nnx_module``'s net is not traced itself: it writes
    its dropout RNG state to a NumPyro mutable site at each call, which leaks out of an inner trace.)"""
    if (isinstance(net, functools.partial) and len(net.args) == 1 and isinstance(net.args[0], dict)
            and getattr(net.func, "__qualname__", "").startswith("nnx_module.")):
        return None, net.args[0]
    fn, consts = jax.closure_convert(lambda x_t, t_: net(x_t, t_), x, t)
    return (lambda params, x_t, t_: fn(x_t, t_, *params)), list(consts)


def _cached(diffusion, key, build):
    from flax import nnx

    if isinstance(diffusion.denoiser, nnx.Module):
        from .sampling import _compiled

        return _compiled(diffusion, key, build)
    cache = diffusion.__dict__.setdefault("_compiled", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _log_prob_core(diffusion, ct, apply, *, trace, rtol, atol, solver, eps, adjoint, max_steps, exact_mode):
    """``fn(params, x, probes) -> (x1, Δ, NFE, result)``, a pure (jittable) function of the denoiser alone (the prior
    is scored outside it, so that models that differ only in the prior share compiled programs)."""
    field = _trace_field(diffusion, ct, apply, trace, exact_mode)

    def fn(params, x, v):
        b = x.shape[0]
        d = int(np.prod(x.shape[1:]))
        y0 = jnp.concatenate([x.reshape(b, d), jnp.zeros((b, 1), x.dtype)], 1)
        y1, nfe, result = solve(field, y0, eps, 1.0, (params, v), rtol=rtol, atol=atol, solver=solver,
                                adjoint=adjoint, max_steps=max_steps)
        return y1[:, :d].reshape(x.shape), y1[:, d], nfe, result

    return fn


def _check_x(diffusion, x):
    x = jnp.asarray(x)
    shape = tuple(diffusion.event_shape)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x has dtype {x.dtype}; convert it to float (8-bit images: x / 127.5 - 1)")
    if x.ndim != 1 + len(shape) or tuple(x.shape[1:]) != shape or x.shape[0] < 1:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected [B, {', '.join(map(str, shape))}] (a batch of "
                         f"examples of event shape {shape})")
    return x


def _check_probes(diffusion, probe_values, b: int):
    want = (b, probe_values.shape[1] if probe_values.ndim > 1 else 1, *diffusion.event_shape)
    if tuple(probe_values.shape) != want:
        raise ValueError(f"probe_values has shape {tuple(probe_values.shape)}; pass [B, K, *event] = "
                         f"[{b}, K, {', '.join(map(str, diffusion.event_shape))}]")


def _raise_on(result) -> None:
    if int(result) != 0:
        raise ValueError(f"the ODE solver stopped early (diffrax result {int(result)}: more than {MAX_STEPS} steps or "
                         "a non-finite value); loosen rtol / atol (--rtol, --atol) or raise max_steps")


@dataclass
class ODEResult:
    """What :func:`log_likelihood` returns (JAX arrays).

    Example:

    >>> import dataclasses
    >>> from ppl_diffusion.numpyro.ode import ODEResult
    >>> [field.name for field in dataclasses.fields(ODEResult)]
    ['log_prob', 'prior_log_prob', 'delta', 'x1', 'nfe', 'eps']
    """

    log_prob: jax.Array  # [B] log p_ε(x) in nats
    prior_log_prob: jax.Array  # [B] log p_1(x(1))
    delta: jax.Array  # [B] ∫_ε^1 tr(∂f/∂x) ds
    x1: jax.Array  # [B x ...] the latent x(1)
    nfe: int  # evaluations of the vector field (forward solve)
    eps: float  # the small-time end ε


def log_likelihood(diffusion, x, *, params=None, trace: str = "exact", probes: int = 1, probe: str = "rademacher",
                   probe_values=None, rtol: float = 1e-5, atol: float = 1e-5, solver: str = "dopri5",
                   eps: float | None = None, time_map=None, adjoint: bool = False, seed: int | None = None,
                   indices=None, key=None, max_steps: int = MAX_STEPS, exact_mode: str = "jvp") -> ODEResult:
    r"""log p_ε(x) of the probability-flow ODE for a batch ``x`` ``[B x *event_shape]`` (see the module and
    :func:`ppl_diffusion.ode.log_likelihood`, whose keywords these are; ``solver`` names a diffrax solver).

    :param params: the denoiser's weights as a pure dict (default: the module's own,
        :func:`~ppl_diffusion.numpyro.sampling.params_of`).
    :param int seed: counter-based probes for (seed, ``indices[i]``, k); else ``key``, a JAX PRNG key.
    :param int max_steps: diffrax's bound on the steps (a ValueError if reached).
    :param str exact_mode: ``"jvp"`` (default) or ``"vjp"``: how the exact trace is computed (:data:`EXACT_MODES`).

    .. math:: \log p_\epsilon(x) = \log p_1(x(1)) + \int_\epsilon^1 \operatorname{tr}\frac{\partial f}{\partial x}
        (x(s), s)\, ds

    :returns: an :class:`ODEResult`.

    Example (with ε̂ = 0 the flow scales x by c = √(ᾱ(1)/ᾱ(ε)): p_ε = N(0, I/c²)):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.continuous import ContinuousTime
    >>> from ppl_diffusion.numpyro import GaussianDiffusion
    >>> schedule = NoiseSchedule.linear(T=10)
    >>> zero = lambda x_t, t: jnp.zeros_like(x_t)   # ε̂ = 0: the flow only rescales x
    >>> diffusion = GaussianDiffusion(schedule=schedule, denoiser=zero, event_shape=(2,))
    >>> from ppl_diffusion.numpyro.ode import log_likelihood
    >>> x = jnp.array([[0.5, -1.0], [2.0, 0.0]])
    >>> res = log_likelihood(diffusion, x)
    >>> ct = ContinuousTime(schedule)
    >>> c = np.sqrt(ct.alpha_bar(1.0) / ct.alpha_bar(res.eps))
    >>> exact = (-0.5 * (c * np.asarray(x)) ** 2 - 0.5 * np.log(2 * np.pi) + np.log(c)).sum(1)
    >>> res.log_prob.shape, bool(np.allclose(res.log_prob, exact, atol=1e-3))
    ((2,), True)
    """
    fn, params, x, v, eps = _prepare(diffusion, x, params=params, trace=trace, probes=probes, probe=probe,
                                     probe_values=probe_values, rtol=rtol, atol=atol, solver=solver, eps=eps,
                                     time_map=time_map, adjoint=adjoint, seed=seed, indices=indices, key=key,
                                     max_steps=max_steps, exact_mode=exact_mode)
    x1, delta, nfe, result = fn(params, x, v)
    _raise_on(result)
    prior_lp = diffusion.get_prior(x.dtype).log_prob(x1)
    return ODEResult(log_prob=prior_lp + delta, prior_log_prob=prior_lp, delta=delta, x1=x1, nfe=int(nfe), eps=eps)


def _time(diffusion, time_map):
    """The NoiseSchedule's continuous-time map (``None``: ``"grid"``); a γ-schedule model is refused in one line."""
    if getattr(diffusion, "gamma_schedule", False):
        raise ValueError("the NumPyro ODE runs NoiseSchedule models; a γ-schedule model's ODE (its own time, the map "
                         "'gamma') runs on --backend pyro")
    return ContinuousTime.make(diffusion.schedule, "grid" if time_map is None else time_map)


def _prepare(diffusion, x, *, params, trace, probes, probe, probe_values, rtol, atol, solver, eps, time_map, adjoint,
             seed, indices, key, max_steps, exact_mode, apply=None):
    """Checks, probes and the compiled (or, for ``apply``, the plain) solve: (fn, params, x, probes, ε)."""
    check_options(trace=trace, probes=probes, probe=probe, rtol=rtol, atol=atol)
    check_solver(solver)
    if exact_mode not in EXACT_MODES:
        raise ValueError(f"unknown exact_mode {exact_mode!r}; choose one of {EXACT_MODES}")
    check_model(diffusion)
    x = _check_x(diffusion, x)
    ct = _time(diffusion, time_map)
    eps = ct.check_eps(eps)
    b = x.shape[0]
    if trace == "hutchinson":
        if probe_values is None:
            probe_values = make_probes(diffusion, b, probes=probes, probe=probe, seed=seed, indices=indices, key=key,
                                       dtype=x.dtype)
        probe_values = jnp.asarray(probe_values, x.dtype)
        _check_probes(diffusion, probe_values, b)
        v = probe_values
    else:
        v = jnp.zeros((b, 0), x.dtype)
    opts = dict(trace=trace, rtol=float(rtol), atol=float(atol), solver=solver, eps=eps, adjoint=bool(adjoint),
                max_steps=int(max_steps), exact_mode=exact_mode)
    if apply is not None:
        return _log_prob_core(diffusion, ct, apply, **opts), params, x, v, eps
    own_apply, own = _apply_of(diffusion)
    key_ = ("ode-log-prob", ct.kind, *sorted(opts.items()))
    fn = _cached(diffusion, key_, lambda: jax.jit(_log_prob_core(diffusion, ct, own_apply, **opts)))
    return fn, own if params is None else params, x, v, eps


# --------------------------------------------------------------------------------------- sampling
def _flow_core(diffusion, ct, apply, *, rtol, atol, solver, eps, max_steps):
    """``fn(params, x_T) -> (x(ε), NFE, result)``: the plain ODE from s = 1 down to ε."""
    coef = TimeCoefficients(ct)
    shape = tuple(diffusion.event_shape)

    def field(s, y, params):
        net = lambda x_t, t: apply(params, x_t, t)  # noqa: E731
        return drift(diffusion, coef, net, y.reshape(y.shape[0], *shape), s).reshape(y.shape)

    def fn(params, x_T):
        y, nfe, result = solve(field, x_T.reshape(x_T.shape[0], -1), 1.0, eps, params, rtol=rtol, atol=atol,
                               solver=solver, max_steps=max_steps)
        return y.reshape(x_T.shape), nfe, result

    return fn


def _compiled_flow(diffusion, ct, *, rtol, atol, solver, eps, max_steps):
    opts = dict(rtol=float(rtol), atol=float(atol), solver=solver, eps=eps, max_steps=int(max_steps))
    apply, _ = _apply_of(diffusion)
    return _cached(diffusion, ("ode-flow", ct.kind, *sorted(opts.items())),
                   lambda: jax.jit(_flow_core(diffusion, ct, apply, **opts)))


def prior_draws_normal(diffusion, seed: int, index: np.ndarray, dtype=jnp.float32):
    """x_T for (seed, index, T, SAMPLE): loc + scale · counter normal for a Normal prior (ancestral sampling's and
    the PyTorch backend's numbers, drawn in float64 for float64), else
    :func:`~ppl_diffusion.numpyro.sampling.prior_draws`."""
    from .sampling import prior_draws

    prior = diffusion.get_prior(dtype)
    base = prior.base_dist if isinstance(prior, dist.Independent) else prior
    if isinstance(base, dist.Normal):
        np_dtype = np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32
        z = jnp.asarray(noise.normal(seed, index, diffusion.T, tuple(diffusion.event_shape), stream=noise.SAMPLE,
                                     dtype=np_dtype))
        return (base.loc + base.scale * z).astype(dtype)
    return jnp.asarray(prior_draws(diffusion, seed, index, diffusion.T), dtype)


def sample_ode(diffusion, n: int | None = None, *, x_T=None, params=None, rtol: float = 1e-5, atol: float = 1e-5,
               solver: str = "dopri5", eps: float | None = None, time_map=None, seed: int | None = None, indices=None,
               key=None, dtype=jnp.float32, max_steps: int = MAX_STEPS):
    """Deterministic samples: x(ε) ``[n x *event]`` of the ODE solved from s = 1 to ε, and the NFE.

    x(1) = ``x_T`` if given, else drawn from p(x_T): counter-based for ``seed`` (the ``SAMPLE`` stream at t = T,
    the PyTorch twin's numbers), else with the JAX ``key``. No final denoising step.

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule and a fixed
        prior.
    :param int n: the number of samples (when ``x_T`` is None).
    :param x_T: the starting points ``[n x *event_shape]``, or None.
    :param params: the denoiser's weights (default its own).
    :returns: ``(x(ε) [n x *event_shape], NFE)``.

    The other keywords are :func:`log_likelihood`'s.

    Example (with ε̂ = 0 the flow from s = 1 to ε divides x_T by c = √(ᾱ(1)/ᾱ(ε))):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.continuous import ContinuousTime
    >>> from ppl_diffusion.numpyro import GaussianDiffusion
    >>> schedule = NoiseSchedule.linear(T=10)
    >>> zero = lambda x_t, t: jnp.zeros_like(x_t)   # ε̂ = 0: the flow only rescales x
    >>> diffusion = GaussianDiffusion(schedule=schedule, denoiser=zero, event_shape=(2,))
    >>> from ppl_diffusion.numpyro.ode import sample_ode
    >>> x_T = jnp.array([[1.0, -2.0]])
    >>> x, nfe = sample_ode(diffusion, x_T=x_T)
    >>> ct = ContinuousTime(schedule)
    >>> c = np.sqrt(ct.alpha_bar(1.0) / ct.alpha_bar(ct.default_eps))
    >>> bool(np.allclose(x, np.asarray(x_T) / c, rtol=1e-3)), nfe > 0
    (True, True)
    """
    check_options(rtol=rtol, atol=atol)
    check_solver(solver)
    check_model(diffusion)
    ct = _time(diffusion, time_map)
    eps = ct.check_eps(eps)
    if x_T is None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n = {n!r} samples; pass a positive integer (-n)")
        if seed is not None:
            from ..infer.bound import check_indices

            x_T = prior_draws_normal(diffusion, seed, check_indices(indices, int(n)), dtype)
        elif key is not None:
            x_T = diffusion.get_prior(dtype).sample(key, (int(n),))
        else:
            raise ValueError("sample_ode draws x_T from the prior with seed= (counter-based) or key= (a JAX PRNG "
                             "key); pass one, or x_T")
    x_T = _check_x(diffusion, x_T)
    fn = _compiled_flow(diffusion, ct, rtol=rtol, atol=atol, solver=solver, eps=eps, max_steps=max_steps)
    out, nfe, result = fn(_apply_of(diffusion)[1] if params is None else params, x_T)
    _raise_on(result)
    return out, int(nfe)


# --------------------------------------------------------------------------------------- distribution
class ProbabilityFlow(dist.Distribution):
    r"""The diffusion as a continuous normalizing flow: a NumPyro distribution over ``diffusion.event_shape`` whose
    :meth:`log_prob` solves the probability-flow ODE (:func:`log_likelihood`) and whose :meth:`sample` integrates
    it from p(x_T) (:func:`sample_ode`). ``log_prob`` is differentiable in the weights (backpropagation through
    the solver, or the adjoint with ``adjoint=True``) and traceable, so it serves as a likelihood inside a
    NumPyro model (maximum likelihood through the ODE with plain SVI) or as a prior::

        def model(x):
            net = nnx_module("denoiser", diffusion.denoiser)
            numpyro.sample("x", ProbabilityFlow(diffusion, net=net), obs=x)

        svi = SVI(model, lambda x: None, optax.adam(1e-3), Trace_ELBO())

    :param net: the denoiser as a callable ``net(x_t, t)`` (e.g. ``nnx_module``'s, whose weights are NumPyro
        params); its traced weights are differentiated (hoisted by ``jax.closure_convert``). Default: the
        diffusion's own denoiser with ``params`` (default its weights), by the solve compiled once.
    :param params: the denoiser's weights as a pure dict (with ``net=None``).

    The other keywords are :func:`log_likelihood`'s. Hutchinson probes come from ``seed`` (counter-based, probe
    k of example i of the flattened value), ``key``, or else NumPyro's ``prng_key()`` (inside ``seed``). The
    last solve's NFE is ``nfe`` (an array when traced).

    .. math:: \log p(x) = \log p_1(x(1)) + \int_\epsilon^1 \operatorname{tr}\frac{\partial f}{\partial x}\, ds

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.continuous import ContinuousTime
    >>> from ppl_diffusion.numpyro import GaussianDiffusion
    >>> schedule = NoiseSchedule.linear(T=10)
    >>> zero = lambda x_t, t: jnp.zeros_like(x_t)   # ε̂ = 0: the flow only rescales x
    >>> diffusion = GaussianDiffusion(schedule=schedule, denoiser=zero, event_shape=(2,))
    >>> from ppl_diffusion.numpyro.ode import ProbabilityFlow, log_likelihood
    >>> flow = ProbabilityFlow(diffusion)
    >>> x = jnp.array([[0.5, -1.0], [2.0, 0.0]])
    >>> flow.event_shape, bool(np.allclose(flow.log_prob(x), log_likelihood(diffusion, x).log_prob, atol=1e-5))
    ((2,), True)
    """

    arg_constraints: dict = {}

    def __init__(self, diffusion, *, net=None, params=None, trace: str = "exact", probes: int = 1,
                 probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5, solver: str = "dopri5",
                 eps: float | None = None, time_map=None, adjoint: bool = False, seed: int | None = None,
                 key=None, max_steps: int = MAX_STEPS, validate_args=None) -> None:
        check_options(trace=trace, probes=probes, probe=probe, rtol=rtol, atol=atol)
        check_solver(solver)
        check_model(diffusion)
        self.diffusion, self.net, self.params = diffusion, net, params
        self.time = _time(diffusion, time_map)
        self.options = dict(trace=trace, probes=probes, probe=probe, rtol=rtol, atol=atol, solver=solver,
                            eps=self.time.check_eps(eps), time_map=self.time, adjoint=adjoint, seed=seed, key=key,
                            max_steps=max_steps)
        self.nfe = None
        super().__init__(batch_shape=(), event_shape=tuple(diffusion.event_shape), validate_args=validate_args)

    @property
    def support(self):
        """Real vectors of the event shape."""
        return constraints.independent(constraints.real, len(self.event_shape))

    def log_prob(self, value):
        """log p_ε(value) in nats, of shape ``value.shape[:-len(event_shape)]``."""
        n_event = len(self.event_shape)
        value = jnp.asarray(value)
        if value.ndim < n_event or tuple(value.shape[value.ndim - n_event:]) != tuple(self.event_shape):
            raise ValueError(f"value has shape {tuple(value.shape)}; its last dimensions must be the event shape "
                             f"{tuple(self.event_shape)}")
        batch = value.shape[:value.ndim - n_event]
        flat = value.reshape(-1, *self.event_shape)
        o = dict(self.options)
        if o["trace"] == "hutchinson" and o["seed"] is None and o["key"] is None:
            o["key"] = numpyro.prng_key()
            if o["key"] is None:
                raise ValueError("ProbabilityFlow(trace='hutchinson') draws its probes with seed=, key= or NumPyro's "
                                 "prng_key() (inside numpyro.handlers.seed); pass seed= or key=")
        apply, params = (None, self.params) if self.net is None else _convert_net(self.net, flat, flat[:, 0])
        fn, params, flat, v, _ = _prepare(self.diffusion, flat, params=params, probe_values=None, indices=None,
                                          exact_mode="jvp", apply=apply, **o)
        x1, delta, self.nfe, _ = fn(params, flat, v)
        return (self.diffusion.get_prior(flat.dtype).log_prob(x1) + delta).reshape(batch)

    def sample(self, key, sample_shape=()):
        """Samples ``sample_shape + event_shape`` by the ODE from x_T ~ p(x_T) drawn with the JAX PRNG ``key``."""
        shape = tuple(sample_shape)
        n = max(1, int(np.prod(shape)))
        o = self.options
        x_T = self.diffusion.get_prior().sample(key, (n,))
        apply, params = (None, self.params) if self.net is None else _convert_net(self.net, x_T, x_T[:, 0])
        if apply is None:
            fn = _compiled_flow(self.diffusion, self.time, rtol=o["rtol"], atol=o["atol"], solver=o["solver"],
                                eps=o["eps"], max_steps=o["max_steps"])
            params = _apply_of(self.diffusion)[1] if params is None else params
        else:
            fn = _flow_core(self.diffusion, self.time, apply, rtol=o["rtol"], atol=o["atol"], solver=o["solver"],
                            eps=o["eps"], max_steps=o["max_steps"])
        out, self.nfe, _ = fn(params, x_T)
        return out.reshape(*shape, *self.event_shape)


__all__ = ["EXACT_MODES", "ODEResult", "ProbabilityFlow", "SOLVERS", "TimeCoefficients", "coefficients", "drift",
           "log_likelihood", "make_probes", "nfe_of", "per_example_norm", "sample_ode"]
