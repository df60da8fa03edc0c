"""Denoisers in Flax NNX, layer for layer the PyTorch ones, so that weights convert both ways
(:mod:`ppl_diffusion.numpyro.convert`): :class:`~ppl_diffusion.numpyro.nets.MLPDenoiser` and
:class:`~ppl_diffusion.numpyro.nets.UNet` (with :func:`~ppl_diffusion.numpyro.nets.unet_preset`), and
:func:`~ppl_diffusion.numpyro.nets.unet_for` / :func:`~ppl_diffusion.numpyro.nets.mlp_for`, the nets for a data shape
by the PyTorch side's rule.

Mixed precision: ``dtype=jnp.bfloat16`` is the layers' compute dtype (Flax's ``dtype``; the parameters stay
float32, ``param_dtype``), the softmax of attention is taken in float32 (as torch's autocast does), and the
output is cast back to the input's dtype. ``dtype=None`` (default) computes in the parameters' float32.

Dropout is ``SlicedDropout``: Flax's, whose mask inside a training step's micro-batch
(:func:`ppl_diffusion.numpyro.distributed.micro_batch`) is drawn for the global batch and sliced to its rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..nets.embedding import check_fourier_exponents
from . import distributed as dp


def timestep_embedding(t, dim: int, max_period: float = 10000.0, dtype=jnp.float32, *, shift: float = 0.0,
                       scale: float = 1.0):
    r"""``[B]`` steps → ``[B x dim]`` features cos(s·f_i), sin(s·f_i), f_i = max_period^(−i/(dim/2)), of ``dtype``,
    at s = (t + ``shift``) · ``scale``: computed in float64 for float64 (with jax_enable_x64), else in float32 (as
    DDPM) and cast. The twin of :func:`ppl_diffusion.nets.embedding.timestep_embedding`.

    .. math:: e(s) = \big[\cos(s f_0), \dots, \cos(s f_{h-1}), \sin(s f_0), \dots, \sin(s f_{h-1})\big],
        \quad f_i = \mathrm{max\_period}^{-i/h}, \quad h = \lfloor \mathrm{dim}/2 \rfloor

    (a zero column appended for an odd ``dim``).

    :param t: steps (or any labels) ``[B]``.
    :param int dim: the number of features.
    :param float max_period: the longest period.
    :param dtype: the result's dtype.
    :returns: ``[B x dim]``.

    Example (the PyTorch twin's features):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion.nets import embedding
    >>> from ppl_diffusion.numpyro.nets import timestep_embedding
    >>> emb = timestep_embedding(jnp.array([1, 500]), 8)
    >>> twin = embedding.timestep_embedding(torch.tensor([1, 500]), 8)
    >>> emb.shape, bool(np.allclose(np.asarray(emb), twin.numpy(), atol=1e-6))
    ((2, 8), True)
    """
    half = dim // 2
    work = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=work) / half)
    s = jnp.asarray(t).astype(work)
    if shift or scale != 1.0:
        s = (s + jnp.asarray(shift, work)) * jnp.asarray(scale, work)
    args = s[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb.astype(dtype)


def fourier_features(x, exponents: Sequence[int]):
    r"""VDM's Fourier features of ``x`` ``[N x C x H x W]``, ``[N x 2CF x H x W]``: the twin of
    :func:`ppl_diffusion.nets.embedding.fourier_features` (the same channel order, the same angles x·(2^n·2π) in
    x's dtype; XLA compiles sin and cos into the program, the same bits in every process).

    .. math:: h_{c,n} = 2^n \cdot 2\pi\, x_c, \quad \text{features} = [\sin h, \cos h]

    :param x: ``[N x C x H x W]``.
    :param exponents: the F exponents n (frequencies 2^n).
    :returns: ``[N x 2CF x H x W]``.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.nets import fourier_features
    >>> fourier_features(jnp.zeros((2, 3, 4, 4)), (7, 8)).shape
    (2, 12, 4, 4)
    """
    n, c = x.shape[:2]
    w = jnp.asarray([2.0 ** k * 2.0 * math.pi for k in exponents], dtype=x.dtype)
    h = (x[:, :, None] * w[None, None, :, None, None]).reshape((n, c * len(exponents)) + tuple(x.shape[2:]))
    return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=1)


class SlicedDropout(nnx.Dropout):
    """``nnx.Dropout`` (same state, same masks), whose mask inside a :func:`~ppl_diffusion.numpyro.distributed.micro_batch`
    is drawn for the whole global batch from the same key and sliced to the micro-batch's rows: the unsplit
    step's mask, row for row (the twin of :class:`ppl_diffusion.infer.draws.SlicedDropout`)."""

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
        off = self.deterministic if deterministic is None else deterministic
        if dp.current_micro_batch() is None or off or self.rate in (0.0, 1.0):
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        else:
            key = rngs
        keep = 1.0 - self.rate
        shape = list(dp.global_rows(jnp.shape(inputs)))
        for dim in self.broadcast_dims:
            shape[dim] = 1
        mask = jax.random.bernoulli(key, p=keep, shape=tuple(shape))
        mask = jnp.broadcast_to(dp.take_rows(mask) if shape[0] != 1 else mask, jnp.shape(inputs))
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


class ResidualMLPBlock(nnx.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float, *, rngs: nnx.Rngs, dtype=None) -> None:
        self.norm = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)  # torch's default epsilon
        self.emb = nnx.Linear(emb_dim, width, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(width, width, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(width, width, dtype=dtype, rngs=rngs)
        self.drop = SlicedDropout(dropout, rngs=rngs)

    def __call__(self, h, emb):
        z = self.fc1(jax.nn.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.drop(jax.nn.silu(z)))


class MLPDenoiser(nnx.Module):
    """``net(x_t, t) -> ε̂``, the Flax twin of :class:`ppl_diffusion.nets.mlp.MLPDenoiser` (same layers, same
    names, same initial output of zero when ``zero_init``); ``dtype``: the compute dtype (see the module docstring).

    ``x_t`` ``[B x ...]`` is flattened to D = ``dim`` values per example, ``t`` ``[B]`` embedded
    (:func:`timestep_embedding`); the output has the shape of ``x_t`` (twice its channels with ``learn_sigma``).

    :param int dim: D, the dimensions of one example.
    :param int width: the hidden width.
    :param int depth: the number of residual blocks.
    :param int emb_dim: the width of the step embedding.
    :param float dropout: the dropout rate in the blocks, in [0, 1).
    :param bool zero_init: the last layer starts at zero (ε̂ = 0).
    :param bool learn_sigma: also output v for a learned variance.
    :param rngs: ``nnx.Rngs`` for the initial weights and dropout (default ``nnx.Rngs(0)``).
    :type rngs: :class:`flax.nnx.Rngs` | None
    :param dtype: the compute dtype (None: float32; ``jnp.bfloat16`` for mixed precision).

    Example:

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ppl_diffusion.numpyro import MLPDenoiser
    >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8, rngs=nnx.Rngs(0))
    >>> eps_hat = net(jnp.ones((3, 2)), jnp.array([1, 2, 3]))
    >>> eps_hat.shape, float(abs(eps_hat).max())
    ((3, 2), 0.0)
    """

    def __init__(self, dim: int, *, width: int = 128, depth: int = 3, emb_dim: int = 64, dropout: float = 0.0,
                 zero_init: bool = True, learn_sigma: bool = False, rngs: nnx.Rngs | None = None,
                 dtype=None) -> None:
        for name, value, least in [("dim", dim, 1), ("width", width, 1), ("depth", depth, 0), ("emb_dim", emb_dim, 1)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"MLPDenoiser({name}={value!r}): must be an integer >= {least}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLPDenoiser(dropout={dropout!r}): must lie in [0, 1)")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.dim, self.emb_dim, self.learn_sigma, self.dtype = dim, emb_dim, learn_sigma, dtype
        self.time_in = nnx.Linear(emb_dim, width, dtype=dtype, rngs=rngs)
        self.time_out = nnx.Linear(width, width, dtype=dtype, rngs=rngs)
        self.inp = nnx.Linear(dim, width, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([ResidualMLPBlock(width, width, dropout, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.out_norm = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(width, 2 * dim if learn_sigma else dim, dtype=dtype, rngs=rngs)
        if zero_init:  # ε̂ = 0 at initialisation, as the PyTorch net
            self.out.kernel[...] = jnp.zeros_like(self.out.kernel[...])
            self.out.bias[...] = jnp.zeros_like(self.out.bias[...])

    def __call__(self, x_t, t):
        shape = x_t.shape
        x = x_t.reshape(shape[0], -1)
        if x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser(dim={self.dim}) got x_t of shape {tuple(shape)} "
                             f"({x.shape[1]} dimensions per example)")
        emb = self.time_out(jax.nn.silu(self.time_in(timestep_embedding(t, self.emb_dim, dtype=x.dtype))))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(jax.nn.silu(self.out_norm(h))).astype(x_t.dtype)
        return out.reshape((shape[0], 2 * shape[1]) + tuple(shape[2:])) if self.learn_sigma else out.reshape(shape)


# ------------------------------------------------------------------------------------------------ U-Net
# The twin of ppl_diffusion.nets.unet, module for module and with the same attribute names where torch has
# them, computing in NHWC inside (XLA's CPU convolutions want channels last): one transpose at the input,
# one at the output. Convolutions are ``nnx.Conv`` (kernel [kh, kw, in, out]); the 1×1 convolutions
# (a residual block's skip, attention's qkv and proj_out) are ``nnx.Linear`` over the channel axis.

def _torch_unet_skeleton(kwargs: dict):
    """The PyTorch UNet of ``kwargs`` on the meta device (no memory, ~30 ms): its constructor validates the
    arguments, so that the two nets raise the same errors."""
    import torch

    from ..nets.unet import UNet as TorchUNet

    with torch.device("meta"):
        return TorchUNet(**kwargs)


def _num_groups(channels: int, num_groups: int, min_group_channels: int = 2) -> int:
    """GroupNorm's group count by the PyTorch U-Net's rule (:func:`ppl_diffusion.nets.unet.group_norm`)."""
    import torch

    from ..nets.unet import group_norm

    with torch.device("meta"):
        return group_norm(channels, num_groups, min_group_channels).num_groups


def _torch_uniform(fan_in: int):
    """PyTorch's default init of a ``Linear`` / ``Conv`` weight and bias, U(±1/√fan_in), as a Flax initializer.

    Drawn with NumPy from a seed taken off the JAX key: eager JAX draws compile once per shape (~0.1–1 s
    each on CPU, tens of seconds for a U-Net); under a trace it draws with ``jax.random.uniform``.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        if isinstance(key, jax.core.Tracer):
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key  # raw uint32 keys
        seed = np.random.SeedSequence(np.asarray(data).ravel().tolist())
        return jnp.asarray(np.random.default_rng(seed).uniform(-bound, bound, shape).astype(dtype))

    return init


def _linear(c_in: int, c_out: int, rngs: nnx.Rngs, dtype=None) -> nnx.Linear:
    init = _torch_uniform(c_in)
    return nnx.Linear(c_in, c_out, kernel_init=init, bias_init=init, dtype=dtype, rngs=rngs)


def _group_norm(channels: int, num_groups: int, rngs: nnx.Rngs, dtype=None, min_group_channels: int = 2) -> nnx.GroupNorm:
    # torch's epsilon, and its two-pass variance E[(x − E x)²] (Flax's fast E[x²] − (E x)² loses digits);
    # the statistics are float32 reductions at any compute dtype.
    return nnx.GroupNorm(channels, _num_groups(channels, num_groups, min_group_channels), epsilon=1e-5,
                         use_fast_variance=False, dtype=dtype, rngs=rngs)


def _conv3(c_in: int, c_out: int, rngs: nnx.Rngs, stride: int = 1, dtype=None) -> nnx.Conv:
    # torch's padding=1 on both sides (not "SAME", which pads a stride-2 conv only on the far side).
    init = _torch_uniform(9 * c_in)
    return nnx.Conv(c_in, c_out, (3, 3), strides=stride, padding=((1, 1), (1, 1)), kernel_init=init,
                    bias_init=init, dtype=dtype, rngs=rngs)


def _zero(module: nnx.Module) -> nnx.Module:
    for p in (module.kernel, module.bias):
        p[...] = jnp.zeros_like(p[...])
    return module


class ResBlock(nnx.Module):
    """``skip(x) + conv₂(dropout(SiLU(GN(conv₁(SiLU(GN(x))) + W·emb))))`` on ``[N x H x W x C]``; with
    ``scale_shift``, ``GN(h)·(1 + scale) + shift`` in place of ``GN(h + W·emb)``."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, *, dropout: float, num_groups: int,
                 zero_init: bool, scale_shift: bool = False, min_group_channels: int = 2, rngs: nnx.Rngs,
                 dtype=None) -> None:
        self.scale_shift = scale_shift
        self.in_norm = _group_norm(channels, num_groups, rngs, dtype, min_group_channels)
        self.in_conv = _conv3(channels, out_channels, rngs, dtype=dtype)
        self.emb = _linear(emb_channels, (2 if scale_shift else 1) * out_channels, rngs, dtype)
        self.out_norm = _group_norm(out_channels, num_groups, rngs, dtype, min_group_channels)
        self.drop = SlicedDropout(dropout, rngs=rngs)
        self.out_conv = _conv3(out_channels, out_channels, rngs, dtype=dtype)
        if zero_init:
            _zero(self.out_conv)
        self.skip = None if out_channels == channels else _linear(channels, out_channels, rngs, dtype)

    def __call__(self, x, emb):
        h = self.in_conv(jax.nn.silu(self.in_norm(x)))  # (N, H, W, C')
        e = self.emb(jax.nn.silu(emb))[:, None, None, :]  # (N, 1, 1, C' or 2C')
        if self.scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.drop(jax.nn.silu(h)))
        return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nnx.Module):
    """``x + proj(attn(qkv(GN(x))))`` over the H·W positions of ``[N x H x W x C]``. The 3C channels of
    ``qkv`` split as torch's ``reshape(n, 3, heads, C/heads, L)``: q, k, v in turn, each head contiguous."""

    def __init__(self, channels: int, *, num_heads: int, num_groups: int, zero_init: bool, rngs: nnx.Rngs,
                 dtype=None, min_group_channels: int = 2) -> None:
        self.num_heads = num_heads
        self.norm = _group_norm(channels, num_groups, rngs, dtype, min_group_channels)
        self.qkv = _linear(channels, 3 * channels, rngs, dtype)
        self.proj_out = _linear(channels, channels, rngs, dtype)
        if zero_init:
            _zero(self.proj_out)

    def __call__(self, x):
        n, height, width, c = x.shape
        d = c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(n, height * width, 3, self.num_heads, d)  # (N, L, 3, heads, d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (N, L, heads, d)
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.promote_types(q.dtype, jnp.float32))
        w = jax.nn.softmax(logits / math.sqrt(d), axis=-1).astype(q.dtype)  # (N, heads, L, L), softmax in ≥ float32
        a = jnp.einsum("nhqk,nkhd->nqhd", w, v).reshape(n, height, width, c)
        return x + self.proj_out(a)


class Downsample(nnx.Module):
    """3×3 conv with stride 2: ``[N x H x W x C] → [N x H/2 x W/2 x C]``."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype=None) -> None:
        self.op = _conv3(channels, channels, rngs, stride=2, dtype=dtype)

    def __call__(self, x):
        return self.op(x)


class Upsample(nnx.Module):
    """Nearest-neighbour ×2 then a 3×3 conv: ``[N x H x W x C] → [N x 2H x 2W x C]``."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype=None) -> None:
        self.conv = _conv3(channels, channels, rngs, dtype=dtype)

    def __call__(self, x):
        n, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)
        return self.conv(x)


def _run(block, x, emb):
    for layer in block:
        x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
    return x


class UNet(nnx.Module):
    """``net(x_t, t) -> ε̂``, the Flax twin of :class:`ppl_diffusion.nets.unet.UNet`: the same keyword arguments,
    validation errors, layers and math. ``x_t`` is ``[N x C x H x W]`` (NCHW, as the diffusion programs'
    event shape (C, H, W)), ``t`` int ``[N]``; returns ``[N x C_out x H x W]``. Computes in NHWC inside.

    Parameters are initialised as PyTorch does (weights and biases U(±1/√fan_in), GroupNorm 1 and 0; the
    draws differ), and with ``zero_init`` the same layers are zeroed, so ε̂ = 0 at initialisation.
    ``.eval()`` / ``.train()`` switch dropout off / on (on after construction, as torch). ``dtype``: the
    compute dtype (``jnp.bfloat16`` for mixed precision; see the module docstring). ``use_checkpoint`` (a runtime
    attribute, default False, as on the PyTorch net): each block under ``nnx.remat``, its activations recomputed in
    the backward pass.

    :param int in_channels: C of the images.
    :param int model_channels: the channels of the first level.
    :param int image_size: S of the ``[C x S x S]`` images.
    :param channel_mult: the channel multiplier of each level.
    :param int num_res_blocks: residual blocks per level.
    :param attention_resolutions: the image sizes with self-attention.
    :param rngs: ``nnx.Rngs`` (default ``nnx.Rngs(0)``).
    :type rngs: :class:`flax.nnx.Rngs` | None

    The other keywords are those of :class:`ppl_diffusion.nets.unet.UNet`.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro import UNet
    >>> net = UNet(in_channels=1, model_channels=8, image_size=4, channel_mult=(1,), num_res_blocks=1,
    ...            attention_resolutions=(), num_groups=4)
    >>> eps_hat = net(jnp.zeros((2, 1, 4, 4)), jnp.array([1, 2]))
    >>> eps_hat.shape, float(abs(eps_hat).max())   # ε̂ = 0 at initialisation
    ((2, 1, 4, 4), 0.0)
    """

    use_checkpoint: bool = False

    def __init__(self, *, in_channels: int, model_channels: int, image_size: int, out_channels: int | None = None,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (16,), dropout: float = 0.0, num_heads: int = 1,
                 num_head_channels: int | None = None, learn_sigma: bool = False, use_scale_shift_norm: bool = False,
                 num_groups: int = 32, zero_init: bool = True, min_group_channels: int = 2,
                 timestep_shift: float = 0.0, timestep_scale: float = 1.0, fourier_features: Sequence[int] = (),
                 rngs: nnx.Rngs | None = None, dtype=None) -> None:
        # The PyTorch constructor checks the arguments, so both nets raise the same errors.
        _torch_unet_skeleton(dict(
            in_channels=in_channels, model_channels=model_channels, image_size=image_size,
            out_channels=out_channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions, dropout=dropout, num_heads=num_heads,
            num_head_channels=num_head_channels, learn_sigma=learn_sigma, use_scale_shift_norm=use_scale_shift_norm,
            num_groups=num_groups, zero_init=False, min_group_channels=min_group_channels,
            timestep_shift=timestep_shift, timestep_scale=timestep_scale, fourier_features=fourier_features))
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        out_channels = in_channels if out_channels is None else out_channels
        channel_mult, attention_resolutions = tuple(channel_mult), tuple(attention_resolutions)
        levels = len(channel_mult)
        sizes = [image_size // 2 ** level for level in range(levels)]
        self.in_channels, self.model_channels, self.image_size = in_channels, model_channels, image_size
        self.eps_channels = out_channels
        self.out_channels = 2 * out_channels if learn_sigma else out_channels
        self.learn_sigma, self.dtype = learn_sigma, dtype
        self.channel_mult, self.attention_resolutions = channel_mult, attention_resolutions
        self.timestep_shift, self.timestep_scale = float(timestep_shift), float(timestep_scale)
        self.fourier_features = check_fourier_exponents(fourier_features, "UNet(fourier_features)")

        def res(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, dropout=dropout, num_groups=num_groups, zero_init=zero_init,
                            scale_shift=use_scale_shift_norm, min_group_channels=min_group_channels, rngs=rngs,
                            dtype=dtype)

        def attn(ch: int) -> AttentionBlock:
            heads = ch // num_head_channels if num_head_channels is not None else num_heads
            return AttentionBlock(ch, num_heads=heads, num_groups=num_groups, zero_init=zero_init, rngs=rngs,
                                  dtype=dtype, min_group_channels=min_group_channels)

        emb_dim = 4 * model_channels
        self.time_in = _linear(model_channels, emb_dim, rngs, dtype)
        self.time_out = _linear(emb_dim, emb_dim, rngs, dtype)

        blocks = [[_conv3(in_channels * (1 + 2 * len(self.fourier_features)), model_channels, rngs, dtype=dtype)]]
        skip_channels, ch = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if sizes[level] in attention_resolutions:
                    layers.append(attn(ch))
                blocks.append(layers)
                skip_channels.append(ch)
            if level != levels - 1:
                blocks.append([Downsample(ch, rngs=rngs, dtype=dtype)])
                skip_channels.append(ch)
        self.input_blocks = nnx.List([nnx.List(layers) for layers in blocks])

        self.middle_block = nnx.List([res(ch, ch), attn(ch), res(ch, ch)])

        blocks = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if sizes[level] in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch, rngs=rngs, dtype=dtype))
                blocks.append(layers)
        self.output_blocks = nnx.List([nnx.List(layers) for layers in blocks])

        self.out_norm = _group_norm(ch, num_groups, rngs, dtype, min_group_channels)
        self.out = _conv3(ch, self.out_channels, rngs, dtype=dtype)
        if zero_init:
            _zero(self.out)

    def __call__(self, x_t, t):
        expected = (self.in_channels, self.image_size, self.image_size)
        shape = tuple(jnp.shape(x_t))
        if len(shape) != 4 or shape[1:] != expected:
            raise ValueError(f"UNet(in_channels={self.in_channels}, image_size={self.image_size}) expects x_t of "
                             f"shape [N x {expected[0]} x {expected[1]} x {expected[2]}], got {shape}")
        if not hasattr(t, "shape") or tuple(t.shape) != (shape[0],):
            got = tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
            raise ValueError(f"UNet expects t of shape [N] = ({shape[0]},), one step per image, got {got}")
        emb = self.time_out(jax.nn.silu(self.time_in(timestep_embedding(
            t, self.model_channels, dtype=x_t.dtype, shift=self.timestep_shift, scale=self.timestep_scale))))
        h = x_t if not self.fourier_features else jnp.concatenate(
            [x_t, fourier_features(x_t, self.fourier_features)], axis=1)
        h = jnp.transpose(h, (0, 2, 3, 1))  # NCHW → NHWC, once
        run = nnx.remat(_run) if self.use_checkpoint else _run  # a block's activations recomputed in the backward
        skips = []
        for block in self.input_blocks:
            h = run(block, h, emb)
            skips.append(h)
        h = run(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = run(block, jnp.concatenate([h, skips.pop()], axis=-1), emb)
        h = self.out(jax.nn.silu(self.out_norm(h))).astype(x_t.dtype)
        return jnp.transpose(h, (0, 3, 1, 2))  # NHWC → NCHW, once

    @property
    def num_parameters(self) -> int:
        """The number of parameters (the PyTorch twin's count)."""
        return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(self, nnx.Param)))


