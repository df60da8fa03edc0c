"""Denoisers ε̂_θ(x_t, t): plain ``torch.nn.Module`` objects that know nothing of Pyro."""

from .embedding import timestep_embedding
from .mlp import MLPDenoiser

__all__ = ["MLPDenoiser", "timestep_embedding"]
