import os

import pyro
import pytest
import torch

# Under pytest-xdist each worker is its own process: one intra-op thread each, so that two workers
# on two cores do not oversubscribe them (OpenMP spinning then slows everything several-fold).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from the same seed, an empty param store and Pyro's validation on."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.set_default_dtype(torch.float32)
    yield
    pyro.clear_param_store()
