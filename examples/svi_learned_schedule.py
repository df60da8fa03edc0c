"""A learned forward process (VDM) in continuous time, trained with plain ``pyro.infer.SVI`` on the digits.

    python examples/svi_learned_schedule.py                 # 600 steps of batch 128: about a minute on 2 cores
    python examples/svi_learned_schedule.py --steps 5 --batch 16 --test-examples 8 --strata 2   # seconds
    python examples/svi_learned_schedule.py --data-root FOLDER  # your own PNGs (any size; an MLP over the pixels)

It printed here (MLP of 191k parameters; 0.1 s a step on 2 cores lightly shared, ten minutes in all when heavily shared):
learned γ_0 = −10.22, γ_1 = 1.04 (from −13.3, 5.0); test bound 6.63 ± 0.02 bits/dim on the 360 test digits, the
t-integral's SE 0.009. A short run of a small net: the digits U-Net preset reaches 3.6 (docs/results.md).

The guide's forward process is VDM's monotone γ(t) (``MonotoneNetGamma``), T = ∞: ``ContinuousTimeELBO`` with
``schedule_objective="variance"`` gives the denoiser and the endpoints γ_0, γ_1 the ELBO's gradient and the
interior of γ the gradient of the diffusion estimate's variance, in one ``svi.step`` (docs/variational.md). At the end
it prints the learned endpoints and the continuous-time bound of the test digits in bits/dim, an unbiased estimate
with its standard error over examples (t drawn in strata, everything included) and the t-integral's own Monte-Carlo
SE. The scikit-learn digits (8 x 8, 17 grey levels, embedded in the package) are discrete data, so the discretized
decoder makes the figure a bound on a probability and the learned γ_0 trades the decoder's term against the
diffusion term; an MLP keeps a step at ~0.1 s on a CPU (a small U-Net was ~20x slower).
"""

import argparse
import math

import pyro
import torch
from pyro.infer import SVI

from ppl_diffusion import GaussianDiffusion, MLPDenoiser
from ppl_diffusion.data import load_dataset
from ppl_diffusion.gamma import MonotoneNetGamma
from ppl_diffusion.infer import ContinuousTimeELBO
from ppl_diffusion.infer.continuous_bound import estimate_continuous_bound, plan_continuous_uniform


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600, help="SVI steps")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate of the denoiser")
    p.add_argument("--schedule-lr", type=float, default=2e-2, help="Adam's learning rate of γ (endpoints, interior)")
    p.add_argument("--test-examples", type=int, default=360, help="test digits the bound is estimated on")
    p.add_argument("--strata", type=int, default=20, help="strata of [0, 1] for t in the bound (2 draws each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100, help="print the training estimate every N steps")
    p.add_argument("--data-root", default=None, help="a folder of same-sized PNGs instead of the digits")
    args = p.parse_args(argv)
    pyro.set_rng_seed(args.seed)
    # model space [-1, 1], [N x C x H x W]: the digits (1 x 8 x 8), or your images
    data = load_dataset("digits") if args.data_root is None else load_dataset("image_folder", root=args.data_root)
    num_dims = math.prod(data.event_shape)  # D, for bits/dim

    # The model: a denoiser conditioned on γ (the default time input of a γ schedule); the guide: q(x_t|x_0) of γ.
    diffusion = GaussianDiffusion(schedule=MonotoneNetGamma(-13.3, 5.0), T=0, event_shape=data.event_shape,
                                  denoiser=MLPDenoiser(dim=num_dims), decoder="discretized")
    loss = ContinuousTimeELBO(timesteps="low-discrepancy", schedule_objective="variance")
    optim = pyro.optim.Adam(lambda module, name: {"lr": args.schedule_lr if module == "schedule" else args.lr})
    svi = SVI(diffusion.model, diffusion.guide, optim, loss)
    g0, g1 = (float(g.detach()) for g in diffusion.schedule.endpoints())
    print(f"γ_0 = {g0:.3f}, γ_1 = {g1:.3f} at the start")
    for step in range(1, args.steps + 1):
        batch = data.train[torch.randint(0, len(data.train), (args.batch,))]
        nats = svi.step(batch) / args.batch
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step:4d}: -ELBO estimate {nats / (num_dims * math.log(2)):.3f} bits/dim", flush=True)

    g0, g1 = (float(g.detach()) for g in diffusion.schedule.endpoints())
    test = data.test[:args.test_examples]
    with torch.no_grad():
        est = estimate_continuous_bound(diffusion, test, plan_continuous_uniform(strata=args.strata, draws=2), seed=1)
    s = est.summary()
    print(f"learned γ_0 = {g0:.3f}, γ_1 = {g1:.3f}; test bound on {len(test)} {data.name} examples: {s['bpd']:.3f} ± "
          f"{s['bpd_stderr']:.3f} bits/dim (SE over examples; the t-integral's own SE {s['bpd_t_stderr']:.4f})")
    return {"gamma_0": g0, "gamma_1": g1, **s}, diffusion


if __name__ == "__main__":
    main()