def unet_preset(name: str, *, rngs: nnx.Rngs | None = None, **overrides) -> UNet:
    """The U-Net preset ``name`` (a key of ``ppl_diffusion.nets.unet.UNET_PRESETS``) in Flax, with keyword
    ``overrides``. Example: ``unet_preset("digits", learn_sigma=True)``.

    :param str name: the preset.
    :param rngs: ``nnx.Rngs`` (default ``nnx.Rngs(0)``).
    :type rngs: :class:`flax.nnx.Rngs` | None
    :param overrides: keywords of :class:`UNet`.
    :raises ValueError: for an unknown preset, listing the known ones.

    Example (the PyTorch preset's parameter count):

    >>> from ppl_diffusion.nets import unet_preset as torch_preset
    >>> from ppl_diffusion.numpyro import unet_preset
    >>> net = unet_preset("digits", model_channels=8)
    >>> net.num_parameters == sum(p.numel() for p in torch_preset("digits", model_channels=8).parameters())
    True
    """
    from ..nets.unet import UNET_PRESETS

    if name not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; known presets: {', '.join(sorted(UNET_PRESETS))}")
    return UNet(**{**UNET_PRESETS[name], **overrides}, rngs=rngs)


def unet_for(event_shape, *, preset: str | None = None, learn_sigma: bool = False, rngs: nnx.Rngs | None = None,
             dtype=None, **overrides) -> UNet:
    """The U-Net for images of ``event_shape`` ``[C x S x S]`` in Flax: the settings of
    :func:`ppl_diffusion.nets.unet.unet_config` (the same rule, presets and errors), so the same parameters as the
    PyTorch ``unet_for``. Example: ``unet_for((3, 16, 16), model_channels=32)``.

    :param event_shape: ``(C, S, S)``.
    :param str preset: a preset of ``ppl_diffusion.nets.unet.UNET_PRESETS`` to start from, or None.
    :param bool learn_sigma: also output v for a learned variance.
    :param rngs: ``nnx.Rngs`` (default ``nnx.Rngs(0)``).
    :type rngs: :class:`flax.nnx.Rngs` | None
    :param dtype: the compute dtype.
    :param overrides: keywords of :class:`UNet`.

    Example:

    >>> from ppl_diffusion.numpyro import unet_for
    >>> net = unet_for((1, 8, 8), model_channels=8, learn_sigma=True)
    >>> net.image_size, net.out_channels
    (8, 2)
    """
    from ..nets.unet import unet_config

    return UNet(**unet_config(event_shape, preset=preset, **overrides), learn_sigma=learn_sigma, rngs=rngs, dtype=dtype)


