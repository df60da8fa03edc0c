"""Denoisers by name: the one place a run's ``net`` and ``net_config`` become a :class:`torch.nn.Module`.

A *builder* is a callable ``builder(event_shape, **settings) -> torch.nn.Module``: ``event_shape`` is the shape
of one example (``(C, H, W)`` for images, ``(D,)`` for vectors), ``settings`` the run's ``net_config``; when the
run learns its variance it is also passed ``learn_sigma=True``, and the net must then return ε̂ and the variance
output v stacked on the first event axis (``[N x 2C x H x W]``). The module is untrained (weights are loaded
after) and is called as ``net(x_t, t)`` with ``x_t`` ``[N x *event_shape]`` and ``t`` ``LongTensor[N]`` in 1..T.

=============================  ==================================================================================
name                           builder
=============================  ==================================================================================
``auto``                       a net sized for the data: :func:`~ppl_diffusion.nets.unet.unet_for` for images (the preset of their
                               shape, else improved-diffusion's rule), :func:`~ppl_diffusion.nets.mlp.mlp_for` for vectors;
                               ``net_config`` overrides any setting
``digits``, ``mnist``,         the U-Net presets (:data:`~ppl_diffusion.nets.unet.UNET_PRESETS`), named settings of ``unet_for``
``cifar10``
``unet``                       the :class:`~ppl_diffusion.nets.unet.UNet` class itself: ``net_config`` its keyword arguments, the
                               data's shape its ``in_channels`` and ``image_size``, its defaults for the rest (what
                               imported models and earlier runs name)
``mlp``                        :func:`~ppl_diffusion.nets.mlp.mlp_for`
``package.module:builder``     any importable builder: imported by every command that loads the run, so the run
                               folder needs nothing but the module on the path
a name given to register_net   a builder of this process only (:func:`~ppl_diffusion.nets.build.register_net`)
=============================  ==================================================================================

``diffusers``, the name of earlier diffusers imports, stands for ``ppl_diffusion.interop.diffusers:build_denoiser``
(resolved by import, so this module knows nothing of the adapters above it).
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import re
from collections.abc import Callable

from torch import nn

from .mlp import MLP_SETTINGS, MLPDenoiser, mlp_for
from .unet import UNET_PRESETS, UNET_SETTINGS, UNet, square_image_shape, unet_config, unet_for

__all__ = ["NET_BUILDERS", "build_net", "check_net_config", "check_net_name", "register_net", "resolve_builder"]


def _auto(event_shape, **settings) -> nn.Module:
    """A U-Net sized for images ``[C x S x S]``, the MLP for vectors (and any other shape)."""
    builder = unet_for if len(tuple(event_shape)) == 3 else mlp_for
    return builder(event_shape, **settings)


def _unet_class(event_shape, **settings) -> nn.Module:
    """``UNet(**settings)`` with ``in_channels`` and ``image_size`` from the images ``[C x S x S]``."""
    c, size = square_image_shape(event_shape, "net 'unet'")
    for key, want in (("in_channels", c), ("image_size", size)):
        if settings.setdefault(key, want) != want:
            raise ValueError(f"net 'unet' has {key} = {settings[key]!r} but the data's images are {c}x{size}x{size}; "
                             "import the model with the data it was trained on (or drop the setting)")
    if "model_channels" not in settings:
        raise ValueError("net 'unet' is the UNet class with net_config as its keyword arguments and its defaults for "
                         "the rest: pass model_channels (--channels), or use --net auto for a U-Net sized by the data")
    try:
        return UNet(**settings)
    except ValueError as error:  # a class default that does not fit these images, e.g. attention at 16 pixels
        unset = [SETTING_FLAGS[k] for k in ("channel_mult", "attention_resolutions") if k not in settings]
        given = f" ({', '.join(unset)} not given)" if unset else ""
        raise ValueError(f"{error}; net 'unet' is the UNet class with its defaults for the settings not given{given}:"
                         " pass them, or use --net auto for a U-Net sized by the data") from None


def _preset(name: str) -> Callable:
    def build(event_shape, **settings) -> nn.Module:
        return unet_for(event_shape, preset=name, **settings)

    return build


# The builders every process knows; register_net adds others (for this process only).
BUILTIN_NETS: dict[str, Callable] = {"auto": _auto, "unet": _unet_class, "mlp": mlp_for,
                                     **{name: _preset(name) for name in UNET_PRESETS}}
#: The builders by name that a run's ``net`` may take in this process, the built-in ones (``auto``, ``unet``,
#: ``mlp`` and the U-Net presets) and those added with :func:`~ppl_diffusion.nets.build.register_net`.
NET_BUILDERS: dict[str, Callable] = dict(BUILTIN_NETS)
# Names that earlier versions wrote into config.json for builders that now live behind an import path.
NET_ALIASES: dict[str, str] = {"diffusers": "ppl_diffusion.interop.diffusers:build_denoiser"}
# The CLI flag of each setting it has one for, named in errors.
SETTING_FLAGS = {"model_channels": "--channels", "channel_mult": "--channel-mult", "num_res_blocks": "--res-blocks",
                 "attention_resolutions": "--attention", "dropout": "--dropout", "width": "--width",
                 "depth": "--depth", "fourier_features": "--fourier-features"}
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
IMPORT_PATH_FIX = "package.module:builder, a function builder(event_shape, **net_config) -> torch.nn.Module"


def is_import_path(name) -> bool:
    """Whether ``name`` reads ``package.module:attribute`` (a builder found by import)."""
    return isinstance(name, str) and bool(_IMPORT_PATH.match(name))


def register_net(name: str, builder: Callable) -> None:
    """Make ``net=name`` build its denoiser with ``builder(event_shape, **net_config)`` (see the module docstring),
    in this process only: a run of such a net loads only where the same registration ran first. For runs that every
    command (a fresh ``ppl-diffusion evaluate``) loads, name the builder by its import path,
    ``package.module:builder``.

    .. warning:: A registration lives in :data:`~ppl_diffusion.nets.build.NET_BUILDERS` of this process only; a run trained with it does
        not load in a fresh process that has not registered the same name.

    :param str name: a plain name, not a built-in one and without ``:``.
    :param builder: a callable ``builder(event_shape, **net_config) -> torch.nn.Module``.
    :raises ValueError: for a built-in name, an import path or a builder that is not callable.

    Example:

    >>> from ppl_diffusion.nets import MLPDenoiser, NET_BUILDERS, build_net, register_net
    >>> def tiny(event_shape, width=8):
    ...     return MLPDenoiser(event_shape[0], width=width, depth=1)
    >>> register_net("tiny", tiny)
    >>> build_net("tiny", (2,), {"width": 4}).num_parameters
    378
    >>> del NET_BUILDERS["tiny"]  # forget it again
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"net name {name!r}: pass a plain name (an import path package.module:builder needs no "
                         "registration)")
    if name in BUILTIN_NETS or name in NET_ALIASES:
        what = "a U-Net preset" if name in UNET_PRESETS else "a built-in net"
        raise ValueError(f"net name {name!r} is {what}; register the builder under another name")
    if not callable(builder):
        raise ValueError(f"register_net({name!r}, ...): the builder must be callable, got {type(builder).__name__}")
    NET_BUILDERS[name] = builder


