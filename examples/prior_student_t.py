"""Student-t prior: heavier tails than N(0, I), learned location, scale and degrees of freedom; its KL term by Monte Carlo.

    python examples/prior_student_t.py --steps 2000 --out examples/output

Trains on the 8-Gaussian mixture with plain pyro.infer.SVI and writes prior_student_t.png (data, samples,
draws of the learned prior); prints the held-out bound and its prior term.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _prior_demo import run  # noqa: E402

from ppl_diffusion.priors import StudentT  # noqa: E402


def main(argv=None):
    return run("student_t", lambda: StudentT((2,), df=5.0, learn_df=True), argv, __doc__)


if __name__ == "__main__":
    main()
