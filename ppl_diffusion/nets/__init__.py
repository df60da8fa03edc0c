"""Denoisers ε̂_θ(x_t, t): plain ``torch.nn.Module`` objects that know nothing of Pyro."""

from .embedding import timestep_embedding
from .mlp import MLPDenoiser
from .unet import UNET_PRESETS, UNet, unet_preset

__all__ = ["MLPDenoiser", "UNET_PRESETS", "UNet", "timestep_embedding", "unet_preset"]
