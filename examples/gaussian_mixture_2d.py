"""Train a diffusion model on an 8-component Gaussian mixture with plain ``pyro.infer.SVI``.

    python examples/gaussian_mixture_2d.py --steps 3000 --out examples/output

Writes ``mixture_2d.png`` (data next to samples) and prints the held-out bound in nats.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI  # noqa: E402
from tqdm import trange  # noqa: E402

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, make_estimator, variational_bound  # noqa: E402
from ppl_diffusion.data import eight_gaussians  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--estimator", default="stochastic-kl-is", help="a name from ppl_diffusion.infer.ESTIMATORS")
    p.add_argument("--out", default="examples/output")
    args = p.parse_args(argv)
    pyro.set_rng_seed(0)

    # The model: a reverse chain with an MLP denoiser; the guide: the fixed forward chain.
    diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(args.T), denoiser=MLPDenoiser(2), event_shape=(2,))
    estimator = make_estimator(args.estimator)
    svi = SVI(diffusion.model, estimator.guide(diffusion), pyro.optim.Adam({"lr": 1e-3}), loss=estimator.loss)

    train, test = eight_gaussians(20_000, seed=0), eight_gaussians(2_000, seed=1)
    for step in (bar := trange(args.steps, desc="train")):
        batch = train[torch.randint(0, len(train), (args.batch,))]
        loss = svi.step(batch) / args.batch
        if step % 50 == 0:
            bar.set_postfix(nats=f"{loss:.3f}")

    with torch.no_grad():
        nll = variational_bound(diffusion, test).nll.mean().item()
        samples = diffusion.sample(2_000)
    print(f"held-out -ELBO: {nll:.3f} nats per point (T = {args.T}, {args.steps} steps of {args.estimator})")

    os.makedirs(args.out, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, pts, title in ((axes[0], test, "data"), (axes[1], samples, "samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_title(title)
        ax.set_aspect("equal")
    axes[0].set_xlim(-1.5, 1.5)
    axes[0].set_ylim(-1.5, 1.5)
    path = os.path.join(args.out, "mixture_2d.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")
    return nll


if __name__ == "__main__":
    main()
