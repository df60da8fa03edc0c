"""A normalizing-flow prior: N(0, I) through two of Pyro's affine autoregressive transforms, learned.

    python examples/prior_flow.py --steps 2000 --out examples/output

Trains on the 8-Gaussian mixture with plain pyro.infer.SVI and writes prior_flow.png (data, samples,
draws of the learned prior); prints the held-out bound and its prior term.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _prior_demo import run  # noqa: E402

from ppl_diffusion.priors import FlowPrior  # noqa: E402


def main(argv=None):
    return run("flow", lambda: FlowPrior((2,), layers=2), argv, __doc__)


if __name__ == "__main__":
    main()