def known_nets() -> str:
    """The names a run's ``net`` may take, for error messages."""
    return ", ".join([*NET_BUILDERS, "package.module:builder"])


def check_net_name(name) -> None:
    """A one-line error unless ``name`` is a known net, an alias or an import path (not imported here).

    :param name: a name of :data:`~ppl_diffusion.nets.build.NET_BUILDERS`, or ``package.module:builder``.
    :raises ValueError: naming the known nets.

    Example:

    >>> from ppl_diffusion.nets import check_net_name
    >>> check_net_name("auto")
    >>> check_net_name("mypackage.nets:build")  # an import path: checked when built
    >>> check_net_name("resnet")
    Traceback (most recent call last):
    ...
    ValueError: unknown net 'resnet'; choose one of auto, unet, mlp, ...
    """
    if name in NET_BUILDERS or name in NET_ALIASES or is_import_path(name):
        return
    raise ValueError(f"unknown net {name!r}; choose one of {known_nets()} "
                     f"({IMPORT_PATH_FIX})")


def resolve_builder(name: str) -> Callable:
    """The builder of ``name``: a name of :data:`~ppl_diffusion.nets.build.NET_BUILDERS`, an alias, or ``package.module:attribute`` imported.

    A plain name this process does not know is most likely a builder registered in another process (a run written
    with :func:`~ppl_diffusion.nets.build.register_net`): the error says so and names the fix.

    :param str name: a net name or an import path ``package.module:attribute``.
    :returns: the builder, ``builder(event_shape, **net_config) -> torch.nn.Module``.
    :raises ValueError: for an unknown name, a module that does not import or an attribute that is not callable.

    Example:

    >>> from ppl_diffusion.nets import resolve_builder
    >>> resolve_builder("mlp").__name__
    'mlp_for'
    >>> resolve_builder("ppl_diffusion.nets.unet:unet_for").__name__
    'unet_for'
    """
    name = NET_ALIASES.get(name, name)
    if name in NET_BUILDERS:
        return NET_BUILDERS[name]
    if not is_import_path(name):
        raise ValueError(f"net {name!r} is not known in this process (known: {known_nets()}); a net added with "
                         "register_net exists only in the process that registered it: call register_net before "
                         f"loading the run, or train it with --net {IMPORT_PATH_FIX.split(',')[0]} so that every "
                         "command can import it")
    module_name, _, attr = name.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"net {name!r}: cannot import module {module_name!r} ({e}); put the folder holding it on "
                         "PYTHONPATH (or pip install its package) in every process that trains or loads the run"
                         ) from None
    except Exception as e:  # the module itself fails: say where, in one line
        raise ValueError(f"net {name!r}: importing module {module_name!r} raised {type(e).__name__}: "
                         f"{' '.join(str(e).split())}; fix the module") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"net {name!r}: module {module_name!r} has no attribute {attr!r}; name a builder "
                             f"defined there ({IMPORT_PATH_FIX})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"net {name!r} is a {type(obj).__name__}, not a builder ({IMPORT_PATH_FIX})")
    return obj


