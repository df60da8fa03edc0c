"""``python -m ppl_diffusion``: the ``ppl-diffusion`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
