"""Weights between the PyTorch denoisers and their Flax NNX twins, both ways, by state dict.

The tables below name every layer on both sides: ``(torch prefix, nnx path, kind)``, in the order of the
PyTorch ``state_dict``. The kinds and their layouts:

* ``linear``: torch ``Linear.weight [out x in]`` ↔ Flax ``Linear.kernel [in x out]``;
* ``conv``: torch ``Conv2d.weight [out x in x kh x kw]`` ↔ Flax ``Conv.kernel [kh x kw x in x out]``;
* ``conv1x1``: torch ``Conv2d`` 1×1 ``[out x in x 1 x 1]`` (a residual block's skip) ↔ Flax ``Linear [in x out]``;
* ``conv1d``: torch ``Conv1d`` 1×1 ``[out x in x 1]`` (attention's qkv and proj_out) ↔ Flax ``Linear [in x out]``;
* ``norm``: torch ``LayerNorm`` / ``GroupNorm`` ``weight, bias`` ↔ Flax ``scale, bias``.

Every function takes the Flax module as the template of shapes and structure: build it with the same
hyperparameters as the PyTorch net (:func:`flax_twin` does this from a PyTorch net). The γ schedules of a learnable
forward process convert by name (:func:`gamma_twin`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from .nets import AttentionBlock, Downsample, MLPDenoiser, ResBlock, UNet, Upsample

# (torch parameter name, Flax parameter name, torch layout → Flax layout, Flax layout → torch layout)
_KINDS = {
    "linear": [("weight", "kernel", lambda w: w.T, lambda k: k.T)],
    "conv": [("weight", "kernel", lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))],
    "conv1x1": [("weight", "kernel", lambda w: w[:, :, 0, 0].T, lambda k: k.T[:, :, None, None])],
    "conv1d": [("weight", "kernel", lambda w: w[:, :, 0].T, lambda k: k.T[:, :, None])],
    "norm": [("weight", "scale", lambda w: w, lambda s: s)],
}
_BIAS = ("bias", "bias", lambda b: b, lambda b: b)


# --------------------------------------------------------------------------------------------- layer tables
def _mlp_layers(depth: int) -> list[tuple[str, tuple, str]]:
    """(torch prefix, nnx path, kind) for every layer of an MLPDenoiser of ``depth`` blocks."""
    layers = [("time.0", ("time_in",), "linear"), ("time.2", ("time_out",), "linear"), ("inp", ("inp",), "linear")]
    for i in range(depth):
        layers += [(f"blocks.{i}.norm", ("blocks", i, "norm"), "norm"), (f"blocks.{i}.emb", ("blocks", i, "emb"), "linear"),
                   (f"blocks.{i}.fc1", ("blocks", i, "fc1"), "linear"), (f"blocks.{i}.fc2", ("blocks", i, "fc2"), "linear")]
    return layers + [("out.0", ("out_norm",), "norm"), ("out.2", ("out",), "linear")]


def _unet_layer(layer, prefix: str, path: tuple) -> list[tuple[str, tuple, str]]:
    if isinstance(layer, ResBlock):
        rows = [(f"{prefix}.in_layers.0", path + ("in_norm",), "norm"),
                (f"{prefix}.in_layers.2", path + ("in_conv",), "conv"),
                (f"{prefix}.emb_layers.1", path + ("emb",), "linear"),
                (f"{prefix}.out_layers.0", path + ("out_norm",), "norm"),
                (f"{prefix}.out_layers.3", path + ("out_conv",), "conv")]
        return rows + ([] if layer.skip is None else [(f"{prefix}.skip", path + ("skip",), "conv1x1")])
    if isinstance(layer, AttentionBlock):
        return [(f"{prefix}.norm", path + ("norm",), "norm"), (f"{prefix}.qkv", path + ("qkv",), "conv1d"),
                (f"{prefix}.proj_out", path + ("proj_out",), "conv1d")]
    if isinstance(layer, Downsample):
        return [(f"{prefix}.op", path + ("op",), "conv")]
    if isinstance(layer, Upsample):
        return [(f"{prefix}.conv", path + ("conv",), "conv")]
    if isinstance(layer, nnx.Conv):  # the input conv
        return [(prefix, path, "conv")]
    raise TypeError(f"no torch twin known for the U-Net layer {type(layer).__name__} at {prefix}")


def _unet_layers(module: UNet) -> list[tuple[str, tuple, str]]:
    """(torch prefix, nnx path, kind) for every layer of ``module``, in the torch ``state_dict`` order."""
    rows = [("time_embed.0", ("time_in",), "linear"), ("time_embed.2", ("time_out",), "linear")]
    for name in ("input_blocks", "output_blocks"):
        if name == "output_blocks":
            for j, layer in enumerate(module.middle_block):
                rows += _unet_layer(layer, f"middle_block.{j}", ("middle_block", j))
        for i, block in enumerate(getattr(module, name)):
            for j, layer in enumerate(block):
                rows += _unet_layer(layer, f"{name}.{i}.{j}", (name, i, j))
    return rows + [("out.0", ("out_norm",), "norm"), ("out.2", ("out",), "conv")]


def _layers(module) -> tuple[str, list[tuple[str, tuple, str]], str]:
    """(net name, layer table, how to build a matching Flax net) of a Flax denoiser."""
    if isinstance(module, MLPDenoiser):
        return "MLPDenoiser", _mlp_layers(len(module.blocks)), "same dim, width and depth"
    if isinstance(module, UNet):
        return "UNet", _unet_layers(module), "same hyperparameters (flax_twin(torch_net) builds one)"
    raise TypeError(f"no PyTorch twin known for {type(module).__name__}; expected a Flax MLPDenoiser or UNet")


def _get(d: dict, path: tuple):
    for k in path:
        d = d[k]
    return d


# --------------------------------------------------------------------------------------------- state dicts
def params_from_torch_state(module, state_dict) -> dict:
    """The pure param dict of the Flax ``module`` (``nnx.to_pure_dict(nnx.state(module, nnx.Param))``'s
    structure) holding the weights of ``state_dict``, the state dict of the PyTorch twin. Raises a
    ValueError naming the layer on a missing or unexpected key or a shape that does not match.

    :param module: a Flax :class:`~ppl_diffusion.numpyro.nets.MLPDenoiser` or :class:`~ppl_diffusion.numpyro.nets.UNet`.
    :param state_dict: the PyTorch twin's ``state_dict()`` (tensors or arrays).
    :returns: the pure dict (the value NumPyro keeps under ``"denoiser$params"``).

    Example (torch ``Linear.weight [out x in]`` is Flax ``kernel [in x out]``):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import nets
    >>> from ppl_diffusion.numpyro import MLPDenoiser
    >>> _ = torch.manual_seed(0)
    >>> torch_net = nets.MLPDenoiser(2, width=16, depth=1, emb_dim=8, zero_init=False)
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> from ppl_diffusion.numpyro import params_from_torch_state
    >>> params = params_from_torch_state(net, torch_net.state_dict())
    >>> params["inp"]["kernel"].shape, tuple(torch_net.inp.weight.shape)
    ((2, 16), (16, 2))
    """
    net, table, fix = _layers(module)
    pure = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    unused = dict(state_dict)
    for prefix, path, kind in table:
        node = _get(pure, path)
        for t_name, f_name, to_flax, to_torch in _KINDS[kind] + [_BIAS]:
            key = f"{prefix}.{t_name}"
            want = to_torch(np.asarray(node[f_name])).shape
            if key not in unused:
                raise ValueError(f"layer {prefix}: the state dict has no {key!r} (a {want} tensor) that the Flax "
                                 f"{net} needs; build the Flax {net} with the {fix}")
            value = unused.pop(key)
            value = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
            if tuple(value.shape) != tuple(want):
                raise ValueError(f"layer {prefix}: the Flax {net} has {t_name} of shape {tuple(want)} (torch layout), "
                                 f"the PyTorch weights {tuple(value.shape)}; build the Flax {net} with the {fix}")
            node[f_name] = jnp.asarray(to_flax(value), dtype=node[f_name].dtype)
    if unused:
        keys = ", ".join(list(unused)[:3]) + (", ..." if len(unused) > 3 else "")
        raise ValueError(f"layer {next(iter(unused)).rsplit('.', 1)[0]}: the state dict has {len(unused)} key(s) the "
                         f"Flax {net} lacks ({keys}); build the Flax {net} with the {fix}")
    return pure


def torch_state_from_params(module, params) -> dict[str, torch.Tensor]:
    """The PyTorch state dict (float32 CPU tensors, the twin's keys in its order) of the pure param dict
    ``params`` of the Flax ``module`` (weights, or gradients laid out as weights).

    :param module: a Flax :class:`~ppl_diffusion.numpyro.nets.MLPDenoiser` or :class:`~ppl_diffusion.numpyro.nets.UNet`
        (the layout).
    :param params: its pure param dict (or a tree of the same structure).
    :returns: a dict of float32 CPU tensors, the twin's ``state_dict`` keys in order.

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import nets
    >>> from ppl_diffusion.numpyro import MLPDenoiser
    >>> _ = torch.manual_seed(0)
    >>> torch_net = nets.MLPDenoiser(2, width=16, depth=1, emb_dim=8, zero_init=False)
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> from flax import nnx
    >>> from ppl_diffusion.numpyro import torch_state_from_params
    >>> state = torch_state_from_params(net, nnx.to_pure_dict(nnx.state(net, nnx.Param)))
    >>> list(state) == list(torch_net.state_dict())
    True
    """
    _, table, _ = _layers(module)
    sd = {}
    for prefix, path, kind in table:
        node = _get(params, path)
        for t_name, f_name, _, to_torch in _KINDS[kind] + [_BIAS]:
            sd[f"{prefix}.{t_name}"] = torch.from_numpy(np.array(to_torch(np.asarray(node[f_name])),
                                                                 dtype=np.float32, order="C"))
    return sd


def load_torch_state(module, state_dict) -> None:
    """Write the weights of the PyTorch twin's ``state_dict`` into the Flax ``module``, in place.

    :param module: a Flax :class:`~ppl_diffusion.numpyro.nets.MLPDenoiser` or :class:`~ppl_diffusion.numpyro.nets.UNet`.
    :param state_dict: the PyTorch twin's ``state_dict()``.

    Example (the two nets then compute the same ε̂):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import nets
    >>> from ppl_diffusion.numpyro import MLPDenoiser
    >>> _ = torch.manual_seed(0)
    >>> torch_net = nets.MLPDenoiser(2, width=16, depth=1, emb_dim=8, zero_init=False)
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> from ppl_diffusion.numpyro import load_torch_state
    >>> load_torch_state(net, torch_net.state_dict())
    >>> x, t = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(3, 2), np.array([1, 2, 3])
    >>> with torch.no_grad():
    ...     reference = torch_net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    >>> bool(np.allclose(np.asarray(net(jnp.asarray(x), jnp.asarray(t))), reference, atol=1e-5))
    True
    """
    pure = params_from_torch_state(module, state_dict)
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)


# --------------------------------------------------------------------------------------------- modules
def _check_pair(module, torch_module) -> None:
    from ..nets import MLPDenoiser as TorchMLP
    from ..nets import UNet as TorchUNet

    want = {MLPDenoiser: TorchMLP, UNet: TorchUNet}.get(type(module))
    if want is None:
        raise TypeError(f"no PyTorch twin known for {type(module).__name__}; expected a Flax MLPDenoiser or UNet")
    if not isinstance(torch_module, want):
        raise TypeError(f"the Flax {type(module).__name__} converts to and from a PyTorch {want.__name__}, "
                        f"not a {type(torch_module).__name__}")


def from_torch(module, torch_module) -> None:
    """Copy the weights of a PyTorch :class:`~ppl_diffusion.nets.mlp.MLPDenoiser` or
    :class:`~ppl_diffusion.nets.unet.UNet`
    into its Flax twin ``module``.

    :param module: the Flax net, built with the same hyperparameters.
    :param torch_module: the PyTorch net.
    :raises TypeError: for a pair that are not twins.

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import nets
    >>> from ppl_diffusion.numpyro import MLPDenoiser
    >>> _ = torch.manual_seed(0)
    >>> torch_net = nets.MLPDenoiser(2, width=16, depth=1, emb_dim=8, zero_init=False)
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> from ppl_diffusion.numpyro import from_torch
    >>> from_torch(net, torch_net)
    >>> x, t = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(3, 2), np.array([1, 2, 3])
    >>> with torch.no_grad():
    ...     reference = torch_net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    >>> bool(np.allclose(np.asarray(net(jnp.asarray(x), jnp.asarray(t))), reference, atol=1e-5))
    True
    """
    _check_pair(module, torch_module)
    load_torch_state(module, torch_module.state_dict())


def to_torch(module, torch_module) -> None:
    """Copy the weights of the Flax ``module`` into its PyTorch twin ``torch_module`` (strict ``load_state_dict``).

    :param module: the Flax net.
    :param torch_module: the PyTorch net, built with the same hyperparameters.
    :raises TypeError: for a pair that are not twins.

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import nets
    >>> from ppl_diffusion.numpyro import MLPDenoiser
    >>> _ = torch.manual_seed(0)
    >>> torch_net = nets.MLPDenoiser(2, width=16, depth=1, emb_dim=8, zero_init=False)
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> from ppl_diffusion.numpyro import to_torch
    >>> to_torch(net, torch_net)
    >>> bool(np.array_equal(torch_net.inp.weight.detach().numpy(), np.asarray(net.inp.kernel[...]).T))
    True
    """
    _check_pair(module, torch_module)
    torch_module.load_state_dict(torch_state_from_params(module, nnx.to_pure_dict(nnx.state(module, nnx.Param))))


def mlp_from_torch(module, torch_module) -> None:
    """Copy the weights of a PyTorch :class:`ppl_diffusion.nets.mlp.MLPDenoiser` into the Flax ``module``
    (:func:`~ppl_diffusion.numpyro.convert.from_torch` without the type check).

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import nets
    >>> from ppl_diffusion.numpyro import MLPDenoiser
    >>> _ = torch.manual_seed(0)
    >>> torch_net = nets.MLPDenoiser(2, width=16, depth=1, emb_dim=8, zero_init=False)
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> from ppl_diffusion.numpyro import mlp_from_torch
    >>> mlp_from_torch(net, torch_net)
    >>> x, t = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(3, 2), np.array([1, 2, 3])
    >>> with torch.no_grad():
    ...     reference = torch_net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    >>> bool(np.allclose(np.asarray(net(jnp.asarray(x), jnp.asarray(t))), reference, atol=1e-5))
    True
    """
    load_torch_state(module, torch_module.state_dict())


def mlp_to_torch(module, torch_module) -> None:
    """Copy the weights of the Flax ``module`` into a PyTorch :class:`ppl_diffusion.nets.mlp.MLPDenoiser`
    (:func:`~ppl_diffusion.numpyro.convert.to_torch` without the type check).

    Example (a Flax net's zero last layer, copied):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import nets
    >>> from ppl_diffusion.numpyro import MLPDenoiser
    >>> _ = torch.manual_seed(0)
    >>> torch_net = nets.MLPDenoiser(2, width=16, depth=1, emb_dim=8, zero_init=False)
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> from ppl_diffusion.numpyro import mlp_to_torch
    >>> mlp_to_torch(net, torch_net)
    >>> float(torch_net.out[2].weight.detach().abs().max())
    0.0
    """
    torch_module.load_state_dict(torch_state_from_params(module, nnx.to_pure_dict(nnx.state(module, nnx.Param))))


# --------------------------------------------------------------------------------------------- twins
def _unet_kwargs(net) -> dict:
    """The constructor arguments of a PyTorch UNet, read off its attributes and layers.

    The net stores ``in_channels, model_channels, image_size, eps_channels, learn_sigma, channel_mult,
    attention_resolutions``; the rest are inferred: ``num_res_blocks`` from the number of down blocks,
    ``dropout`` and ``use_scale_shift_norm`` from a residual block, the heads from the attention blocks
    (``num_heads`` if all have the same count, else ``num_head_channels``), ``num_groups`` as the largest
    GroupNorm group count (which reproduces every layer's count under the rule of ``group_norm``), and
    ``zero_init=False`` (the weights are loaded anyway).
    """
    from ..nets.unet import AttentionBlock as TorchAttention
    from ..nets.unet import ResBlock as TorchRes

    levels = len(net.channel_mult)
    res = next(m for m in net.modules() if isinstance(m, TorchRes))
    attention = [m for m in net.modules() if isinstance(m, TorchAttention)]
    heads = {m.num_heads for m in attention}
    head_channels = {m.qkv.in_channels // m.num_heads for m in attention}
    kwargs = dict(in_channels=net.in_channels, model_channels=net.model_channels, image_size=net.image_size,
                  out_channels=net.eps_channels, channel_mult=net.channel_mult,
                  num_res_blocks=(len(net.input_blocks) - levels) // levels,
                  attention_resolutions=net.attention_resolutions, dropout=res.out_layers[2].p,
                  learn_sigma=net.learn_sigma, use_scale_shift_norm=res.scale_shift,
                  num_groups=max(m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)),
                  zero_init=False, min_group_channels=getattr(net, "min_group_channels", 2),
                  timestep_shift=getattr(net, "timestep_shift", 0.0), timestep_scale=getattr(net, "timestep_scale", 1.0),
                  fourier_features=getattr(net, "fourier_features", ()))
    if len(heads) == 1:
        kwargs["num_heads"] = heads.pop()
    elif len(head_channels) == 1:
        kwargs["num_head_channels"] = head_channels.pop()
    else:
        raise ValueError("flax_twin: the attention layers have neither one head count nor one head width; "
                         "pass the UNet's constructor arguments as kwargs")
    return kwargs


def flax_twin(torch_module, *, rngs: nnx.Rngs | None = None, kwargs: dict | None = None):
    """The Flax twin of a PyTorch :class:`~ppl_diffusion.nets.mlp.MLPDenoiser` or
    :class:`~ppl_diffusion.nets.unet.UNet`,
    holding its weights and in its train / eval mode.

    The PyTorch nets do not store all their constructor arguments, so they are read off the net's
    attributes and layers (see ``_unet_kwargs``; ``min_group_channels`` and the step label's
    ``timestep_shift`` / ``timestep_scale`` are attributes); ``kwargs`` overrides them (e.g. the exact
    ``num_groups`` or ``zero_init``). The group count of every GroupNorm is checked against the twin's.

    :param torch_module: the PyTorch net.
    :param rngs: ``nnx.Rngs`` for the construction (the weights are then overwritten).
    :type rngs: :class:`flax.nnx.Rngs` | None
    :param dict kwargs: constructor arguments of the Flax net that override the inferred ones.
    :returns: the Flax :class:`~ppl_diffusion.numpyro.nets.MLPDenoiser` or :class:`~ppl_diffusion.numpyro.nets.UNet`.

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import nets
    >>> from ppl_diffusion.numpyro import MLPDenoiser
    >>> _ = torch.manual_seed(0)
    >>> torch_net = nets.MLPDenoiser(2, width=16, depth=1, emb_dim=8, zero_init=False)
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
    >>> from ppl_diffusion.numpyro import flax_twin
    >>> net = flax_twin(torch_net)
    >>> x, t = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(3, 2), np.array([1, 2, 3])
    >>> with torch.no_grad():
    ...     reference = torch_net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    >>> bool(np.allclose(np.asarray(net(jnp.asarray(x), jnp.asarray(t))), reference, atol=1e-5))
    True
    """
    from ..nets import MLPDenoiser as TorchMLP
    from ..nets import UNet as TorchUNet

    if isinstance(torch_module, TorchMLP):
        blocks = torch_module.blocks
        inferred = dict(dim=torch_module.dim, width=torch_module.inp.out_features, depth=len(blocks),
                        emb_dim=torch_module.emb_dim, dropout=blocks[0].drop.p if len(blocks) else 0.0,
                        zero_init=False, learn_sigma=getattr(torch_module, "learn_sigma", False))
        kw = {**inferred, **(kwargs or {})}
        module = MLPDenoiser(kw.pop("dim"), **kw, rngs=rngs)
    elif isinstance(torch_module, TorchUNet):
        module = UNet(**{**_unet_kwargs(torch_module), **(kwargs or {})}, rngs=rngs)
        t_groups = [m.num_groups for m in torch_module.modules() if isinstance(m, torch.nn.GroupNorm)]
        f_groups = [m.num_groups for _, m in nnx.iter_graph(module) if isinstance(m, nnx.GroupNorm)]
        if sorted(t_groups) != sorted(f_groups):
            raise ValueError("flax_twin: the GroupNorm group counts differ from the PyTorch UNet's; pass its "
                             "num_groups in kwargs")
    else:
        raise TypeError(f"flax_twin: no Flax twin known for {type(torch_module).__name__}; expected a PyTorch "
                        "MLPDenoiser or UNet")
    from_torch(module, torch_module)
    if not torch_module.training:
        module.eval()
    return module


# --------------------------------------------------------------------------------------------- γ schedules
def _flatten(pure: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in pure.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def gamma_params_from_torch_state(module, state_dict) -> dict:
    """The pure param dict of the Flax γ schedule ``module`` (:mod:`ppl_diffusion.numpyro.gamma`) holding the
    PyTorch twin's ``state_dict`` (``schedule.`` stripped if present): the names and layouts are the same
    (``ends.log_range``, ``l2.weight [F x 1]``, …). A ValueError names a missing, extra or misshapen key.

    :param module: a Flax γ schedule of :mod:`ppl_diffusion.numpyro.gamma`.
    :param state_dict: the PyTorch schedule's ``state_dict()``.
    :returns: the pure param dict (the value NumPyro keeps under ``"schedule$params"``).

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import gamma
    >>> from ppl_diffusion.numpyro import ScalarGamma
    >>> from ppl_diffusion.numpyro import gamma_params_from_torch_state
    >>> params = gamma_params_from_torch_state(ScalarGamma(), gamma.ScalarGamma(-5.0, 5.0).state_dict())
    >>> sorted(params), round(float(params["gamma_0"]), 4)
    (['gamma_0', 'log_range'], -5.0)
    """
    pure = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    flat = _flatten(pure)
    given = {k.removeprefix("schedule."): v for k, v in state_dict.items()}
    if set(given) != set(flat):
        missing, extra = sorted(set(flat) - set(given)), sorted(set(given) - set(flat))
        raise ValueError(f"the γ schedule {type(module).__name__} has parameters {sorted(flat)}; the state dict "
                         f"lacks {missing} and has extra {extra}: build the Flax schedule with the PyTorch one's "
                         "class and settings (gamma_twin(torch_schedule) does)")
    for name, want in flat.items():
        value = given[name]
        value = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
        if value.shape != np.shape(want):
            raise ValueError(f"γ schedule parameter {name}: the Flax schedule has shape {np.shape(want)}, the "
                             f"state dict {value.shape}; build it with the same features")
        node, *path = name.split(".")[::-1]
        target = pure
        for key in reversed(path):
            target = target[key]
        target[node] = jnp.asarray(value, dtype=np.asarray(want).dtype)
    return pure


def torch_state_from_gamma_params(module, params) -> dict[str, torch.Tensor]:
    """The PyTorch state dict (float32 CPU tensors, the same names) of the pure param dict ``params`` of the Flax γ
    schedule ``module`` (its weights, or gradients laid out as them).

    :param module: the Flax γ schedule (unused: the names are the layout).
    :param params: its pure param dict.
    :returns: a dict of float32 CPU tensors under the PyTorch names.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import gamma
    >>> from ppl_diffusion.numpyro import ScalarGamma
    >>> from flax import nnx
    >>> from ppl_diffusion.numpyro import torch_state_from_gamma_params
    >>> schedule = ScalarGamma()
    >>> state = torch_state_from_gamma_params(schedule, nnx.to_pure_dict(nnx.state(schedule, nnx.Param)))
    >>> sorted(state) == sorted(gamma.ScalarGamma().state_dict())
    True
    """
    del module  # the names are the layout
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in _flatten(params).items()}


def gamma_twin(torch_schedule):
    """The Flax twin of a PyTorch γ schedule (:mod:`ppl_diffusion.gamma`), with its settings and weights.

    :param torch_schedule: a :class:`~ppl_diffusion.gamma.LinearGamma`, :class:`~ppl_diffusion.gamma.ScalarGamma`,
        :class:`~ppl_diffusion.gamma.InterpolatedGamma` or :class:`~ppl_diffusion.gamma.MonotoneNetGamma`.
    :raises TypeError: for another module.

    Example (the same γ(t)):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import gamma
    >>> from ppl_diffusion.numpyro import gamma_twin
    >>> _ = torch.manual_seed(0)
    >>> torch_schedule = gamma.MonotoneNetGamma(features=4)
    >>> t = np.array([0.0, 0.3, 1.0])
    >>> with torch.no_grad():
    ...     reference = torch_schedule(torch.from_numpy(t)).numpy()
    >>> bool(np.allclose(np.asarray(gamma_twin(torch_schedule)(jnp.asarray(t, jnp.float32))), reference, atol=1e-4))
    True
    """
    from .. import gamma as tg
    from . import gamma as jg

    if isinstance(torch_schedule, tg.InterpolatedGamma):
        return jg.InterpolatedGamma(torch_schedule.times, torch_schedule.gammas, torch_schedule.interpolation)
    if isinstance(torch_schedule, tg.LinearGamma):
        return jg.LinearGamma(torch_schedule.gamma_0, torch_schedule.gamma_1)
    if isinstance(torch_schedule, tg.ScalarGamma):
        module = jg.ScalarGamma()
    elif isinstance(torch_schedule, tg.MonotoneNetGamma):
        g0, g1 = (float(g.detach()) for g in torch_schedule.endpoints())
        module = jg.MonotoneNetGamma(g0, g1, learn_endpoints=torch_schedule.learn_endpoints,
                                     features=torch_schedule.features)
    else:
        raise TypeError(f"gamma_twin: no Flax twin known for {type(torch_schedule).__name__}; expected a γ schedule "
                        "of ppl_diffusion.gamma")
    pure = gamma_params_from_torch_state(module, torch_schedule.state_dict())
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
    return module


__all__ = ["flax_twin", "from_torch", "gamma_params_from_torch_state", "gamma_twin", "load_torch_state",
           "mlp_from_torch", "mlp_to_torch", "params_from_torch_state", "to_torch", "torch_state_from_gamma_params",
           "torch_state_from_params"]
