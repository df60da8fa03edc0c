"""Shared by the examples/prior_*.py scripts: train a small diffusion with a given prior p(x_T) on a 2-D
mixture of 8 Gaussians with plain ``pyro.infer.SVI``, report the held-out bound (with its prior term), and
plot data, samples and draws of the prior."""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI  # noqa: E402

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, make_estimator, variational_bound  # noqa: E402
from ppl_diffusion.data import eight_gaussians  # noqa: E402


def run(name: str, make_prior, argv=None, doc: str = "") -> dict:
    """Train with ``make_prior()`` (a distribution or a ppl_diffusion.priors.Prior); returns the figures."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", default="examples/output")
    args = p.parse_args(argv)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    prior = make_prior()
    diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(args.T), denoiser=MLPDenoiser(2), event_shape=(2,),
                                  prior=prior)
    est = make_estimator("stochastic-kl-is")
    svi = SVI(diffusion.model, est.guide(diffusion), pyro.optim.Adam({"lr": 1e-3}), loss=est.loss)
    train, test = eight_gaussians(20_000, seed=0), eight_gaussians(2_000, seed=1)
    for _ in range(args.steps):
        svi.step(train[torch.randint(len(train), (args.batch,))])
    with torch.no_grad():
        bound = variational_bound(diffusion.eval(), test[:500], timesteps_per_batch=10)
        samples = diffusion.sample(2000)
        prior_draws = diffusion.get_prior().sample((2000,))
    nll, prior_term = bound.nll.mean().item(), bound.prior_term.mean().item()
    print(f"prior {name}: held-out −ELBO {nll:.3f} nats/example (prior term L_T {prior_term:.4f})")
    os.makedirs(args.out, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6), sharex=True, sharey=True)
    for ax, pts, title in zip(axes, (test, samples, prior_draws), ("data", "samples", f"p(x_T): {name}")):
        ax.scatter(*pts[:2000].T.numpy(), s=2, alpha=0.5)
        ax.set_title(title)
        ax.set_xlim(-5, 5)
        ax.set_ylim(-5, 5)
    fig.tight_layout()
    path = os.path.join(args.out, f"prior_{name}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"nll": nll, "prior_term": prior_term, "figure": path, "diffusion": diffusion}
