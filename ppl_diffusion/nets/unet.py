"""The DDPM / improved-DDPM U-Net denoiser ε̂_θ(x_t, t) for images.

Follows Ho et al. (2020) and openai/improved-diffusion ``unet.py``: a sinusoidal embedding of t fed
through a two-layer MLP of width 4·``model_channels``; residual blocks (GroupNorm → SiLU → conv, plus a
projection of the time embedding, then GroupNorm → SiLU → dropout → zero-initialised conv); single- or
multi-head self-attention at chosen resolutions; strided-conv downsampling and nearest + conv
upsampling; skip connections concatenated on the way up; a zero-initialised output conv, so ε̂ = 0 at
initialisation. A plain ``torch.nn.Module``: it knows nothing of Pyro.

References:

1. J. Ho, A. Jain, P. Abbeel. Denoising Diffusion Probabilistic Models. NeurIPS 2020.
2. A. Nichol, P. Dhariwal. Improved Denoising Diffusion Probabilistic Models. ICML 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embedding import check_fourier_exponents, timestep_embedding
from .embedding import fourier_features as input_features
from .remat import checkpoint_call

__all__ = ["UNET_PRESETS", "UNET_SETTINGS", "UNet", "default_attention", "default_channel_mult", "unet_config",
           "unet_for", "unet_preset"]


def group_norm(channels: int, num_groups: int, min_group_channels: int = 2) -> nn.GroupNorm:
    """GroupNorm with ``num_groups`` groups (32 in DDPM), or fewer for narrow layers.

    The group count is the largest divisor of ``channels`` that is at most ``num_groups`` and leaves at
    least ``min_group_channels`` channels per group (default two: a one-channel group subtracts its own mean,
    which would erase the per-channel time embedding that a residual block adds just before its second norm;
    improved-diffusion's nets use 32 groups whatever the width, which is ``min_group_channels=1``).
    """
    most = max(1, min(num_groups, channels // min_group_channels))
    return nn.GroupNorm(next(g for g in range(most, 0, -1) if channels % g == 0), channels)


def zero_(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` in place and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``skip(x) + conv₂(dropout(SiLU(GN(conv₁(SiLU(GN(x))) + W·emb))))``: ``[N x C x H x W] → [N x C' x H x W]``.

    With ``scale_shift`` (improved DDPM's ``use_scale_shift_norm``) the embedding gives a scale and a
    shift instead: ``GN(h) · (1 + scale) + shift`` in place of ``GN(h + W·emb)``. ``conv₂`` is
    zero-initialised (when ``zero_init``), so the block is the identity (or its 1×1 skip conv) at
    initialisation.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, *, dropout: float,
                 num_groups: int, zero_init: bool, scale_shift: bool = False, min_group_channels: int = 2) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(group_norm(channels, num_groups, min_group_channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels))
        out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.out_layers = nn.Sequential(group_norm(out_channels, num_groups, min_group_channels), nn.SiLU(),
                                        nn.Dropout(dropout),
                                        zero_(out_conv) if zero_init else out_conv)
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)  # (N, C', H, W)
        e = self.emb_layers(emb)[:, :, None, None]  # (N, C' or 2C', 1, 1), broadcast over H, W
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H·W positions: ``x + proj(attn(qkv(GN(x))))``, ``[N x C x H x W]`` kept.

    ``qkv`` and ``proj`` are 1×1 convolutions (linear maps per position, as in DDPM); ``proj`` is
    zero-initialised (when ``zero_init``). Channels are split into ``num_heads`` heads.
    """

    def __init__(self, channels: int, *, num_heads: int, num_groups: int, zero_init: bool,
                 min_group_channels: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(channels, num_groups, min_group_channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        proj = nn.Conv1d(channels, channels, 1)
        self.proj_out = zero_(proj) if zero_init else proj

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        h = x.reshape(n, c, height * width)  # (N, C, L)
        qkv = self.qkv(self.norm(h))  # (N, 3C, L)
        q, k, v = qkv.reshape(n, 3, self.num_heads, c // self.num_heads, -1).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, C/heads), softmax(q·k/√d) v
        a = a.transpose(-1, -2).reshape(n, c, -1)  # (N, C, L)
        return (h + self.proj_out(a)).reshape(n, c, height, width)


class Downsample(nn.Module):
    """3×3 conv with stride 2: ``[N x C x H x W] → [N x C x H/2 x W/2]`` (H, W even)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv: ``[N x C x H x W] → [N x C x 2H x 2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A sequence of layers, passing the time embedding to the residual blocks among them."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """``net(x_t, t) -> ε̂``: ``x_t`` of shape ``[N x C x H x W]`` (H = W = ``image_size``), ``t`` a
    LongTensor ``[N]`` of steps in 1..T. Returns ``[N x C_out x H x W]``.

    With ``learn_sigma``, C_out = 2·``out_channels``: the first ``out_channels`` are ε̂ and the rest the
    network's variance output v (improved DDPM interpolates log σ_t² between log β_t and log β̃_t with it).

    Levels: ``len(channel_mult)``, level ℓ at spatial size ``image_size / 2^ℓ`` with
    ``model_channels · channel_mult[ℓ]`` channels and ``num_res_blocks`` residual blocks on the way down
    (``num_res_blocks + 1`` on the way up, one per skip). The middle (lowest resolution) is
    ResBlock → attention → ResBlock.

    :param int in_channels: C, the image channels.
    :param int model_channels: base channel count (128 in DDPM's CIFAR-10 model).
    :param int out_channels: channels of ε̂; defaults to ``in_channels``.
    :param channel_mult: channel multiplier per level.
    :param int num_res_blocks: residual blocks per level on the way down.
    :param attention_resolutions: spatial sizes (pixels) at which attention follows each residual
        block, e.g. ``(16,)`` for DDPM's CIFAR-10 model. Each must be the size of some level.
    :param float dropout: dropout probability inside the residual blocks.
    :param int num_heads: attention heads (DDPM: 1).
    :param int num_head_channels: if given, channels per head instead (heads = channels / this).
    :param bool learn_sigma: double the output channels for a learned variance.
    :param bool use_scale_shift_norm: condition the residual blocks on t by a scale and shift of the
        second GroupNorm (improved DDPM) instead of adding the embedding before it (DDPM).
    :param int image_size: H = W of the input, checked in ``forward``; must be divisible by
        2^(levels − 1).
    :param int num_groups: GroupNorm groups (32 in DDPM); a layer with fewer than 2·num_groups channels,
        or whose channels it does not divide, uses the largest divisor that leaves two channels a group.
    :param bool zero_init: zero-initialise the last conv of every residual branch and the output conv,
        so that every block is the identity and ε̂ = 0 at initialisation (as DDPM does).
    :param int min_group_channels: the fewest channels a GroupNorm group may hold (default 2, see
        ``group_norm``); 1 gives every layer ``num_groups`` groups, as improved-diffusion's nets have.
    :param float timestep_shift: the time embedding is taken at ``(t + timestep_shift) · timestep_scale``;
    :param float timestep_scale: 0 and 1 (the step t itself) for nets trained here. A net trained elsewhere at
        another step label keeps its own: improved-diffusion's at its 0-based index t − 1 (shift −1), times
        1000 / T when trained with ``rescale_timesteps`` (:mod:`ppl_diffusion.interop.improved_diffusion`).
    :param fourier_features: exponents n (distinct integers in 0..16) of VDM's Fourier features: sin and cos of
        2^n·2π·x_t per input channel (:func:`~ppl_diffusion.nets.embedding.fourier_features`) are concatenated to
        x_t before the first conv, which then reads C·(1 + 2F) channels. Default ``()``: none, and the net is the
        one without the option, parameter for parameter. :func:`~ppl_diffusion.nets.embedding.fourier_exponents`
        picks them from the data's grey-level spacing ((6, 7) for images using all 256 levels, (2, 3) for the
        17-level digits).

    .. attribute:: use_checkpoint

        ``False`` (default); ``True`` recomputes each block (a level's residual block with its attention, the
        middle block, an up-sampling block) in the backward pass instead of keeping its activations
        (improved-diffusion's ``use_checkpoint``; :mod:`ppl_diffusion.nets.remat`). A runtime setting, not a
        constructor argument: it changes memory and time, not the net (same parameters, state dict and
        numbers). ``GaussianDiffusion(checkpoint_activations="blocks")`` sets it.

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets import UNet
    >>> _ = torch.manual_seed(0)
    >>> net = UNet(in_channels=1, model_channels=8, image_size=8, channel_mult=(1, 2), attention_resolutions=(4,))
    >>> net.num_parameters
    64193
    >>> x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 10])
    >>> eps = net(x_t, t)
    >>> eps.shape, bool((eps == 0).all())  # zero-initialised output: eps_hat = 0 before training
    (torch.Size([2, 1, 8, 8]), True)
    >>> sigma_net = UNet(in_channels=1, model_channels=8, image_size=8, channel_mult=(1, 2),
    ...                  attention_resolutions=(4,), learn_sigma=True)
    >>> sigma_net(x_t, t).shape  # eps_hat and v stacked on the channel axis
    torch.Size([2, 2, 8, 8])
    """

    use_checkpoint: bool = False

    def __init__(
        self,
        *,
        in_channels: int,
        model_channels: int,
        image_size: int,
        out_channels: int | None = None,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        num_heads: int = 1,
        num_head_channels: int | None = None,
        learn_sigma: bool = False,
        use_scale_shift_norm: bool = False,
        num_groups: int = 32,
        zero_init: bool = True,
        min_group_channels: int = 2,
        timestep_shift: float = 0.0,
        timestep_scale: float = 1.0,
        fourier_features: Sequence[int] = (),
    ) -> None:
        super().__init__()
        fourier_features = check_fourier_exponents(fourier_features, "UNet(fourier_features)")
        out_channels = in_channels if out_channels is None else out_channels
        channel_mult, attention_resolutions = tuple(channel_mult), tuple(attention_resolutions)
        for name, value in [("in_channels", in_channels), ("model_channels", model_channels),
                            ("out_channels", out_channels), ("image_size", image_size),
                            ("num_res_blocks", num_res_blocks), ("num_heads", num_heads),
                            ("num_groups", num_groups), ("min_group_channels", min_group_channels)]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNet({name}={value!r}): must be a positive integer")
        if not channel_mult or any(not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"UNet(channel_mult={channel_mult}): need at least one positive integer multiplier")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet(dropout={dropout}): must lie in [0, 1)")
        for name, value in [("timestep_shift", timestep_shift), ("timestep_scale", timestep_scale)]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"UNet({name}={value!r}): must be a finite number")
        levels = len(channel_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(
                f"UNet(image_size={image_size}) with {levels} levels (channel_mult={channel_mult}) halves the "
                f"size {levels - 1} times, so image_size must be divisible by 2^{levels - 1} = {2 ** (levels - 1)}; "
                "use fewer levels or pad the images")
        sizes = [image_size // 2 ** level for level in range(levels)]
        unknown = [r for r in attention_resolutions if r not in sizes]
        if unknown:
            raise ValueError(f"UNet(attention_resolutions={attention_resolutions}): {unknown} is not the size of "
                             f"any level; the levels are {sizes} pixels wide")

        self.in_channels, self.model_channels, self.image_size = in_channels, model_channels, image_size
        self.eps_channels = out_channels
        self.out_channels = 2 * out_channels if learn_sigma else out_channels
        self.learn_sigma = learn_sigma
        self.channel_mult, self.attention_resolutions = channel_mult, attention_resolutions
        self.min_group_channels = min_group_channels
        self.timestep_shift, self.timestep_scale = float(timestep_shift), float(timestep_scale)
        self.fourier_features = fourier_features  # exponents n of the input's features sin, cos(2^n·2π·x_t)

        def heads(ch: int) -> int:
            n = ch // num_head_channels if num_head_channels is not None else num_heads
            if n < 1 or ch % n or (num_head_channels is not None and ch % num_head_channels):
                raise ValueError(f"UNet: an attention layer has {ch} channels, which num_heads={num_heads} / "
                                 f"num_head_channels={num_head_channels} does not split evenly")
            return n

        def res(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, dropout=dropout, num_groups=num_groups, zero_init=zero_init,
                            scale_shift=use_scale_shift_norm, min_group_channels=min_group_channels)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads=heads(ch), num_groups=num_groups, zero_init=zero_init,
                                  min_group_channels=min_group_channels)

        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        # Down path: every block's output is kept as a skip for the up path.
        conv_in = nn.Conv2d(in_channels * (1 + 2 * len(fourier_features)), model_channels, 3, padding=1)
        self.input_blocks = nn.ModuleList([EmbedSequential(conv_in)])
        skip_channels, ch = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if sizes[level] in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != levels - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        # Up path: num_res_blocks + 1 blocks per level, each consuming one skip.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if sizes[level] in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(EmbedSequential(*layers))

        out_conv = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        self.out = nn.Sequential(group_norm(ch, num_groups, min_group_channels), nn.SiLU(),
                                 zero_(out_conv) if zero_init else out_conv)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """ε̂_θ(x_t, t) (and, with ``learn_sigma``, the variance output v after it on the channel axis).

        :param torch.Tensor x_t: the noisy images ``[N x C x H x W]``.
        :param torch.Tensor t: the steps, ``LongTensor[N]`` in 1..T.
        :returns: ``[N x C_out x H x W]``.
        :raises ValueError: for an ``x_t`` or a ``t`` of another shape.
        """
        expected = (self.in_channels, self.image_size, self.image_size)
        if x_t.dim() != 4 or tuple(x_t.shape[1:]) != expected:
            raise ValueError(f"UNet(in_channels={self.in_channels}, image_size={self.image_size}) expects x_t of "
                             f"shape [N x {expected[0]} x {expected[1]} x {expected[2]}], got {tuple(x_t.shape)}")
        if not torch.is_tensor(t) or t.shape != (x_t.shape[0],):
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"UNet expects t of shape [N] = ({x_t.shape[0]},), one step per image, got {got}")
        emb = self.time_embed(timestep_embedding(t, self.model_channels, dtype=x_t.dtype, shift=self.timestep_shift,
                                                 scale=self.timestep_scale))  # (N, 4·mc)
        run = checkpoint_call if self.use_checkpoint else (lambda block, h, e: block(h, e))
        skips = []
        h = x_t if not self.fourier_features else torch.cat([x_t, input_features(x_t, self.fourier_features)], dim=1)
        for block in self.input_blocks:
            h = run(block, h, emb)
            skips.append(h)
        h = run(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = run(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)  # (N, C_out, H, W)

    @property
    def num_parameters(self) -> int:
        """The number of scalar parameters (weights and biases)."""
        return sum(math.prod(p.shape) for p in self.parameters())


#: Presets by name (``cifar10``, ``digits``, ``mnist``), each the keyword arguments of :class:`~ppl_diffusion.nets.unet.UNet`;
#: :func:`~ppl_diffusion.nets.unet.unet_preset` builds one.
UNET_PRESETS: dict[str, dict] = {
    # DDPM's CIFAR-10 model (Ho et al. 2020, appendix B): 35.7M parameters.
    "cifar10": dict(in_channels=3, image_size=32, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                    attention_resolutions=(16,), dropout=0.1),
    # sklearn's 8×8 digits: two levels (8 → 4), attention at 4×4 (and in the middle). The improved-diffusion
    # peer of the quality bar: its scale-shift norm gives its 4.30M parameters with learn_sigma=True.
    "digits": dict(in_channels=1, image_size=8, model_channels=64, channel_mult=(1, 2), num_res_blocks=2,
                   attention_resolutions=(4,), dropout=0.1, use_scale_shift_norm=True),
    # MNIST 28×28: three levels (28 → 14 → 7), attention at 14×14 (half size, like CIFAR's) and at 7 in the middle.
    "mnist": dict(in_channels=1, image_size=28, model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                  attention_resolutions=(14,), dropout=0.1),
}


def unet_preset(name: str, **overrides) -> UNet:
    """The U-Net preset ``name`` (a key of :data:`~ppl_diffusion.nets.unet.UNET_PRESETS`), with keyword ``overrides`` to ``UNet``.

    :param str name: ``"cifar10"``, ``"digits"`` or ``"mnist"``.
    :param overrides: :class:`~ppl_diffusion.nets.unet.UNet` keyword arguments replacing the preset's.

    Example:

    >>> from ppl_diffusion.nets import unet_preset
    >>> net = unet_preset("digits", model_channels=8)  # 1x8x8 images, scale-shift norm, attention at 4x4
    >>> net.image_size, net.channel_mult, net.num_parameters
    (8, (1, 2), 69209)
    """
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; known presets: {', '.join(sorted(UNET_PRESETS))}")
    return UNet(**{**UNET_PRESETS[name], **overrides})


# ------------------------------------------------------------------------------------------ by the data's shape
# improved-diffusion's ``create_model`` fixes channel_mult by image size (guided-diffusion adds 128); the sizes in
# between and below follow :func:`~ppl_diffusion.nets.unet.default_channel_mult`'s rule.
IMPROVED_DIFFUSION_MULT: dict[int, tuple[int, ...]] = {32: (1, 2, 2, 2), 64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4),
                                                        256: (1, 1, 2, 2, 4, 4)}
#: The settings of a U-Net (:class:`~ppl_diffusion.nets.unet.UNet`'s keyword arguments, but ``learn_sigma``, which the variance decides).
UNET_SETTINGS = ("in_channels", "model_channels", "image_size", "out_channels", "channel_mult", "num_res_blocks",
                 "attention_resolutions", "dropout", "num_heads", "num_head_channels", "use_scale_shift_norm",
                 "num_groups", "zero_init", "min_group_channels", "timestep_shift", "timestep_scale", "fourier_features")


def default_channel_mult(image_size: int) -> tuple[int, ...]:
    """channel_mult for ``image_size`` pixels: improved-diffusion's for 32, 64 and 256 (guided-diffusion's for
    128); otherwise one level, then one more (×2 channels) per halving while the size is even and its half at
    least 4 pixels, up to four levels: 8 → (1, 2), 12 → (1, 2), 16 → (1, 2, 2), 20 → (1, 2, 2),
    24 → (1, 2, 2), 28 → (1, 2, 2), 48 → (1, 2, 2, 2), 96 → (1, 2, 2, 2); sizes that cannot be halved (7, 15) get
    one level.

    :param int image_size: H = W of the images.

    Example:

    >>> from ppl_diffusion.nets import default_channel_mult
    >>> default_channel_mult(8), default_channel_mult(28), default_channel_mult(64), default_channel_mult(7)
    ((1, 2), (1, 2, 2), (1, 2, 3, 4), (1,))
    """
    if image_size in IMPROVED_DIFFUSION_MULT:
        return IMPROVED_DIFFUSION_MULT[image_size]
    size, halvings = image_size, 0
    while size % 2 == 0 and size // 2 >= 4 and halvings < 3:
        size, halvings = size // 2, halvings + 1
    return (1,) + (2,) * halvings


def default_attention(image_size: int, channel_mult: Sequence[int]) -> tuple[int, ...]:
    """Attention resolutions (pixels) for a U-Net of ``channel_mult`` on ``image_size`` pixels: below 64 pixels the
    second level, half the image (DDPM's CIFAR-10 model: 16 of 32; the presets); from 64 up the levels of at most
    16 pixels (improved-diffusion's "16,8" at 64, 128 and 256), or the lowest level if none is; none with one
    level. The middle block attends in every U-Net.

    :param int image_size: H = W of the images.
    :param channel_mult: the channel multiplier of each level.

    Example:

    >>> from ppl_diffusion.nets import default_attention
    >>> default_attention(32, (1, 2, 2, 2)), default_attention(64, (1, 2, 3, 4)), default_attention(8, (1,))
    ((16,), (16, 8), ())
    """
    levels = [image_size // 2 ** level for level in range(len(channel_mult))]
    if len(levels) == 1:
        return ()
    if image_size < 64:
        return (levels[1],)
    return tuple(s for s in levels if s <= 16) or (levels[-1],)


def square_image_shape(event_shape, what: str) -> tuple[int, int]:
    """(C, S) of an image event shape ``(C, S, S)``; a one-line error naming ``what`` (the net) for vectors and for
    non-square images (the U-Net's levels and attention resolutions are square sizes; crop or pad the images)."""
    shape = tuple(event_shape)
    if len(shape) != 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"{what} takes images of shape [C x H x W]; the data has examples of shape {list(shape)}: "
                         "use --net mlp (or auto) for vectors")
    c, h, w = shape
    if h != w:
        side = min(h, w)
        raise ValueError(f"{what} takes square images; the data's are {h}x{w} (height x width): crop or pad them to "
                         f"{side}x{side} or {max(h, w)}x{max(h, w)}, or use --net mlp")
    return c, h


def unet_config(event_shape, *, preset: str | None = None, **overrides) -> dict:
    """The :class:`~ppl_diffusion.nets.unet.UNet` keyword arguments (but ``learn_sigma``) for images of ``event_shape`` ``(C, S, S)``.

    With ``preset`` (a key of :data:`~ppl_diffusion.nets.unet.UNET_PRESETS`) its settings, which must be for this shape; without, the
    preset of this shape if there is one (digits 1×8×8, mnist 1×28×28, cifar10 3×32×32), else the rule:
    ``model_channels`` 128 from 32 pixels up (improved-diffusion's default), 64 below; ``channel_mult`` by
    :func:`~ppl_diffusion.nets.unet.default_channel_mult`; ``attention_resolutions`` by :func:`~ppl_diffusion.nets.unet.default_attention` for that channel_mult;
    two residual blocks a level, dropout 0.1 (DDPM's CIFAR-10), ``use_scale_shift_norm`` (improved DDPM); the
    rest :class:`~ppl_diffusion.nets.unet.UNet`'s defaults. ``overrides`` (names of :data:`~ppl_diffusion.nets.unet.UNET_SETTINGS`) replace any of them; an unknown
    name is refused in one line listing the known ones. Non-square images are refused (crop or pad them).

    :param event_shape: the images' shape ``(C, S, S)``.
    :param str preset: a key of :data:`~ppl_diffusion.nets.unet.UNET_PRESETS`, or ``None``.
    :param overrides: settings (names of :data:`~ppl_diffusion.nets.unet.UNET_SETTINGS`) that replace the preset's or the rule's.
    :rtype: dict

    Example:

    >>> from ppl_diffusion.nets import unet_config
    >>> unet_config((3, 16, 16), model_channels=8)  # no preset of this shape: the rule
    {'in_channels': 3, 'image_size': 16, 'model_channels': 8, 'channel_mult': (1, 2, 2), 'num_res_blocks': 2,
     'attention_resolutions': (8,), 'dropout': 0.1, 'use_scale_shift_norm': True}
    """
    if preset is not None:
        if preset not in UNET_PRESETS:
            raise ValueError(f"unknown U-Net preset {preset!r}; known presets: {', '.join(sorted(UNET_PRESETS))}")
        p = UNET_PRESETS[preset]
        want = (p["in_channels"], p["image_size"], p["image_size"])
        if tuple(event_shape) != want:
            fits = [n for n, q in UNET_PRESETS.items()
                    if (q["in_channels"], q["image_size"], q["image_size"]) == tuple(event_shape)]
            fix = (f"use --net {fits[0]}" if fits else "use --net mlp" if len(tuple(event_shape)) != 3 else
                   "use --net auto (a U-Net sized for the data)")
            raise ValueError(f"net preset {preset!r} expects examples of shape {list(want)} but the data has "
                             f"{list(event_shape)}; {fix}")
    c, size = square_image_shape(event_shape, "the U-Net")
    unknown = sorted(set(overrides) - set(UNET_SETTINGS))
    if unknown:
        extra = " (the variance decides it: learned variances double the output)" if "learn_sigma" in unknown else ""
        raise ValueError(f"unknown U-Net setting {unknown[0]!r}{extra}; the U-Net's settings are "
                         f"{', '.join(UNET_SETTINGS)}")
    for key, want in (("in_channels", c), ("image_size", size)):
        if key in overrides and overrides[key] != want:
            raise ValueError(f"U-Net setting {key} = {overrides[key]!r} but the data's images are "
                             f"{c}x{size}x{size}; drop {key} (the data decides it)")
    if preset is None:
        preset = next((n for n, p in UNET_PRESETS.items() if (p["in_channels"], p["image_size"]) == (c, size)), None)
    if preset is not None:
        base = dict(UNET_PRESETS[preset])
        if "channel_mult" in overrides and "attention_resolutions" not in overrides:
            base["attention_resolutions"] = default_attention(size, overrides["channel_mult"])
        return {**base, **overrides}
    mult = tuple(overrides.get("channel_mult", default_channel_mult(size)))
    base = dict(in_channels=c, image_size=size, model_channels=128 if size >= 32 else 64, channel_mult=mult,
                num_res_blocks=2, attention_resolutions=default_attention(size, mult), dropout=0.1,
                use_scale_shift_norm=True)
    return {**base, **overrides}


def unet_for(event_shape, *, preset: str | None = None, learn_sigma: bool = False, **overrides) -> UNet:
    """The :class:`~ppl_diffusion.nets.unet.UNet` of :func:`~ppl_diffusion.nets.unet.unet_config` for images of ``event_shape`` ``[C x S x S]``, with ``learn_sigma``
    for a learned variance.

    :param event_shape: the images' shape ``(C, S, S)``.
    :param str preset: a key of :data:`~ppl_diffusion.nets.unet.UNET_PRESETS`, or ``None`` (the preset of this shape, else the rule).
    :param bool learn_sigma: output ε̂ and the variance output v, ``[N x 2C x S x S]``.
    :param overrides: settings (names of :data:`~ppl_diffusion.nets.unet.UNET_SETTINGS`) that replace the preset's or the rule's.

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets import unet_for
    >>> net = unet_for((3, 16, 16), model_channels=8, learn_sigma=True)
    >>> net.channel_mult, net.attention_resolutions
    ((1, 2, 2), (8,))
    >>> net(torch.zeros(2, 3, 16, 16), torch.tensor([1, 2])).shape
    torch.Size([2, 6, 16, 16])
    """
    return UNet(**unet_config(event_shape, preset=preset, **overrides), learn_sigma=learn_sigma)
