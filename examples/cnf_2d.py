"""A CNF written as a Pyro program: fit a small diffusion model on 8 Gaussians by maximum likelihood through the
probability-flow ODE with plain ``pyro.infer.SVI``, next to the same architecture trained by the ELBO.

    python examples/cnf_2d.py --out examples/output            # minutes on one core (see below)
    python examples/cnf_2d.py --quick --out /tmp/cnf            # seconds (the test suite's sizes)

The ODE model is a Pyro program with one observed site and an empty guide::

    def model(x):
        pyro.module("denoiser", net)
        with pyro.plate("data", len(x)):
            pyro.sample("x", ProbabilityFlow(diffusion, trace="exact", rtol=1e-4, atol=1e-4), obs=x)

With no latent sites, ``Trace_ELBO`` is −Σ log p_ε(x) exactly (the ELBO of an empty guide is the log-likelihood),
so SVI is maximum likelihood of a continuous normalizing flow whose vector field is the probability-flow drift
of the denoiser. Its gradient flows through the exact divergence tr(∂f/∂x) (a second derivative of the net:
:class:`~ppl_diffusion.ode.AugmentedDynamics` keeps the graph), by backpropagation through the solver or, with
``--adjoint``, by the adjoint ODE.

The ELBO-trained twin (same net, same initial weights, same T) is trained as the other examples train: SVI on the
one-step programs with the ``stochastic-kl-is`` estimator. Then both are scored on the same held-out points by

* the exact ODE log-likelihood: :func:`ppl_diffusion.ode.log_likelihood`, exact trace, rtol = atol = 1e-5
  (``--eval-tol``), ε = 1/T (the grid time map's first trained step);
* the variational bound of the discrete chain: :func:`ppl_diffusion.variational_bound` (counter-based noise,
  seed 0, the same draws for both). The decoder p(x_0|x_1) is the Gaussian N(μ_θ(x_1, 1), β_1 I), so −ELBO is
  an upper bound on −log of a continuous density on R², in the same units as the ODE's (no dequantization: the
  data are continuous).

The two numbers are of two different models built on one net: the chain p_θ(x_0) (ancestral sampling) and the
flow's p_ε. Each is a proper density on R², so each held-out NLL is a fair score. The data's own density is
known (a mixture of 8 Gaussians, std 0.05, on a circle of radius 1) and printed as the floor. Bits/dim are nats /
(D ln 2) with D = 2; they are negative because these are densities of points in a region smaller than 1.

Training tolerance. The training solves use rtol = atol = 1e-4 (``--train-tol``): the minibatch loss has a
sampling error of about SD(log p) / √B ≈ 0.9 / √128 ≈ 0.08 nats, above the solver's error at 1e-4 (the run
prints the test NLL at both tolerances), while dopri5's NFE grows about as tol^(−1/5) (1.6× per decade) and
each training step costs a solve and its backward pass. Evaluation uses the tighter 1e-5.

Output at the default sizes (T = 100, MLPDenoiser(width 64, depth 2), 200 ML steps of batch 128, 3000 ELBO
steps of batch 256, one thread; ``OMP_NUM_THREADS=1 python examples/cnf_2d.py``, on a 2-core CPU shared with
other jobs (load average 5), so the seconds are inflated and noisy; the ratio of the two is the figure to keep)::

    model          steps  train s      test NLL (ODE)  bits/dim    -ELBO  bits/dim   NFE
    ML (ODE)         200    246.0        0.635 ± 0.020     0.458    5.005     3.610   308
    ELBO            3000     17.3       -0.640 ± 0.026    -0.462   -0.244    -0.176   206
    data density                        -1.091          -0.787   (the 8-Gaussian mixture itself: the floor)
    ML (ODE): training loss 5.684 -> 0.693 nats/point (...); |test NLL at tol 0.0001 − at 1e-05| = 4.8e-03 nats
    ELBO: training loss 2.014 -> -0.131 nats/point (...); |test NLL at tol 0.0001 − at 1e-05| = 7.0e-05 nats

(NFE: evaluations of the augmented field in the held-out solve at 1e-5. The training losses are means over the
first and last tenth of the steps; at the zero initialisation, ε̂ = 0, the ML loss is 12.6.)

What it says, at this budget:

* Maximum likelihood through the ODE trains (5.7 → 0.7 nats/point, still falling) but is slow: one step is a
  dopri5 solve (a few hundred evaluations of the field, each with a derivative of the net, kept for the
  second derivative) and its backward pass: about 200× an ELBO step (1.2 s against 6 ms). After 200 steps the
  flow has the ring but not yet the 8 modes (the figure). Three times as long (``--ml-steps 600``, 505 s on the
  same shared machine) gives 0.416 ± 0.016 nats, loss still falling, still a ring with faint modes, and the
  held-out NFE rises from 308 to 410 as the flow sharpens (its chain's −ELBO worsens, 5.0 → 7.4).
* The ELBO-trained net is the better flow *by the ODE's own exact likelihood*: −0.64 against 0.64 nats, in 1/14
  of the time (in the 600-step run the ELBO twin, trained on other minibatches because the random stream had
  moved on, scored −0.546 ± 0.026 with visibly unequal mode weights: two runs 0.09 nats apart, far below the
  gap). Training the denoiser (score matching, the ELBO's terms) is a far cheaper way to get a good
  probability-flow ODE than maximising its likelihood directly (the case score-based models and flow matching
  make for training continuous flows by regression).
* For the ELBO-trained net the ODE's NLL is 0.40 nats below its −ELBO (the bound's looseness plus the difference
  between the two models of one net, the flow p_ε and the chain). The ML-trained net, never trained as a
  denoiser, has a poor chain: −ELBO 5.0 nats, 4.4 above its flow's NLL. The ELBO trains both models (the chain
  directly, the flow through the shared ε̂); maximum likelihood of the flow trains only the flow.
* Neither reaches the data's −1.09 nats. With a perfect denoiser p_ε would be q(x_ε), the data blurred by noise
  of variance β_1 = 1e-3 (the clusters' is 2.5e-3): −1.035 nats on these test points, so ε = 1/T costs the
  ELBO-trained flow only 0.06 of its 0.45 nats gap (the ML-trained flow is not tied to q(x_ε)).
* ``--adjoint`` gives the same training within the tolerance (tests/test_ode_training.py checks the gradients;
  ``--quick``: 12.635 → 8.069 against 8.065 by backpropagation) but was about 7× slower per step at the quick
  sizes (its backward ODE solve; one run each, shared machine), and its O(1) memory buys nothing at D = 2.

Writes ``cnf_2d.png``: the density exp(log p_ε) on a grid for both models (top) and ODE samples (bottom).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, make_estimator, variational_bound  # noqa: E402
from ppl_diffusion.continuous import ContinuousTime  # noqa: E402
from ppl_diffusion.data import load_dataset  # noqa: E402
from ppl_diffusion.ode import ProbabilityFlow, log_likelihood, sample_ode  # noqa: E402

QUICK = dict(width=16, depth=1, ml_steps=10, elbo_steps=60, batch=32, elbo_batch=32, n_test=64, grid=16, samples=64)


def data_log_prob(x: torch.Tensor, radius: float = 1.0, std: float = 0.05) -> torch.Tensor:
    """log p_data(x) ``[B]`` of :func:`ppl_diffusion.data.eight_gaussians` (its defaults: centres on a circle of
    radius 2 · 0.5, std 0.1 · 0.5): (1/8) Σ_k N(x; c_k, std² I)."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], -1)  # [8 x 2]
    sq = (x.double()[:, None, :] - centres).pow(2).sum(-1)  # [B x 8]
    return torch.logsumexp(-0.5 * sq / std ** 2, 1) - math.log(8) - math.log(2 * math.pi * std ** 2)