def _flagged(key: str) -> str:
    return f"{key} ({SETTING_FLAGS[key]})" if key in SETTING_FLAGS else key


def settings_of(name: str, event_shape=None) -> tuple[tuple[str, ...], bool]:
    """(the settings the net ``name`` takes, whether its builder also takes any ``**kwargs``): the U-Net's or the
    MLP's for the built-in nets (``auto``: by ``event_shape``), else read off the builder's signature (its keyword
    parameters after ``event_shape``, but ``learn_sigma``)."""
    if name in UNET_PRESETS or name == "unet" or (name == "auto" and len(tuple(event_shape)) == 3):
        return UNET_SETTINGS, False
    if name in BUILTIN_NETS:
        return MLP_SETTINGS, False
    try:
        params = list(inspect.signature(resolve_builder(name)).parameters.values())
    except (TypeError, ValueError):  # a callable without a signature: let the call decide
        return (), True
    names = tuple(p.name for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name != "learn_sigma")
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def _takes_learn_sigma(builder: Callable) -> bool:
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return True
    return "learn_sigma" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def check_net_config(name: str, net_config, event_shape=None) -> None:
    """A one-line error if ``net_config`` has a setting the net ``name`` does not take, naming the ones it does.

    For ``auto`` the net depends on the data, so ``event_shape`` is needed to check it (skipped without it).

    :param str name: the net (a name of :data:`~ppl_diffusion.nets.build.NET_BUILDERS` or an import path).
    :param net_config: a dict of its settings by name, or ``None``.
    :param event_shape: the shape of one example, ``(C, H, W)`` or ``(D,)``; needed for ``auto``.
    :raises ValueError: naming the unknown setting and the net's settings.

    Example:

    >>> from ppl_diffusion.nets import check_net_config
    >>> check_net_config("mlp", {"width": 64})
    >>> check_net_config("mlp", {"model_channels": 64})
    Traceback (most recent call last):
    ...
    ValueError: net 'mlp' has no setting model_channels (--channels); its settings are width (--width), ...
    """
    if net_config is None:
        return
    if not isinstance(net_config, dict) or not all(isinstance(k, str) for k in net_config):
        raise ValueError(f"net_config = {net_config!r}; pass a dict of the net's settings by name")
    if not net_config:
        return
    if name == "auto" and event_shape is None:
        return
    known, open_ended = settings_of(name, event_shape)
    what, where = f"net {name!r}", ""
    if name == "auto":
        what = "the U-Net" if known is UNET_SETTINGS else "the MLP"
        where = f" (net 'auto' builds {what} for examples of shape {list(event_shape)})"
    unknown = [k for k in net_config if k not in known]
    if "learn_sigma" in net_config:
        raise ValueError(f"net_config sets learn_sigma; drop it: the variance decides it (--variance learned passes "
                         "learn_sigma=True to the builder)")
    if unknown and not open_ended:
        raise ValueError(f"{what} has no setting {_flagged(unknown[0])}{where}; its settings are "
                         f"{', '.join(map(_flagged, known)) or 'none'}")
    dropout = net_config.get("dropout")
    if name in BUILTIN_NETS and dropout is not None and not (isinstance(dropout, numbers.Real) and 0 <= dropout < 1):
        raise ValueError(f"{_flagged('dropout')} = {dropout!r}: a dropout probability must lie in [0, 1); pass e.g. "
                         "0.1 (the U-Net's default) or 0 (none)")


