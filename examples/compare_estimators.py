"""Compare ELBO estimators on your own diffusion model at a fixed θ, with the study's building blocks.

    pip install -c constraints.txt -e ".[study]"     # arviz
    python examples/compare_estimators.py --T 100 --steps 1000 --out examples/output

Trains an MLP denoiser on the 8-Gaussian toy with plain ``pyro.infer.SVI`` for a few seconds, then, at
those weights, replicates every estimator's ELBO estimate and gradient (``ppl_diffusion.study.measure``),
prints the table, draws the ELBO draws of the unbiased estimators as an arviz forest plot
(``estimators_forest.png``), and compares the variances the per-t moments predict with the measured
ones. ``ppl-diffusion compare`` does all of this (and a training race) for a run folder; this script
shows the same pieces on any ``GaussianDiffusion``.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
from pyro.infer import SVI  # noqa: E402

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, StochasticTimestepELBO  # noqa: E402
from ppl_diffusion.data import eight_gaussians  # noqa: E402
from ppl_diffusion.study import make_study_estimator, measure, per_t_moments  # noqa: E402
from ppl_diffusion.study.fixed import pooled_agreement  # noqa: E402

ESTIMATORS = ("trace", "meanfield", "stochastic-kl", "stochastic-kl-is", "stochastic-mc", "iwae")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--steps", type=int, default=1000, help="SVI steps before the comparison")
    p.add_argument("--replicates", type=int, default=200, help="per stochastic estimator")
    p.add_argument("--full-chain-replicates", type=int, default=40, help="for trace, meanfield and iwae")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default="examples/output")
    args = p.parse_args(argv)

    pyro.set_rng_seed(0)
    diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(args.T), denoiser=MLPDenoiser(2), event_shape=(2,))
    svi = SVI(diffusion.model, diffusion.guide, pyro.optim.Adam({"lr": 1e-3}),
              loss=StochasticTimestepELBO(timesteps="importance"))
    for _ in range(args.steps):
        svi.step(eight_gaussians(args.batch))

    x0 = eight_gaussians(args.batch, seed=1)  # the fixed batch
    rows, draws = [], {}
    print(f"{'estimator':17s} {'ELBO ± MCSE':>18s} {'sd':>8s} {'ESS':>5s} {'ms/grad':>8s} {'tr Cov(grad)':>12s} "
          f"{'grad eff.':>9s}")
    for k, name in enumerate(ESTIMATORS):
        full_chain = name in ("trace", "meanfield", "iwae")
        row, idata = measure(make_study_estimator(name, diffusion, iwae_particles=8), x0,
                             args.full_chain_replicates if full_chain else args.replicates, seed=k)
        rows.append(row)
        draws[name] = idata
        print(f"{name:17s} {row.elbo_mean:9.3f} ± {row.elbo_mcse:6.3f} {row.elbo_sd:8.3g} {row.elbo_ess:5.0f} "
              f"{1e3 * row.grad_seconds:8.1f} {row.grad_total_variance:12.4g} {row.grad_efficiency:9.3g}"
              + ("   (IWAE-8: a tighter bound)" if row.bound != "ELBO" else ""))
    agree = pooled_agreement(rows)
    print(f"unbiased estimators: pooled ELBO {agree['pooled_elbo']:.3f} ± {agree['pooled_se']:.3f}, "
          f"chi2 = {agree['chi2']:.2f} on {agree['dof']} dof, p = {agree['p_value']:.3g}")

    unbiased = [n for n, r in zip(ESTIMATORS, rows) if r.bound == "ELBO"]
    axes = az.plot_forest([draws[n] for n in unbiased], model_names=unbiased, var_names=["elbo"], combined=True,
                          figsize=(7, 3.5))
    axes[0].set_title("one ELBO estimate (nats / example): 94% HDI of its draws")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "estimators_forest.png")
    plt.savefig(path, dpi=100, bbox_inches="tight")
    plt.close("all")
    print(f"forest plot: {path}")

    per_t = per_t_moments(diffusion, x0, repeats=8)
    for name, kind in (("stochastic-kl", "kl"), ("stochastic-mc", "mc")):
        row = next(r for r in rows if r.estimator == name)
        pred = per_t.predicted_variance(kind)
        print(f"{name}: variance of the ELBO estimate predicted {pred['total']:.4g} "
              f"({100 * pred['between_t'] / pred['total']:.0f}% from the choice of t), measured "
              f"{row.elbo_sd ** 2:.4g} ± {row.elbo_var_se:.2g}")
    return rows, agree


if __name__ == "__main__":
    main()
