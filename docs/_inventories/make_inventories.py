"""Write the intersphinx inventories the site links to, so that the build needs no network.

The machines that build these docs cannot reach python.org, pytorch.org, docs.pyro.ai, num.pyro.ai or
docs.jax.dev, so ``conf.py`` points intersphinx at the files written here instead of the sites' own
``objects.inv``. Each entry is the object's name, its Sphinx role and its page on that project's site, as
the site lays it out (checked by hand against the live pages). Add a line when the docs refer to a new
outside name (the nitpicky build names it), then run ``python docs/_inventories/make_inventories.py``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# project: (title, version, [(name, domain:role, uri)]); "$" in a uri stands for the name (Sphinx's shorthand)
PROJECTS: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "python": ("Python", "3.11", [
        *[(n, "py:class", "library/functions.html#$") for n in
          ("int", "float", "str", "bool", "tuple", "list", "dict", "set", "object", "type", "bytes", "slice",
           "range", "frozenset", "complex")],
        ("None", "py:data", "library/constants.html#$"),
        ("Ellipsis", "py:data", "library/constants.html#$"),
        *[(n, "py:exception", "library/exceptions.html#$") for n in
          ("ValueError", "TypeError", "KeyError", "RuntimeError", "FileNotFoundError", "Exception",
           "NotImplementedError", "UserWarning", "Warning", "OSError", "SystemExit", "KeyboardInterrupt")],
        ("pathlib.Path", "py:class", "library/pathlib.html#$"),
        ("pathlib.PurePath", "py:class", "library/pathlib.html#$"),
        ("os.PathLike", "py:class", "library/os.html#$"),
        ("argparse.ArgumentParser", "py:class", "library/argparse.html#$"),
        ("argparse.Namespace", "py:class", "library/argparse.html#$"),
        ("dataclasses.dataclass", "py:function", "library/dataclasses.html#$"),
        ("enum.Enum", "py:class", "library/enum.html#$"),
        ("typing.Callable", "py:data", "library/typing.html#$"),
        ("typing.Any", "py:data", "library/typing.html#$"),
        ("collections.abc.Callable", "py:class", "library/collections.abc.html#$"),
        ("collections.abc.Iterator", "py:class", "library/collections.abc.html#$"),
        ("collections.abc.Iterable", "py:class", "library/collections.abc.html#$"),
        ("collections.abc.Sequence", "py:class", "library/collections.abc.html#$"),
        ("collections.abc.Mapping", "py:class", "library/collections.abc.html#$"),
        ("contextlib.AbstractContextManager", "py:class", "library/contextlib.html#$"),
        ("random.Random", "py:class", "library/random.html#$"),
        ("logging.Logger", "py:class", "library/logging.html#$"),
    ]),
    "numpy": ("NumPy", "2.4", [
        ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#$"),
        ("numpy.dtype", "py:class", "reference/generated/numpy.dtype.html#$"),
        ("numpy.float64", "py:class", "reference/arrays.scalars.html#$"),
        ("numpy.random.Generator", "py:class", "reference/random/generator.html#$"),
        ("numpy.number", "py:class", "reference/arrays.scalars.html#$"),
        ("numpy.bool", "py:class", "reference/arrays.scalars.html#$"),
    ]),
    "torch": ("PyTorch", "2.13", [
        ("torch.Tensor", "py:class", "tensors.html#$"),
        ("torch.dtype", "py:class", "tensor_attributes.html#$"),
        ("torch.device", "py:class", "tensor_attributes.html#$"),
        ("torch.Generator", "py:class", "generated/torch.Generator.html#$"),
        ("torch.nn.Module", "py:class", "generated/torch.nn.Module.html#$"),
        ("torch.nn.Parameter", "py:class", "generated/torch.nn.parameter.Parameter.html#$"),
        ("torch.nn.ModuleList", "py:class", "generated/torch.nn.ModuleList.html#$"),
        ("torch.optim.Optimizer", "py:class", "optim.html#$"),
        ("torch.optim.Adam", "py:class", "generated/torch.optim.Adam.html#$"),
        ("torch.distributions.Distribution", "py:class", "distributions.html#$"),
        ("torch.distributions.distribution.Distribution", "py:class", "distributions.html#$"),
        ("torch.distributions.Normal", "py:class", "distributions.html#torch.distributions.normal.Normal"),
        ("torch.distributions.constraints.Constraint", "py:class", "distributions.html#$"),
        ("torch.utils.checkpoint.checkpoint", "py:function", "checkpoint.html#$"),
        ("torch.distributed.init_process_group", "py:function", "distributed.html#$"),
        ("torch.Size", "py:class", "size.html#$"),
        ("torch.nn.modules.module.Module", "py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
        ("torch.nn.parameter.Parameter", "py:class", "generated/torch.nn.parameter.Parameter.html#$"),
        ("torch.distributions.Distribution.expand", "py:method", "distributions.html#$"),
        ("torch.distributions.distribution.Distribution.expand", "py:method", "distributions.html#$"),
    ]),
    "pyro": ("Pyro", "1.9", [
        ("pyro.infer.SVI", "py:class", "inference_algos.html#pyro.infer.svi.SVI"),
        ("pyro.infer.svi.SVI", "py:class", "inference_algos.html#$"),
        ("pyro.infer.ELBO", "py:class", "inference_algos.html#pyro.infer.elbo.ELBO"),
        ("pyro.infer.elbo.ELBO", "py:class", "inference_algos.html#$"),
        ("pyro.infer.Trace_ELBO", "py:class", "inference_algos.html#pyro.infer.trace_elbo.Trace_ELBO"),
        ("pyro.infer.trace_elbo.Trace_ELBO", "py:class", "inference_algos.html#$"),
        ("pyro.infer.TraceMeanField_ELBO", "py:class",
         "inference_algos.html#pyro.infer.trace_mean_field_elbo.TraceMeanField_ELBO"),
        ("pyro.infer.trace_mean_field_elbo.TraceMeanField_ELBO", "py:class", "inference_algos.html#$"),
        ("pyro.infer.RenyiELBO", "py:class", "inference_algos.html#pyro.infer.renyi_elbo.RenyiELBO"),
        ("pyro.distributions.Distribution", "py:class",
         "distributions.html#pyro.distributions.torch_distribution.TorchDistributionMixin"),
        ("pyro.distributions.TorchDistribution", "py:class",
         "distributions.html#pyro.distributions.torch_distribution.TorchDistribution"),
        ("pyro.distributions.torch_distribution.TorchDistribution", "py:class", "distributions.html#$"),
        ("pyro.distributions.Normal", "py:class", "distributions.html#normal"),
        ("pyro.distributions.torch.Normal", "py:class", "distributions.html#normal"),
        ("pyro.distributions.distribution.Distribution", "py:class", "distributions.html#$"),
        ("pyro.distributions.torch_distribution.ExpandedDistribution", "py:class", "distributions.html#$"),
        ("pyro.poutine.messenger.Messenger", "py:class", "poutine.html#$"),
        ("pyro.nn.PyroModule", "py:class", "nn.html#pyro.nn.module.PyroModule"),
        ("pyro.optim.PyroOptim", "py:class", "optimization.html#pyro.optim.optim.PyroOptim"),
        ("pyro.optim.Adam", "py:function", "optimization.html#pyro.optim.pytorch_optimizers.Adam"),
        ("pyro.module", "py:function", "primitives.html#$"),
        ("pyro.sample", "py:function", "primitives.html#$"),
        ("pyro.param", "py:function", "primitives.html#$"),
        ("pyro.plate", "py:class", "primitives.html#$"),
        ("pyro.poutine.trace", "py:function", "poutine.html#$"),
        ("pyro.poutine.Trace", "py:class", "poutine.html#pyro.poutine.Trace"),
    ]),
    "numpyro": ("NumPyro", "0.22", [
        ("numpyro.infer.SVI", "py:class", "svi.html#$"),
        ("numpyro.infer.Trace_ELBO", "py:class", "svi.html#$"),
        ("numpyro.infer.TraceMeanField_ELBO", "py:class", "svi.html#$"),
        ("numpyro.infer.elbo.ELBO", "py:class", "svi.html#numpyro.infer.elbo.ELBO"),
        ("numpyro.distributions.Distribution", "py:class", "distributions.html#distribution"),
        ("numpyro.distributions.distribution.Distribution", "py:class", "distributions.html#distribution"),
        ("numpyro.sample", "py:function", "primitives.html#sample"),
        ("numpyro.param", "py:function", "primitives.html#param"),
        ("numpyro.plate", "py:class", "primitives.html#plate"),
        ("numpyro.contrib.module.flax_module", "py:function", "primitives.html#flax-module"),
        ("numpyro.contrib.module.nnx_module", "py:function", "primitives.html#nnx-module"),
        ("numpyro.mutable", "py:function", "primitives.html#mutable"),
    ]),
    "flax": ("Flax", "0.12", [
        ("flax.nnx.Module", "py:class", "api_reference/flax.nnx/module.html#$"),
        ("flax.nnx.module.Module", "py:class", "api_reference/flax.nnx/module.html#flax.nnx.Module"),
        ("flax.nnx.Rngs", "py:class", "api_reference/flax.nnx/rnglib.html#$"),
        ("flax.nnx.remat", "py:function", "api_reference/flax.nnx/transforms.html#$"),
    ]),
    "jax": ("JAX", "0.10", [
        ("jax.Array", "py:class", "_autosummary/jax.Array.html#$"),
        ("jax.numpy.ndarray", "py:class", "_autosummary/jax.Array.html#jax.Array"),
        ("jax.jit", "py:function", "_autosummary/jax.jit.html#$"),
        ("jax.checkpoint", "py:function", "_autosummary/jax.checkpoint.html#$"),
        ("jax.random.key", "py:function", "_autosummary/jax.random.key.html#$"),
        ("jax.jaxlib._jax.Array", "py:class", "_autosummary/jax.Array.html#jax.Array"),
        ("jax.devices", "py:function", "_autosummary/jax.devices.html#$"),
        ("jax.sharding.Mesh", "py:class", "jax.sharding.html#$"),
        ("jax.sharding.NamedSharding", "py:class", "jax.sharding.html#$"),
    ]),
}


def write(name: str, title: str, version: str, entries: list[tuple[str, str, str]]) -> Path:
    """An objects.inv in Sphinx's version-2 format: four header lines, then zlib-compressed entries."""
    header = (f"# Sphinx inventory version 2\n# Project: {title}\n# Version: {version}\n"
              "# The remainder of this file is compressed using zlib.\n").encode()
    body = "".join(f"{n} {role} 1 {uri} -\n" for n, role, uri in sorted(set(entries))).encode()
    path = HERE / f"{name}.inv"
    path.write_bytes(header + zlib.compress(body, 9))
    return path


if __name__ == "__main__":
    for name, (title, version, entries) in PROJECTS.items():
        print(write(name, title, version, entries), len(entries), "entries")