def net_settings(name: str, event_shape, net_config: dict | None = None) -> dict:
    """The settings the net ``name`` is built with for examples of ``event_shape``, but the data's own
    (``in_channels``, ``image_size``, ``dim``): for the built-in U-Nets (``auto`` on images, the presets)
    :func:`~ppl_diffusion.nets.unet.unet_config`'s, the preset or the size rule filled in; for the MLP (``mlp``, ``auto`` on vectors)
    :class:`~ppl_diffusion.nets.mlp.MLPDenoiser`'s defaults under ``net_config``; for any other net ``net_config`` as given."""
    settings = dict(net_config or {})
    image = len(tuple(event_shape)) == 3
    if name in UNET_PRESETS or (name == "auto" and image):
        settings = unet_config(event_shape, preset=name if name in UNET_PRESETS else None, **settings)
    elif name == "mlp" or name == "auto":
        defaults = {k: p.default for k, p in inspect.signature(MLPDenoiser).parameters.items() if k in MLP_SETTINGS}
        settings = {**defaults, **settings}
    return {k: v for k, v in settings.items() if k not in ("in_channels", "image_size")}


def describe_net(name: str, event_shape, net_config: dict | None = None, *, parameters: int | None = None) -> str:
    """One line, ``"net auto: U-Net (model_channels=16, channel_mult=(1, 2, 2), ...), 438,801 parameters"``: the
    settings of ``net_settings``."""
    settings = net_settings(name, event_shape, net_config)
    kind = ("U-Net" if name in UNET_PRESETS or name == "unet" or (name == "auto" and len(tuple(event_shape)) == 3)
            else "MLP" if name in ("mlp", "auto") else "")
    shown = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in settings.items())
    what = " ".join(part for part in (kind, f"({shown})" if shown else "") if part)
    return f"net {name}" + (f": {what}" if what else "") + ("" if parameters is None else f", {parameters:,} parameters")


def build_net(name: str, event_shape, net_config: dict | None = None, *, learn_sigma: bool = False) -> nn.Module:
    """The untrained denoiser ``name`` (see the module docstring) for examples of ``event_shape``, with the settings
    ``net_config``; ``learn_sigma=True`` (a learned variance) is passed on to the builder. Unknown settings and
    builders that fail on their arguments give one-line errors.

    :param str name: a name of :data:`~ppl_diffusion.nets.build.NET_BUILDERS`, an alias or ``package.module:builder``.
    :param event_shape: the shape of one example, ``(C, H, W)`` for images or ``(D,)`` for vectors.
    :param dict net_config: the builder's settings by name (``None``: its defaults).
    :param bool learn_sigma: build a net that returns ε̂ and the variance output v stacked,
        ``[N x 2C x H x W]`` (``[N x 2D]`` for vectors).
    :returns: an untrained :class:`torch.nn.Module`, called as ``net(x_t, t)``.

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets import build_net
    >>> net = build_net("auto", (1, 8, 8), {"model_channels": 8})  # the digits' U-Net, narrower
    >>> type(net).__name__, net.num_parameters
    ('UNet', 69209)
    >>> net(torch.zeros(2, 1, 8, 8), torch.tensor([1, 10])).shape
    torch.Size([2, 1, 8, 8])
    >>> mlp = build_net("mlp", (2,), {"width": 16}, learn_sigma=True)
    >>> mlp(torch.zeros(4, 2), torch.ones(4, dtype=torch.long)).shape
    torch.Size([4, 4])
    """
    event_shape = tuple(event_shape)
    settings = dict(net_config or {})
    check_net_config(name, settings, event_shape)
    builder = resolve_builder(name)
    if learn_sigma:
        if not _takes_learn_sigma(builder):
            raise ValueError(f"net {name!r} cannot learn a variance: its builder takes no learn_sigma; accept "
                             "learn_sigma (and return 2C output channels when it is True) or use a fixed --variance")
        settings["learn_sigma"] = True
    try:
        net = builder(event_shape, **settings)
    except TypeError as e:
        if name in BUILTIN_NETS:
            raise
        raise ValueError(f"net {name!r}: {builder.__name__}({list(event_shape)}, **{settings}) failed ({e}); a builder "
                         "is called as builder(event_shape, **net_config)") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"net {name!r}: the builder returned a {type(net).__name__}, not a torch.nn.Module")
    return net