def train_ml(diffusion, ct: ContinuousTime, train: torch.Tensor, args) -> dict:
    """Maximum likelihood through the ODE: plain SVI, observed ``ProbabilityFlow``, empty guide."""
    flow = ProbabilityFlow(diffusion, trace="exact", rtol=args.train_tol, atol=args.train_tol, time_map=ct,
                           adjoint=args.adjoint)

    def model(x):
        pyro.module("denoiser", diffusion.denoiser)
        with pyro.plate("data", len(x)):
            pyro.sample("x", flow, obs=x)

    def guide(x):  # nothing latent: the ELBO is log p(x)
        pass

    svi = SVI(model, guide, pyro.optim.Adam({"lr": args.ml_lr}), Trace_ELBO())
    losses, nfes = [], []
    start = time.perf_counter()
    for _ in range(args.ml_steps):
        losses.append(svi.step(train[torch.randint(len(train), (args.batch,))]) / args.batch)
        nfes.append(flow.nfe)
    return dict(seconds=time.perf_counter() - start, losses=losses, nfes=nfes)


def train_elbo(diffusion, train: torch.Tensor, args) -> dict:
    """The package's usual estimator on the one-step programs (as examples/gaussian_mixture_2d.py)."""
    est = make_estimator("stochastic-kl-is")
    svi = SVI(diffusion.model, est.guide(diffusion), pyro.optim.Adam({"lr": args.elbo_lr}), loss=est.loss)
    losses = []
    start = time.perf_counter()
    for _ in range(args.elbo_steps):
        losses.append(svi.step(train[torch.randint(len(train), (args.elbo_batch,))]) / args.elbo_batch)
    return dict(seconds=time.perf_counter() - start, losses=losses, nfes=[])


