"""Weights between the PyTorch denoisers and their Flax NNX twins, both ways.

A PyTorch ``Linear`` stores ``weight [out x in]``, Flax ``kernel [in x out]``; ``LayerNorm`` is
``weight, bias`` against ``scale, bias``. The tables below name the layers on both sides.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx


def _mlp_layers(depth: int) -> list[tuple[str, tuple, str]]:
    """(torch prefix, nnx path, kind) for every layer of an MLPDenoiser of ``depth`` blocks."""
    layers = [("time.0", ("time_in",), "linear"), ("time.2", ("time_out",), "linear"), ("inp", ("inp",), "linear")]
    for i in range(depth):
        layers += [(f"blocks.{i}.norm", ("blocks", i, "norm"), "norm"), (f"blocks.{i}.emb", ("blocks", i, "emb"), "linear"),
                   (f"blocks.{i}.fc1", ("blocks", i, "fc1"), "linear"), (f"blocks.{i}.fc2", ("blocks", i, "fc2"), "linear")]
    return layers + [("out.0", ("out_norm",), "norm"), ("out.2", ("out",), "linear")]


def _get(d: dict, path: tuple):
    for k in path:
        d = d[k]
    return d


def mlp_from_torch(module, torch_module) -> None:
    """Copy the weights of a PyTorch :class:`ppl_diffusion.nets.MLPDenoiser` into the Flax ``module``."""
    sd = {k: v.detach().cpu().numpy() for k, v in torch_module.state_dict().items()}
    state = nnx.state(module, nnx.Param)
    pure = nnx.to_pure_dict(state)
    for prefix, path, kind in _mlp_layers(len(module.blocks)):
        node = _get(pure, path)
        if kind == "linear":
            _check(node["kernel"], sd[f"{prefix}.weight"].T, prefix)
            node["kernel"] = jnp.asarray(sd[f"{prefix}.weight"].T)
            node["bias"] = jnp.asarray(sd[f"{prefix}.bias"])
        else:
            node["scale"] = jnp.asarray(sd[f"{prefix}.weight"])
            node["bias"] = jnp.asarray(sd[f"{prefix}.bias"])
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)


def mlp_to_torch(module, torch_module) -> None:
    """Copy the weights of the Flax ``module`` into a PyTorch :class:`ppl_diffusion.nets.MLPDenoiser`."""
    pure = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    sd = {}
    for prefix, path, kind in _mlp_layers(len(module.blocks)):
        node = _get(pure, path)
        if kind == "linear":
            sd[f"{prefix}.weight"] = torch.from_numpy(np.array(node["kernel"]).T.copy())
        else:
            sd[f"{prefix}.weight"] = torch.from_numpy(np.array(node["scale"]))
        sd[f"{prefix}.bias"] = torch.from_numpy(np.array(node["bias"]))
    torch_module.load_state_dict(sd)


def _check(have, want, name: str) -> None:
    if tuple(have.shape) != tuple(want.shape):
        raise ValueError(f"layer {name}: the Flax net has shape {tuple(have.shape)}, the PyTorch weights "
                         f"{tuple(want.shape)}; build the Flax MLPDenoiser with the same dim, width and depth")
