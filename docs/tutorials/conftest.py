"""The tutorials' smoke mode under pytest: ``--nbval-lax docs/tutorials`` runs every notebook at tiny settings.

Each notebook reads ``smoke_test = "CI" in os.environ`` (Pyro's convention); its kernel inherits this
process's environment.
"""

import os

os.environ.setdefault("CI", "1")