def ode_nll(diffusion, ct, x, tol, chunk=2000) -> tuple[torch.Tensor, int]:
    """−log p_ε(x) ``[B]`` (exact trace) and the largest NFE over the chunks."""
    parts, nfe = [], 0
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            res = log_likelihood(diffusion, x[i:i + chunk], trace="exact", rtol=tol, atol=tol, time_map=ct)
            parts.append(-res.log_prob.double())
            nfe = max(nfe, res.nfe)
    return torch.cat(parts), nfe


def evaluate(name, diffusion, ct, test, fit, args) -> dict:
    nll, nfe = ode_nll(diffusion, ct, test, args.eval_tol)
    nll_train_tol, _ = ode_nll(diffusion, ct, test, args.train_tol)
    with torch.no_grad():
        elbo_nll = variational_bound(diffusion.eval(), test, timesteps_per_batch=10, seed=0).nll.double()
    diffusion.train()
    d = diffusion.num_dims
    k = max(1, len(fit["losses"]) // 10)
    return dict(model=name, nll=nll.mean().item(), nll_se=(nll.std() / math.sqrt(len(nll))).item(),
                bpd=nll.mean().item() / (d * math.log(2)), elbo_nll=elbo_nll.mean().item(),
                elbo_bpd=elbo_nll.mean().item() / (d * math.log(2)), nfe=nfe,
                tol_gap=(nll_train_tol.mean() - nll.mean()).abs().item(),
                tol_gap_max=(nll_train_tol - nll).abs().max().item(), seconds=fit["seconds"], steps=len(fit["losses"]),
                loss_first=sum(fit["losses"][:k]) / k, loss_last=sum(fit["losses"][-k:]) / k,
                train_nfe=fit["nfes"][-1] if fit["nfes"] else None)


def print_table(rows, floor: float, d: int) -> None:
    print(f"{'model':<14}{'steps':>6}{'train s':>9}{'test NLL (ODE)':>20}{'bits/dim':>10}{'-ELBO':>9}"
          f"{'bits/dim':>10}{'NFE':>6}")
    for r in rows:
        print(f"{r['model']:<14}{r['steps']:>6}{r['seconds']:>9.1f}{r['nll']:>13.3f} ± {r['nll_se']:.3f}"
              f"{r['bpd']:>10.3f}{r['elbo_nll']:>9.3f}{r['elbo_bpd']:>10.3f}{r['nfe']:>6}")
    print(f"{'data density':<14}{'':>6}{'':>9}{floor:>13.3f}{'':>6}{floor / (d * math.log(2)):>10.3f}"
          "   (the 8-Gaussian mixture itself: the floor)")
    for r in rows:
        print(f"{r['model']}: training loss {r['loss_first']:.3f} -> {r['loss_last']:.3f} nats/point (first and last "
              f"tenth of the steps); |test NLL at tol {r['tol_gap_tol']:g} − at {r['eval_tol']:g}| = "
              f"{r['tol_gap']:.1e} nats (largest per point {r['tol_gap_max']:.1e})")


def plot(models, ct, test, args, path) -> None:
    n = args.grid
    lin = torch.linspace(-1.5, 1.5, n)
    gx, gy = torch.meshgrid(lin, lin, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    fig, axes = plt.subplots(2, len(models), figsize=(4 * len(models), 8), sharex=True, sharey=True)
    for j, (row, diffusion) in enumerate(models):
        nll, _ = ode_nll(diffusion, ct, grid, args.eval_tol)
        axes[0, j].imshow((-nll).exp().reshape(n, n).numpy(), origin="lower", extent=(-1.5, 1.5, -1.5, 1.5),
                          cmap="viridis")
        axes[0, j].set_title(f"{row['model']}: exp(log p_ε)\ntest NLL {row['nll']:.2f} nats, −ELBO "
                             f"{row['elbo_nll']:.2f}", fontsize=9)
        samples, nfe = sample_ode(diffusion, args.samples, rtol=args.eval_tol, atol=args.eval_tol, time_map=ct,
                                  seed=0)
        axes[1, j].scatter(*test[:args.samples].T.numpy(), s=2, alpha=0.3, c="0.6", label="test data")
        axes[1, j].scatter(*samples.T.numpy(), s=2, alpha=0.6, label="ODE samples")
        axes[1, j].set_title(f"{row['model']}: ODE samples (NFE {nfe})", fontsize=9)
        axes[1, j].legend(loc="upper right", fontsize=7, markerscale=4)
    for ax in axes.flat:
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=100, help="steps of the chain (the grid time map needs T >= 2)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--ml-steps", type=int, default=200, help="SVI steps of maximum likelihood through the ODE")
    p.add_argument("--batch", type=int, default=128, help="batch of the ML steps")
    p.add_argument("--ml-lr", type=float, default=5e-3)
    p.add_argument("--elbo-steps", type=int, default=3000)
    p.add_argument("--elbo-batch", type=int, default=256)
    p.add_argument("--elbo-lr", type=float, default=2e-3)
    p.add_argument("--train-tol", type=float, default=1e-4, help="rtol = atol of the training solves")
    p.add_argument("--eval-tol", type=float, default=1e-5, help="rtol = atol of the held-out solves")
    p.add_argument("--adjoint", action="store_true", help="ML gradients by the adjoint ODE (O(1) memory)")
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--grid", type=int, default=80, help="density heatmap resolution (grid x grid points)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (restored on return): the tensors are tiny, more threads only "
                        "add synchronisation (on a loaded 2-core machine, 2 threads were 10-20x slower)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds: " + str(QUICK))
    p.add_argument("--out", default="examples/output")
    if p.parse_known_args(argv)[0].quick:  # the quick sizes as defaults: flags given still win
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    if args.T < 2:
        raise ValueError(f"T = {args.T}; the grid time map interpolates between steps and needs T >= 2 (--T)")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args) -> list[dict]:
    pyro.set_rng_seed(args.seed)
    data = load_dataset("eight_gaussians", n_train=20_000, n_test=args.n_test, seed=args.seed)
    schedule = NoiseSchedule.linear(args.T)
    ct = ContinuousTime(schedule)  # the grid map, built once; ε = 1/T

    net = MLPDenoiser(2, width=args.width, depth=args.depth)
    ml = GaussianDiffusion(schedule=schedule, denoiser=net, event_shape=(2,))
    elbo = GaussianDiffusion(schedule=schedule, denoiser=copy.deepcopy(net), event_shape=(2,))  # same start

    pyro.clear_param_store()
    ml_fit = train_ml(ml, ct, data.train, args)
    pyro.clear_param_store()
    elbo_fit = train_elbo(elbo, data.train, args)
    pyro.clear_param_store()

    rows = [evaluate("ML (ODE)", ml, ct, data.test, ml_fit, args),
            evaluate("ELBO", elbo, ct, data.test, elbo_fit, args)]
    for r in rows:
        r.update(tol_gap_tol=args.train_tol, eval_tol=args.eval_tol)
    floor = -data_log_prob(data.test).mean().item()
    print(f"T = {args.T}, MLPDenoiser(width {args.width}, depth {args.depth}), {len(data.test)} test points; ODE: "
          f"exact trace, dopri5, eval rtol = atol = {args.eval_tol:g}, eps = 1/T; training tol {args.train_tol:g}, "
          f"gradients by {'the adjoint' if args.adjoint else 'backpropagation'}")
    print_table(rows, floor, 2)

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "cnf_2d.png")
    plot([(rows[0], ml), (rows[1], elbo)], ct, data.test, args, path)
    print(f"wrote {path}")
    for r in rows:
        r["floor"] = floor
    return rows


if __name__ == "__main__":
    main()
