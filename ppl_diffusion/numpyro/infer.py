"""Per-example ELBO terms of NumPyro traces, and the stochastic-timestep ELBO for ``numpyro.infer.SVI``.

The same rules as the PyTorch backend (:mod:`ppl_diffusion.infer.trace_terms`): an observed site
contributes log p(x); a latent site −KL(q || p) when ``analytic`` and a closed form is registered
(``numpyro.distributions.kl.kl_divergence``), else the one-sample log p(z) − log q(z); masked-out
examples contribute exactly 0; scales are applied by the caller.

The estimators (:class:`StochasticTimestepELBO`, :class:`ChainELBO`, :class:`ContinuousTimeELBO`) are NumPyro
ELBOs: ``numpyro.infer.SVI(diffusion.model, diffusion.guide, optax.adam(1e-3), loss=...)`` trains with them; a
continuous-time model (T = 0) has no chain for ``model``/``guide`` to run at ``SVI.init``, so it is
``SVI(diffusion.continuous_model, diffusion.continuous_guide, ..., loss=ContinuousTimeELBO())``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions.kl import kl_divergence
from numpyro.infer.elbo import ELBO
from numpyro.primitives import Messenger

from . import distributed as dp

PLATE = "data"


class SliceDraws(Messenger):
    """Inside a :func:`~ppl_diffusion.numpyro.distributed.micro_batch`, draw each latent Normal site along the
    ``"data"`` plate for the whole global batch from its key and keep the micro-batch's rows: loc + scale · ε with
    ε = ``random.normal(key, global shape)[rows]``, the value the unsplit batch's site has in these rows (NumPyro's
    Normal draws loc + ε · scale from the same key). Outside a micro-batch it does nothing. The twin of the rows of
    :class:`ppl_diffusion.infer.draws.BatchDraws`."""

    def process_message(self, msg):
        if (msg["type"] != "sample" or msg.get("is_observed") or msg.get("value") is not None
                or dp.current_micro_batch() is None):
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == PLATE), None)
        if frame is None:
            return  # one value for the whole batch: the same draw in every micro-batch
        base = msg["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        if not isinstance(base, dist.Normal):
            raise ValueError(f"site {msg['name']!r} is a {type(base).__name__}: a micro-batch draws Normal latents for "
                             "the global batch only; train without --microbatch")
        fn = msg["fn"]
        sample_shape = tuple(msg["kwargs"].get("sample_shape", ()))
        shape = sample_shape + tuple(fn.batch_shape) + tuple(fn.event_shape)
        axis = len(sample_shape) + len(fn.batch_shape) + frame.dim
        eps = dp.take_rows(jax.random.normal(msg["kwargs"]["rng_key"], dp.global_rows(shape, axis)), axis)
        msg["value"] = base.loc + jnp.reshape(eps, jnp.shape(base.loc)) * base.scale


def trace_pair(model, guide, rng_key, *args, **kwargs):
    """Run ``guide`` seeded with ``rng_key``, then ``model`` replayed on its samples; (model_trace, guide_trace).
    Inside a micro-batch the guide's latents are the global batch's draws, sliced (``SliceDraws``).

    :param model: a NumPyro program.
    :param guide: a NumPyro program over the model's latent sites.
    :param rng_key: a JAX PRNG key (split between the two).
    :param args: the programs' arguments (``kwargs`` too).
    :returns: ``(model_trace, guide_trace)``, NumPyro traces (ordered dicts of sites).

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> x0 = jnp.zeros((3, 2))
    >>> from ppl_diffusion.numpyro import trace_pair
    >>> model_trace, guide_trace = trace_pair(diffusion.step_model, diffusion.step_guide, jax.random.key(0), x0,
    ...                                       jnp.array([1, 2, 4]))
    >>> bool((model_trace["x_t"]["value"] == guide_trace["x_t"]["value"]).all())   # the model replays the guide
    True
    """
    k_guide, k_model = jax.random.split(rng_key)
    guide_trace = handlers.trace(SliceDraws(handlers.seed(guide, k_guide))).get_trace(*args, **kwargs)
    model_trace = handlers.trace(handlers.replay(handlers.seed(model, k_model), guide_trace)).get_trace(
        *args, **kwargs)
    return model_trace, guide_trace


def per_example_elbo(model_trace, guide_trace, analytic: bool) -> dict:
    r"""For every sample site of the model, its per-example contribution to the ELBO (``[B]``).

    .. math::

        \ell_{\text{site}} = \begin{cases} \log p(x) & \text{observed} \\
        -\mathrm{KL}(q \,\|\, p) & \text{latent, } \texttt{analytic} \text{ and registered} \\
        \log p(z) - \log q(z) & \text{latent, otherwise (one sample)} \end{cases}

    Masked-out examples contribute exactly 0; scales (``handlers.scale``) are not applied. The twin of
    :func:`ppl_diffusion.infer.trace_terms.per_example_elbo`.

    :param model_trace: the model's trace, replayed on the guide's (:func:`trace_pair`).
    :param guide_trace: the guide's trace.
    :param bool analytic: use closed-form KLs where NumPyro registers them.
    :returns: a dict site name → ``[B]``, in the model's site order.

    Example (the ``x_t`` sites of the one-step pair are the same q(x_t|x_0): their KL is 0; the decoder's
    ``x_0`` is masked out where t > 1):

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> x0 = jnp.zeros((3, 2))
    >>> from ppl_diffusion.numpyro import per_example_elbo, trace_pair
    >>> traces = trace_pair(diffusion.step_model, diffusion.step_guide, jax.random.key(0), x0, jnp.array([1, 2, 4]))
    >>> terms = per_example_elbo(*traces, analytic=True)
    >>> {name: term.shape for name, term in terms.items()}
    {'x_T': (3,), 'x_t': (3,), 'x_prev': (3,), 'x_0': (3,)}
    >>> terms["x_t"].tolist(), [float(v) == 0.0 for v in terms["x_0"]]
    ([0.0, 0.0, 0.0], [False, True, True])
    """
    out = {}
    for name, site in model_trace.items():
        if site["type"] != "sample":
            continue
        fn, value = site["fn"], site["value"]
        if site["is_observed"]:
            term = fn.log_prob(value)
        else:
            guide_fn = guide_trace[name]["fn"]
            term = None
            if analytic:
                try:
                    term = -kl_divergence(guide_fn, fn)
                except NotImplementedError:
                    term = None
            if term is None:
                term = fn.log_prob(value) - guide_fn.log_prob(value)
        mask = site.get("mask")
        if mask is not None and mask is not True:
            term = jnp.where(mask, term, jnp.zeros((), term.dtype))
        out[name] = term
    return out


def _mutable_sites(model_trace) -> dict:
    return {name: site["value"] for name, site in model_trace.items() if site["type"] == "mutable"}


def stochastic_elbo_terms(diffusion, rng_key, x0, *, step_term: str = "kl", params=None, t=None, weight=None,
                          with_trace: bool = False):
    r"""Per-example ELBO estimates ``[B]`` from one step t per example (weight 1/P(t)), x_t ~ q(x_t|x_0); returns
    (ELBO, t, step terms −L_{t−1}) and the model trace if ``with_trace``. ``t`` and ``weight`` default to a
    uniform draw (weight T). ``params`` (a NumPyro param map) replaces the registered weights.

    .. math:: \widehat{\mathrm{ELBO}} = -\mathrm{KL}(q(x_T \mid x_0) \,\|\, p(x_T)) - \frac{L_{t-1}}{P(t)},
        \quad t \sim P

    an unbiased estimate of the ELBO −Σ_t L_t (the estimate of the PyTorch backend's
    :class:`~ppl_diffusion.infer.stochastic_elbo.StochasticTimestepELBO`).

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion`.
    :param rng_key: a JAX PRNG key.
    :param x0: the data ``[B x *event_shape]``.
    :param str step_term: ``"kl"`` (L_{t−1} in closed form) or ``"mc"`` (one sample of x_{t−1}).
    :param params: a NumPyro param map (``{"denoiser$params": ...}``) or None.
    :param t: steps ``int[B]`` in 1..T, or None (uniform).
    :param weight: 1/P(t), ``[B]`` or a scalar (needed with ``t``).
    :param bool with_trace: also return the model's trace.
    :returns: ``(elbo [B], t [B], step [B])`` nats (and the trace).

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> x0 = jnp.zeros((3, 2))
    >>> from ppl_diffusion.numpyro import stochastic_elbo_terms
    >>> elbo, t, step = stochastic_elbo_terms(diffusion, jax.random.key(0), x0)
    >>> elbo.shape, bool(((t >= 1) & (t <= 4)).all())
    ((3,), True)
    """
    k_t, k_trace = jax.random.split(rng_key)
    if t is None:
        t = jax.random.randint(k_t, (x0.shape[0],), 1, diffusion.T + 1)
        weight = diffusion.T
    elif weight is None:
        raise ValueError("pass the importance weights 1/P(t) with the steps t (weight=...)")
    model, guide = diffusion.step_model, diffusion.step_guide
    if params is not None:
        model = handlers.substitute(model, data=params)
    model_trace, guide_trace = trace_pair(model, guide, k_trace, x0, t)
    site = per_example_elbo(model_trace, guide_trace, analytic=step_term == "kl")
    step = site["x_t"] + site["x_prev"] + site["x_0"]
    elbo = site["x_T"] + jnp.asarray(weight, step.dtype) * step
    return (elbo, t, step, model_trace) if with_trace else (elbo, t, step)


def _diffusion_of(model):
    diffusion = getattr(model, "__self__", None)
    if diffusion is None or not hasattr(diffusion, "step_model"):
        raise TypeError("this estimator scores a ppl_diffusion.numpyro.GaussianDiffusion; pass "
                        f"model=diffusion.model or diffusion.step_model (got {model!r})")
    return diffusion


def _reduce(elbo, reduction: str):
    return -jnp.sum(elbo) if reduction == "sum" else -jnp.mean(elbo)


REDUCTIONS = ("sum", "mean")
STEP_LOSSES = "step_losses"  # optional key of SVI's mutable state: the last step's per-example L_{t−1}


class StochasticTimestepELBO(ELBO):
    """The stochastic-timestep ELBO as a NumPyro ELBO, for ``numpyro.infer.SVI`` with optax::

        svi = SVI(diffusion.model, diffusion.guide, optax.adam(1e-3), loss=StochasticTimestepELBO())
        state = svi.init(key, x0); state, loss = svi.update(state, x0)

    The guide is not run: the estimator scores the one-step programs ``step_model`` / ``step_guide``
    (pass those to SVI for a cheap ``init``: ``SVI.init`` runs the programs it is given once). The steps
    are drawn uniformly (``timesteps="uniform"``) or spread over the batch (``"low-discrepancy"``) from the
    step's key, or passed in: ``svi.update(state, x0, t, weight)`` with ``(t, weight)`` from a sampler of
    :mod:`ppl_diffusion.numpyro.timesteps` (importance sampling keeps a history outside the ELBO). The loss
    is −ELBO summed over the batch in nats (``reduction="mean"``: per example). The model's mutable state
    (the denoiser's dropout keys) is carried; if SVI's mutable state holds the key ``"step_losses"``, the
    per-example step losses L_{t−1} of the update are returned there (for an importance sampler's history).

    The estimate is :func:`stochastic_elbo_terms`' (the twin of
    :class:`ppl_diffusion.infer.stochastic_elbo.StochasticTimestepELBO`).

    :param str step_term: ``"kl"`` or ``"mc"``.
    :param str timesteps: ``"uniform"`` or ``"low-discrepancy"``.
    :param str reduction: ``"sum"`` or ``"mean"`` over the batch.

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> x0 = jnp.zeros((3, 2))
    >>> from numpyro import handlers
    >>> from ppl_diffusion.numpyro import StochasticTimestepELBO
    >>> trace = handlers.trace(handlers.seed(diffusion.step_model, 0)).get_trace(x0, jnp.array([1, 2, 4]))
    >>> params = {"denoiser$params": trace["denoiser$params"]["value"]}
    >>> loss = StochasticTimestepELBO(timesteps="low-discrepancy").loss(jax.random.key(0), params,
    ...                                                                  diffusion.step_model, diffusion.step_guide, x0)
    >>> loss.shape, bool(loss > 0)   # −ELBO in nats
    ((), True)
    """

    def __init__(self, step_term: str = "kl", timesteps: str = "uniform", reduction: str = "sum") -> None:
        from .timesteps import make_timestep_sampler

        if step_term not in ("kl", "mc"):
            raise ValueError(f"unknown step_term {step_term!r}; choose 'kl' or 'mc'")
        if timesteps not in ("uniform", "low-discrepancy"):
            raise ValueError(f"timesteps = {timesteps!r}: the ELBO draws 'uniform' or 'low-discrepancy' steps "
                             "itself; for importance sampling pass (t, weight) from "
                             "ppl_diffusion.numpyro.timesteps.ImportanceTimesteps to svi.update")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
        super().__init__(num_particles=1)
        self.step_term, self.timesteps, self.reduction = step_term, timesteps, reduction
        self._make_sampler = make_timestep_sampler

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, x0, t=None, weight=None, **kwargs):
        """NumPyro's ELBO interface: ``{"loss": −ELBO reduced, "mutable_state": the model's}`` at the steps ``t``
        (drawn from ``rng_key`` when None) with weights ``weight``."""
        diffusion = _diffusion_of(model)
        k_t, k_elbo = jax.random.split(rng_key)
        if t is None:
            sampler = self._make_sampler(self.timesteps, diffusion.T)
            t, weight = sampler.sample(k_t, sampler.init(), x0.shape[0])
        elbo, _, step, model_trace = stochastic_elbo_terms(diffusion, k_elbo, x0, step_term=self.step_term,
                                                           params=param_map, t=t, weight=weight, with_trace=True)
        mutable = _mutable_sites(model_trace)
        if STEP_LOSSES in param_map:
            mutable[STEP_LOSSES] = jax.lax.stop_gradient(-step)
        return {"loss": _reduce(elbo, self.reduction), "mutable_state": mutable or None}


class ChainELBO(ELBO):
    r"""The full-chain estimators compiled with ``lax.scan`` (:func:`~ppl_diffusion.numpyro.chain.full_chain_elbo`),
    as a NumPyro ELBO: ``analytic=False`` is ``Trace_ELBO`` on (model, guide), one forward trajectory;
    ``analytic=True`` is ``TraceMeanField_ELBO`` on (model, posterior_guide). The same numbers as NumPyro's
    own ELBOs on the named-site programs (tested), compiled as one step of the chain instead of T. The
    programs passed to SVI only declare the denoiser's parameters; the noise comes from the step's key.

    .. math:: \mathrm{ELBO} = E_q\Big[\log \frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\Big]

    estimated from one trajectory, with closed-form KLs at every site when ``analytic``.

    :param bool analytic: the posterior-order chain with analytic KLs (``TraceMeanField_ELBO``), or the forward
        chain (``Trace_ELBO``).
    :param str reduction: ``"sum"`` or ``"mean"`` over the batch.

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> x0 = jnp.zeros((3, 2))
    >>> from ppl_diffusion.numpyro import ChainELBO
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> loss = ChainELBO(analytic=True).loss(jax.random.key(0), {"denoiser$params": params_of(diffusion)},
    ...                                      diffusion.model, diffusion.posterior_guide, x0)
    >>> loss.shape, bool(loss > 0)
    ((), True)
    """

    def __init__(self, analytic: bool = False, reduction: str = "sum") -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
        super().__init__(num_particles=1)
        self.analytic, self.reduction = analytic, reduction

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, x0, *args, **kwargs):
        """NumPyro's ELBO interface: ``{"loss": −ELBO reduced, "mutable_state": ...}`` of one trajectory drawn from
        ``rng_key``."""
        from .chain import full_chain_elbo

        diffusion = _diffusion_of(model)
        k_noise, k_drop = jax.random.split(rng_key)
        # inside a micro-batch: the global batch's noise, its rows (and the masks of the net's SlicedDropout alike)
        noise = dp.take_rows(jax.random.normal(k_noise, (diffusion.T,) + dp.global_rows(x0.shape), x0.dtype), axis=1)
        elbo = full_chain_elbo(diffusion, param_map["denoiser$params"], x0, noise, analytic=self.analytic,
                               dropout_key=k_drop)
        mutable = {k: v for k, v in param_map.items() if k != "denoiser$params" and k != STEP_LOSSES}
        if STEP_LOSSES in param_map:
            mutable[STEP_LOSSES] = jnp.zeros(x0.shape[:1], x0.dtype)
        return {"loss": _reduce(elbo, self.reduction), "mutable_state": mutable or None}


# ------------------------------------------------------------------------------------------ continuous time
def feed_noise(fn, noise: dict):
    """``fn`` with its Normal sites named in ``noise`` drawn as loc + scale · noise[name] (a decoder's by its
    ``from_normal``; the twin of
    ``ppl_diffusion.infer.draws.FeedNoiseMessenger``: the reparameterised value, from given numbers).

    :param fn: a NumPyro program.
    :param dict noise: site name → standard normals of the site's shape.
    :returns: the program with those sites substituted (``numpyro.handlers.substitute``).

    Example:

    >>> import jax.numpy as jnp
    >>> import numpyro
    >>> import numpyro.distributions as dist
    >>> from ppl_diffusion.numpyro.infer import feed_noise
    >>> def program():
    ...     return numpyro.sample("z", dist.Normal(jnp.array(2.0), 3.0))
    >>> float(feed_noise(program, {"z": jnp.array(1.0)})())   # 2 + 3 · 1
    5.0
    """
    def value(msg):
        eps = noise.get(msg["name"])
        if eps is None or msg.get("is_observed"):
            return None
        base = msg["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        eps = jnp.reshape(eps, jnp.shape(base.loc)).astype(base.loc.dtype)
        # a decoder's draw: rounded to its bins, or VDM's categorical's inverse CDF at Φ(ε)
        return base.from_normal(eps) if hasattr(base, "from_normal") else base.loc + base.scale * eps

    return handlers.substitute(fn, substitute_fn=value)


def continuous_time_terms(diffusion, rng_key, x0, t, *, params=None, noise=None, weight=None, shape=None,
                          analytic: bool = True, with_trace: bool = False):
    r"""The continuous-time ELBO's terms per example ``[B]`` at times ``t`` (as the PyTorch backend's
    :func:`ppl_diffusion.infer.continuous_elbo.continuous_time_terms`): ``"prior"``, ``"reconstruction"``, ``"diffusion"`` (the
    integrand ½ γ'(t) ‖ε − ε̂‖², unweighted). ``params`` a NumPyro param map (replaces the registered weights),
    ``noise`` standard normals for the sites ``x_T``, ``x_1``, ``x_t``; ``shape`` the interior's (shape(t),
    shape'(t)) when the caller computed them.

    .. math:: -\mathrm{ELBO} = \underbrace{\mathrm{KL}(q(x_T \mid x_0) \,\|\, p(x_T))}_{\text{prior}}
        + \underbrace{E_q[-\log p(x_0 \mid x_1)]}_{\text{reconstruction}}
        + \underbrace{E_{t \sim U[0,1]}\big[\tfrac12 \gamma'(t) \lVert \epsilon - \hat\epsilon_\theta
        \rVert^2\big]}_{\text{diffusion}}

    :param diffusion: a continuous-time :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` (T = 0).
    :param rng_key: a JAX PRNG key.
    :param x0: the data ``[B x *event_shape]``.
    :param t: times ``[B]`` in [0, 1].
    :param bool analytic: the prior term in closed form (where registered).
    :param bool with_trace: also return the model's trace.
    :returns: a dict ``"prior"``, ``"reconstruction"``, ``"diffusion"`` → ``[B]`` nats (and the trace).

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, LinearGamma, MLPDenoiser
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=net, event_shape=(2,), T=0)
    >>> x0 = jnp.zeros((3, 2))
    >>> from ppl_diffusion.numpyro import continuous_time_terms
    >>> parts = continuous_time_terms(diffusion, jax.random.key(0), x0, jnp.array([0.1, 0.5, 0.9]))
    >>> sorted(parts), parts["diffusion"].shape
    (['diffusion', 'prior', 'reconstruction'], (3,))
    """
    diffusion.check_continuous()
    model, guide = diffusion.continuous_model, diffusion.continuous_guide
    if params is not None:
        model, guide = handlers.substitute(model, data=params), handlers.substitute(guide, data=params)
    if noise is not None:
        guide = feed_noise(guide, noise)
    model_trace, guide_trace = trace_pair(model, guide, rng_key, x0, t, None, shape)
    site = per_example_elbo(model_trace, guide_trace, analytic=analytic)
    parts = {"prior": -site["x_T"], "reconstruction": -(site["x_0"] + site["x_1"]),
             "diffusion": -(site["diffusion"] + site["x_t"])}
    return (parts, model_trace) if with_trace else parts


SCHEDULE_OBJECTIVES = ("elbo", "variance")
PRIOR_TERMS = ("kl", "mc")  # the prior term KL(q(x_T|x_0) || p(x_T)) in closed form, or by one draw of x_T


def continuous_time_loss(diffusion, rng_key, param_map, x0, t, weight, *, noise=None, schedule_objective="elbo",
                         reduction: str = "sum", prior_term: str = "kl"):
    r"""(−ELBO reduced over the batch, the per-example terms, the model's mutable state) of the continuous-time
    estimate at times ``t`` with weights ``weight`` (1/p(t)). With ``schedule_objective="variance"`` the value is the
    same and the gradient of the schedule's interior parameters is that of Σ_i (w_i L_i)² (reduced alike) instead
    of the ELBO's, routed in one backward pass: a ``jax.custom_vjp`` takes the cotangent of the loss at the
    interior's outputs (shape(t), shape'(t)), scales it by 2 w_i L_i per example and pulls it back through the
    interior alone (the PyTorch backend does the same with hooks). ``prior_term`` ``"kl"`` scores the prior term in
    closed form (where registered), ``"mc"`` at one draw of x_T.

    .. math:: \text{loss} = \sum_i \big(\text{prior}_i + \text{reconstruction}_i + w_i\, \text{diffusion}_i\big)

    (the mean with ``reduction="mean"``), the terms of :func:`continuous_time_terms`.

    :param diffusion: a continuous-time :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` (T = 0).
    :param rng_key: a JAX PRNG key.
    :param param_map: the NumPyro param map (``"denoiser$params"``, ``"schedule$params"`` for a learned γ).
    :param x0: the data ``[B x *event_shape]``.
    :param t: times ``[B]`` in [0, 1].
    :param weight: 1/p(t), ``[B]``.
    :param str schedule_objective: ``"elbo"`` or ``"variance"``.
    :param str reduction: ``"sum"`` or ``"mean"``.
    :param str prior_term: ``"kl"`` or ``"mc"``.

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, LinearGamma, MLPDenoiser
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=net, event_shape=(2,), T=0)
    >>> x0 = jnp.zeros((3, 2))
    >>> from ppl_diffusion.numpyro import continuous_time_loss
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> t = jnp.array([0.1, 0.5, 0.9])
    >>> loss, parts, _ = continuous_time_loss(diffusion, jax.random.key(0), {"denoiser$params": params_of(diffusion)},
    ...                                       x0, t, jnp.ones(3))
    >>> bool(jnp.allclose(loss, sum(part.sum() for part in parts.values())))
    True
    """
    if schedule_objective not in SCHEDULE_OBJECTIVES:
        raise ValueError(f"unknown schedule_objective {schedule_objective!r}; choose one of {SCHEDULE_OBJECTIVES}")
    if prior_term not in PRIOR_TERMS:
        raise ValueError(f"unknown prior_term {prior_term!r}; choose one of {PRIOR_TERMS} (closed-form KL or one "
                         "draw of x_T)")
    weight = jnp.asarray(weight)

    def rest(shape, pm):
        parts, trace = continuous_time_terms(diffusion, rng_key, x0, t, params=pm, noise=noise, shape=shape,
                                             analytic=prior_term == "kl", with_trace=True)
        d = weight.astype(parts["diffusion"].dtype) * parts["diffusion"]
        loss = _reduce(-(parts["prior"] + parts["reconstruction"] + d), reduction)
        return loss, (d, parts, _mutable_sites(trace))

    if schedule_objective == "elbo":
        loss, (_, parts, mutable) = rest(None, param_map)
        return loss, parts, mutable
    from .gamma import param_module

    schedule = diffusion.schedule
    sched_params = param_map.get("schedule$params", {})
    interior = {k: v for k, v in sched_params.items() if k in schedule.interior_keys}
    if not interior:
        raise ValueError(f"schedule_objective='variance' trains the interior of a learned γ schedule, and "
                         f"{type(schedule).__name__} has none; use MonotoneNetGamma or schedule_objective='elbo'")
    work = jnp.result_type(float)

    def shape_fn(inner):
        with handlers.substitute(data={"schedule$params": {**sched_params, **inner}}):
            module = param_module("schedule", schedule)
        tt = jnp.asarray(t, work)
        return jax.jvp(module.shape, (tt,), (jnp.ones_like(tt),))

    @jax.custom_vjp
    def routed(inner, pm):
        return rest(shape_fn(inner), pm)

    def fwd(inner, pm):
        shape, pull_shape = jax.vjp(shape_fn, inner)
        out, pull_rest, aux = jax.vjp(rest, shape, pm, has_aux=True)
        return (out, aux), (pull_shape, pull_rest, aux[0])

    def bwd(res, cotangent):
        pull_shape, pull_rest, d = res
        c_shape, c_pm = pull_rest(cotangent[0])
        scale = 2.0 * jax.lax.stop_gradient(d)
        (c_inner,) = pull_shape(tuple(c * scale.astype(c.dtype) for c in c_shape))
        return c_inner, c_pm

    routed.defvjp(fwd, bwd)
    loss, (_, parts, mutable) = routed(interior, param_map)
    return loss, parts, mutable


class ContinuousTimeELBO(ELBO):
    """The continuous-time ELBO (T = ∞) as a NumPyro ELBO for ``numpyro.infer.SVI`` (the twin of
    :class:`ppl_diffusion.infer.continuous_elbo.ContinuousTimeELBO`)::

        svi = SVI(diffusion.continuous_model, diffusion.continuous_guide, optax.adam(1e-3), loss=ContinuousTimeELBO())
        state = svi.init(key, x0, t, weight)  # any times in (0, 1) and weights: SVI.init runs the two programs
        state, loss = svi.update(state, x0)  # the ELBO draws t itself

    ``SVI.init`` runs the programs it is given to create the parameters (the denoiser's and a learned γ's), and
    ``diffusion.model`` has no chain at T = 0, so pass the continuous-time programs (the PyTorch twin accepts
    ``diffusion.model`` as well, since Pyro's SVI does not run it). Times are drawn ``"uniform"`` or
    ``"low-discrepancy"`` from the step's key, or passed in: ``svi.update(state, x0, t, weight)`` (importance
    sampling keeps its history outside, as for :class:`StochasticTimestepELBO`; the per-example integrand is returned
    under SVI's mutable ``"step_losses"`` when that key is there). ``schedule_objective="variance"`` trains the schedule's interior for the estimate's
    variance (:func:`continuous_time_loss`); ``prior_term="mc"`` scores the prior term at one draw of x_T.

    :param str timesteps: ``"uniform"`` or ``"low-discrepancy"``.
    :param str schedule_objective: ``"elbo"`` or ``"variance"``.
    :param str reduction: ``"sum"`` or ``"mean"`` over the batch.
    :param str prior_term: ``"kl"`` or ``"mc"``.

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, LinearGamma, MLPDenoiser
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=net, event_shape=(2,), T=0)
    >>> x0 = jnp.zeros((3, 2))
    >>> from ppl_diffusion.numpyro import ContinuousTimeELBO
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> loss = ContinuousTimeELBO().loss(jax.random.key(0), {"denoiser$params": params_of(diffusion)},
    ...                                  diffusion.continuous_model, diffusion.continuous_guide, x0)
    >>> loss.shape
    ()

    Trained with ``numpyro.infer.SVI``, a learned γ's endpoints with the denoiser:

    >>> import optax
    >>> from numpyro.infer import SVI
    >>> from ppl_diffusion.numpyro import ScalarGamma
    >>> learned = GaussianDiffusion(schedule=ScalarGamma(), denoiser=net, event_shape=(2,), T=0)
    >>> svi = SVI(learned.continuous_model, learned.continuous_guide, optax.adam(1e-2), loss=ContinuousTimeELBO())
    >>> state = svi.init(jax.random.key(0), x0, jnp.full((3,), 0.5), jnp.ones(3))
    >>> before = svi.get_params(state)["schedule$params"]["gamma_0"]
    >>> state, loss = svi.update(state, x0)
    >>> sorted(svi.get_params(state)), bool(svi.get_params(state)["schedule$params"]["gamma_0"] != before)
    (['denoiser$params', 'schedule$params'], True)
    """

    def __init__(self, timesteps: str = "uniform", schedule_objective: str = "elbo", reduction: str = "sum",
                 prior_term: str = "kl") -> None:
        if timesteps not in ("uniform", "low-discrepancy"):
            raise ValueError(f"timesteps = {timesteps!r}: the ELBO draws 'uniform' or 'low-discrepancy' times itself; "
                             "for importance sampling pass (t, weight) from ppl_diffusion.numpyro.timesteps."
                             "ImportanceTimes to svi.update")
        if schedule_objective not in SCHEDULE_OBJECTIVES:
            raise ValueError(f"unknown schedule_objective {schedule_objective!r}; choose one of {SCHEDULE_OBJECTIVES}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
        if prior_term not in PRIOR_TERMS:
            raise ValueError(f"unknown prior_term {prior_term!r}; choose one of {PRIOR_TERMS}")
        super().__init__(num_particles=1)
        self.timesteps, self.schedule_objective, self.reduction = timesteps, schedule_objective, reduction
        self.prior_term = prior_term

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, x0, t=None, weight=None, **kwargs):
        """NumPyro's ELBO interface: ``{"loss": −ELBO reduced, "mutable_state": the model's}`` at the times ``t``
        (drawn from ``rng_key`` when None) with weights ``weight``."""
        from .timesteps import make_timestep_sampler

        diffusion = getattr(model, "__self__", None)
        if diffusion is None or not hasattr(diffusion, "continuous_model"):
            raise TypeError("this estimator scores a ppl_diffusion.numpyro.GaussianDiffusion; pass "
                            f"model=diffusion.model or diffusion.continuous_model (got {model!r})")
        diffusion.check_continuous()
        k_t, k_elbo = jax.random.split(rng_key)
        if t is None:
            sampler = make_timestep_sampler(self.timesteps, 0)
            t, weight = sampler.sample(k_t, sampler.init(), x0.shape[0])
        elif weight is None:
            raise ValueError("pass the importance weights 1/p(t) with the times t (weight=...)")
        params = {k: v for k, v in param_map.items() if k != STEP_LOSSES}
        loss, parts, mutable = continuous_time_loss(diffusion, k_elbo, params, x0, t, weight,
                                                    schedule_objective=self.schedule_objective,
                                                    reduction=self.reduction, prior_term=self.prior_term)
        if STEP_LOSSES in param_map:
            mutable[STEP_LOSSES] = jax.lax.stop_gradient(parts["diffusion"])
        return {"loss": loss, "mutable_state": mutable or None}


__all__ = ["ChainELBO", "ContinuousTimeELBO", "StochasticTimestepELBO", "continuous_time_loss", "continuous_time_terms",
           "feed_noise", "per_example_elbo", "stochastic_elbo_terms", "trace_pair"]