def mlp_for(event_shape, *, learn_sigma: bool = False, rngs: nnx.Rngs | None = None, dtype=None,
            **settings) -> MLPDenoiser:
    """The MLP denoiser for examples of ``event_shape`` in Flax, the twin of :func:`ppl_diffusion.nets.mlp.mlp_for`
    (the same settings, errors and warning when the width is below D).

    :param event_shape: the shape of one example.
    :param bool learn_sigma: also output v for a learned variance.
    :param rngs: ``nnx.Rngs`` (default ``nnx.Rngs(0)``).
    :type rngs: :class:`flax.nnx.Rngs` | None
    :param dtype: the compute dtype.
    :param settings: ``width``, ``depth``, ``emb_dim``, ``dropout``, ``zero_init`` (the PyTorch ``mlp_for``'s).

    Example:

    >>> from ppl_diffusion.numpyro import mlp_for
    >>> net = mlp_for((2,), width=16, depth=1, emb_dim=8, learn_sigma=True)
    >>> net.dim, net.out.out_features   # ε̂ and v
    (2, 4)
    """
    from ..nets.mlp import check_settings, warn_if_narrow

    shape = check_settings(event_shape, settings)
    net = MLPDenoiser(math.prod(shape), learn_sigma=learn_sigma, rngs=rngs, dtype=dtype, **settings)
    warn_if_narrow(net.inp.out_features, shape)
    return net


__all__ = ["MLPDenoiser", "UNet", "fourier_features", "mlp_for", "timestep_embedding", "unet_for", "unet_preset"]
