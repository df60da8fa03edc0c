"""A learned mixture of 4 Gaussians as p(x_T); its KL term by Monte Carlo.

    python examples/prior_mixture.py --steps 2000 --out examples/output

Trains on the 8-Gaussian mixture with plain pyro.infer.SVI and writes prior_mixture.png (data, samples,
draws of the learned prior); prints the held-out bound and its prior term.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _prior_demo import run  # noqa: E402

from ppl_diffusion.priors import GaussianMixture  # noqa: E402


def main(argv=None):
    return run("mixture", lambda: GaussianMixture((2,), components=4), argv, __doc__)


if __name__ == "__main__":
    main()
