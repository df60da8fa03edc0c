"""A learned diagonal Gaussian N(mu, diag sigma^2) as p(x_T); its KL term in closed form.

    python examples/prior_learned_gaussian.py --steps 2000 --out examples/output

Trains on the 8-Gaussian mixture with plain pyro.infer.SVI and writes prior_learned_gaussian.png (data, samples,
draws of the learned prior); prints the held-out bound and its prior term.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _prior_demo import run  # noqa: E402

from ppl_diffusion.priors import DiagonalGaussian  # noqa: E402


def main(argv=None):
    return run("learned_gaussian", lambda: DiagonalGaussian((2,)), argv, __doc__)


if __name__ == "__main__":
    main()
