"""Maximum likelihood through the probability-flow ODE with plain Pyro SVI (examples/cnf_2d.py): the loss is the
ODE's −Σ log p, and the adjoint method and backpropagation through the solver give the same gradients."""

import copy

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
from ppl_diffusion.ode import ProbabilityFlow, log_likelihood

pytest.importorskip("torchdiffeq")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (two on a loaded 2-core machine were 10-20x slower), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _diffusion(seed=0):
    """A small float64 model whose ε̂ is not zero (``zero_init=False``), so the flow is not the OU contraction."""
    torch.manual_seed(seed)
    net = MLPDenoiser(2, width=16, depth=1, zero_init=False).double()
    return GaussianDiffusion(schedule=NoiseSchedule.linear(20, beta_start=1e-3, beta_end=0.2), denoiser=net,
                             event_shape=(2,))


def _svi(diffusion, **flow_options):
    flow = ProbabilityFlow(diffusion, trace="exact", **flow_options)

    def model(x):
        pyro.module("denoiser", diffusion.denoiser)
        with pyro.plate("data", len(x)):
            pyro.sample("x", flow, obs=x)

    def guide(x):
        pass

    return model, guide, SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())


def _data(n=6):
    return 0.7 * torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_svi_loss_is_minus_ode_log_likelihood():
    """With an empty guide Trace_ELBO is −Σ log p_ε(x) of ode.log_likelihood at the same weights (a loss that also
    counted the guide, scaled the plate or passed other solver options to the flow would differ by far more)."""
    diffusion, x = _diffusion(), _data()
    tol = 1e-6
    with torch.no_grad():
        ref = log_likelihood(diffusion, x, trace="exact", rtol=tol, atol=tol)
    _, _, svi = _svi(diffusion, rtol=tol, atol=tol)
    loss = svi.step(x)  # the loss at the weights before the step
    torch.testing.assert_close(torch.tensor(loss, dtype=torch.float64), -ref.log_prob.sum(), rtol=1e-10, atol=1e-10)
    assert abs(loss) > 1.0  # not a trivial zero
    with torch.no_grad():  # and the step changed the likelihood: the parameters were registered and moved
        after = log_likelihood(diffusion, x, trace="exact", rtol=tol, atol=tol).log_prob.sum()
    assert abs(after.item() + loss) > 1e-4


class _RecordingAdam(pyro.optim.PyroOptim):
    """pyro.optim.Adam that keeps a copy of each parameter's gradient as SVI hands it over."""

    def __init__(self, lr):
        super().__init__(torch.optim.Adam, {"lr": lr})
        self.grads = {}

    def __call__(self, params, *args, **kwargs):
        self.grads = {id(p): p.grad.detach().clone() for p in params}
        return super().__call__(params, *args, **kwargs)


def test_adjoint_and_backprop_give_the_same_gradients_and_step():
    """One SVI step (Adam) by the adjoint ODE and by backpropagation through dopri5 (float64, rtol = atol = 1e-8):
    the same loss and gradients within the solver's error, hence the same weights after the step. The two
    gradients are computed differently (the adjoint solves a backward ODE, with its own steps), so they differ
    by the solvers' errors: 1e-2, 1e-3, 4e-5 (largest relative) at tolerances 1e-6, 1e-7, 1e-8."""
    base, x, tol = _diffusion(), _data(), 1e-8
    losses, grads, params = {}, {}, {}
    for adjoint in (False, True):
        pyro.clear_param_store()
        diffusion = copy.deepcopy(base)
        flow = ProbabilityFlow(diffusion, trace="exact", rtol=tol, atol=tol, adjoint=adjoint)

        def model(x):
            pyro.module("denoiser", diffusion.denoiser)
            with pyro.plate("data", len(x)):
                pyro.sample("x", flow, obs=x)

        optim = _RecordingAdam(lr=1e-2)
        losses[adjoint] = SVI(model, lambda x: None, optim, Trace_ELBO()).step(x)
        named = list(diffusion.denoiser.parameters())
        assert len(optim.grads) == len(named)  # every weight was registered and got a gradient
        grads[adjoint] = [optim.grads[id(p)] for p in named]
        params[adjoint] = [p.detach().clone() for p in named]
    assert losses[False] == pytest.approx(losses[True], rel=1e-6)  # the forward solve, twice
    scale = max(g.abs().max().item() for g in grads[False])
    assert scale > 1e-2
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=1e-6 * scale)
    moved = max((a - b).abs().max().item() for a, b in zip(params[False], base.denoiser.parameters()))
    assert moved > 5e-3  # Adam's first step moves each weight by about lr · sign(g)
    # Adam's first step is lr · g / (|g| + 1e-8): where |g| is tiny, a gradient difference within the tolerance
    # above moves the weight by up to lr · |Δg| / 1e-8; allow 1e-4 · lr (a weight stepped the wrong way is 2 lr off).
    for a, b in zip(params[True], params[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_svi_gradient_is_the_derivative_of_the_ode_log_likelihood():
    """The gradient SVI steps on (backpropagation through the solver, the divergence's graph kept) against a central
    difference of ode.log_likelihood along a random direction of the weights (float64, solves at 1e-10: the
    difference's truncation error ~h² and the solver's ~1e-10 / h are both far below the 1e-4 compared)."""
    diffusion, x = _diffusion(), _data()
    model, guide, _ = _svi(diffusion, rtol=1e-9, atol=1e-9)
    Trace_ELBO().loss_and_grads(model, guide, x)  # d(−Σ log p)/dθ into .grad
    params = list(diffusion.denoiser.parameters())
    gen = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum((p.grad * v).sum() for p, v in zip(params, direction)).item()

    def loss_at(h):
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(h * v)
            value = -log_likelihood(diffusion, x, trace="exact", rtol=1e-10, atol=1e-10).log_prob.sum().item()
            for p, v in zip(params, direction):
                p.sub_(h * v)
        return value

    h = 1e-4
    numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
    assert abs(analytic) > 1.0
    assert analytic == pytest.approx(numeric, rel=1e-4)
