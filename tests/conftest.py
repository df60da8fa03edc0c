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
    """Every test starts from the same seed, an empty param store and Pyro's validation on; a CLI call with
    ``--threads`` in the test's process leaves torch's thread count and PJRT_NPROC as they were."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.set_default_dtype(torch.float32)
    threads, pjrt_nproc = torch.get_num_threads(), os.environ.get("PJRT_NPROC")
    yield
    pyro.clear_param_store()
    torch.set_num_threads(threads)
    if pjrt_nproc is None:
        os.environ.pop("PJRT_NPROC", None)
    else:
        os.environ["PJRT_NPROC"] = pjrt_nproc


def pytest_configure(config):
    """JAX's persistent compilation cache for the session: the NumPyro tests build many models of the same
    shapes (each trainer, bound and estimator is one jit compile of a few seconds); identical programs are
    compiled once. Results are unchanged: the cache holds the same executables."""
    try:
        import jax
    except ImportError:
        return
    import tempfile

    cache = os.environ.get("PPL_DIFFUSION_TEST_JAX_CACHE") or tempfile.mkdtemp(prefix="jax-cache-")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
