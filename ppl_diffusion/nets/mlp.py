"""An MLP denoiser ε̂_θ(x_t, t) for low-dimensional data (2-D toys, small vectors)."""

from __future__ import annotations

import math
import warnings

from torch import Tensor, nn

from .embedding import timestep_embedding

__all__ = ["MLPDenoiser", "MLP_SETTINGS", "NetWarning", "mlp_for"]


class ResidualMLPBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.drop(self.act(z)))


class MLPDenoiser(nn.Module):
    """``net(x_t, t) -> ε̂`` with ``x_t`` of shape ``[B x ...]`` (flattened to D = prod of the rest).

    The denoiser ε̂_θ(x_t, t) for vectors: ``x_t`` ``[B x D]`` (or any ``[B x ...]``), ``t`` ``LongTensor[B]`` in
    1..T; returns ε̂ of ``x_t``'s shape. A stack of residual blocks (LayerNorm, SiLU, dropout) conditioned on a sinusoidal embedding of t,
    with a zero-initialised output layer, so that ε̂ = 0 at initialisation.

    :param int dim: D, the number of data dimensions.
    :param int width: hidden width.
    :param int depth: residual blocks.
    :param int emb_dim: features of the sinusoidal embedding of t.
    :param float dropout: dropout probability inside the residual blocks, in [0, 1).
    :param bool zero_init: zero the output layer, so that ε̂ = 0 at initialisation.
    :param bool learn_sigma: output ε̂ and a variance output v, stacked on the first event axis
        (``[B x 2D]`` for vectors, ``[B x 2C x H x W]`` for images), for ``variance="learned"``.

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets import MLPDenoiser
    >>> _ = torch.manual_seed(0)
    >>> net = MLPDenoiser(2, width=16, depth=2)
    >>> net.num_parameters
    3122
    >>> eps = net(torch.randn(4, 2), torch.tensor([1, 2, 3, 4]))
    >>> eps.shape, bool((eps == 0).all())  # zero-initialised output layer
    (torch.Size([4, 2]), True)
    """

    def __init__(self, dim: int, *, width: int = 128, depth: int = 3, emb_dim: int = 64, dropout: float = 0.0,
                 zero_init: bool = True, learn_sigma: bool = False) -> None:
        super().__init__()
        for name, value, least in [("dim", dim, 1), ("width", width, 1), ("depth", depth, 0), ("emb_dim", emb_dim, 1)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"MLPDenoiser({name}={value!r}): must be an integer >= {least}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLPDenoiser(dropout={dropout!r}): must lie in [0, 1)")
        self.dim, self.emb_dim, self.learn_sigma = dim, emb_dim, learn_sigma
        self.time = nn.Sequential(nn.Linear(emb_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualMLPBlock(width, width, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, 2 * dim if learn_sigma else dim))
        if zero_init:
            nn.init.zeros_(self.out[-1].weight)
            nn.init.zeros_(self.out[-1].bias)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """ε̂_θ(x_t, t) of ``x_t``'s shape ``[B x ...]`` (``[B x 2D]``-like, ε̂ then v, with ``learn_sigma``).

        :param torch.Tensor x_t: ``[B x ...]`` with D values per example.
        :param torch.Tensor t: the steps, ``LongTensor[B]`` in 1..T.
        """
        shape = x_t.shape
        x = x_t.reshape(shape[0], -1)  # (B, D)
        if x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser(dim={self.dim}) got x_t of shape {tuple(shape)} "
                             f"({x.shape[1]} dimensions per example)")
        emb = self.time(timestep_embedding(t, self.emb_dim, dtype=x.dtype))  # (B, width)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(h)
        return out.reshape(shape[0], 2 * shape[1], *shape[2:]) if self.learn_sigma else out.reshape(shape)

    @property
    def num_parameters(self) -> int:
        """The number of scalar parameters (weights and biases)."""
        return sum(math.prod(p.shape) for p in self.parameters())


class NetWarning(UserWarning):
    """A net that will train poorly for its data (e.g. an MLP narrower than the data); the CLI prints it as one line.

    Example:

    >>> import warnings
    >>> from ppl_diffusion.nets import NetWarning, mlp_for
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = mlp_for((1, 8, 8), width=16)  # 16 < D = 64
    >>> [w.category.__name__ for w in caught]
    ['NetWarning']
    """


#: The settings of an MLP denoiser (:class:`~ppl_diffusion.nets.mlp.MLPDenoiser`'s keyword arguments but ``dim`` and ``learn_sigma``, which
#: the data and the variance decide).
MLP_SETTINGS = ("width", "depth", "emb_dim", "dropout", "zero_init")


def check_settings(event_shape, settings: dict) -> tuple[int, ...]:
    """The event shape as a tuple; one-line errors for a bad shape or a setting not in :data:`~ppl_diffusion.nets.mlp.MLP_SETTINGS`."""
    shape = tuple(event_shape)
    if not shape or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"the MLP takes examples of a shape of positive sizes, got {list(shape)}")
    unknown = sorted(set(settings) - set(MLP_SETTINGS))
    if unknown:
        extra = " (the variance decides it: learned variances double the output)" if "learn_sigma" in unknown else ""
        raise ValueError(f"unknown MLP setting {unknown[0]!r}{extra}; the MLP's settings are {', '.join(MLP_SETTINGS)}")
    return shape


def warn_if_narrow(width: int, event_shape) -> None:
    """:class:`~ppl_diffusion.nets.mlp.NetWarning` when the MLP's ``width`` is below D = prod(``event_shape``): every hidden layer is then a
    bottleneck narrower than x_t, and the denoiser cannot pass x_t through to predict ε."""
    dim = math.prod(event_shape)
    if width < dim:
        warnings.warn(f"the MLP's width {width} is below the data's D = {dim} dimensions "
                      f"({'x'.join(map(str, event_shape))}): every hidden layer is narrower than x_t; pass --width "
                      f"{2 ** math.ceil(math.log2(2 * dim))} (width >= D)"
                      + (", or use the U-Net for square images (--net auto)"
                         if len(event_shape) == 3 and event_shape[-1] == event_shape[-2] else ""),
                      NetWarning, stacklevel=3)


def mlp_for(event_shape, *, learn_sigma: bool = False, **settings) -> MLPDenoiser:
    """The :class:`~ppl_diffusion.nets.mlp.MLPDenoiser` for examples of ``event_shape`` (D = their product), with ``settings`` (names of
    :data:`~ppl_diffusion.nets.mlp.MLP_SETTINGS`; an unknown one is refused in one line) and ``learn_sigma`` for a learned variance; warns
    when the width is below D (``warn_if_narrow``).

    :param event_shape: the shape of one example, ``(D,)`` (or any shape, flattened).
    :param bool learn_sigma: output ε̂ and the variance output v, ``[B x 2D]``.
    :param settings: :class:`~ppl_diffusion.nets.mlp.MLPDenoiser` settings by name (:data:`~ppl_diffusion.nets.mlp.MLP_SETTINGS`).
    :rtype: MLPDenoiser

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets import mlp_for
    >>> net = mlp_for((2,), width=16, learn_sigma=True)
    >>> net.dim, net.num_parameters
    (2, 4004)
    >>> net(torch.zeros(3, 2), torch.tensor([1, 5, 9])).shape
    torch.Size([3, 4])
    """
    shape = check_settings(event_shape, settings)
    net = MLPDenoiser(math.prod(shape), learn_sigma=learn_sigma, **settings)
    warn_if_narrow(net.inp.out_features, shape)
    return net
