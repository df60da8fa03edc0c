"""Denoisers ε̂_θ(x_t, t): plain ``torch.nn.Module`` objects that know nothing of Pyro, and :mod:`~ppl_diffusion.nets.build`, the
nets by name (builtin builders, ``package.module:builder`` import paths, :func:`~ppl_diffusion.nets.build.register_net`)."""

from .build import NET_BUILDERS, build_net, check_net_config, check_net_name, register_net, resolve_builder
from .embedding import timestep_embedding
from .mlp import MLP_SETTINGS, MLPDenoiser, NetWarning, mlp_for
from .unet import (UNET_PRESETS, UNET_SETTINGS, UNet, default_attention, default_channel_mult, unet_config, unet_for,
                   unet_preset)

__all__ = ["MLPDenoiser", "MLP_SETTINGS", "NET_BUILDERS", "NetWarning", "UNET_PRESETS", "UNET_SETTINGS", "UNet",
           "build_net", "check_net_config", "check_net_name", "default_attention", "default_channel_mult", "mlp_for",
           "register_net", "resolve_builder", "timestep_embedding", "unet_config", "unet_for", "unet_preset"]
