"""k-diffusion's ``log_likelihood`` on our nets, for the side-by-side of ``benchmarks/ode.py``.

k-diffusion (Crowson, ``pip install --no-deps k-diffusion==0.1.1.post1 torchsde trampoline``) imports torchvision in
its package ``__init__`` (through ``utils``), and torchvision's wheels need the CUDA build of torch. So the two
modules used here (``k_diffusion.sampling``, ``k_diffusion.external``; neither calls torchvision) are loaded without
the package's ``__init__``, with ``torchvision.transforms.functional`` stubbed when torchvision does not import.

k-diffusion integrates the variance-exploding form of the same ODE in σ̃ = √((1 − ᾱ)/ᾱ): x_VE = x_VP / √ᾱ,
dx/dσ̃ = ε̂(x_VE / √(1 + σ̃²), t(σ̃)), with one Rademacher probe and the prior N(0, σ̃_max² I). So, for data x in our
(VP) coordinates at the small-time end ε:

    log p_VP(x) = log p_VE(x / √ᾱ(ε)) − (D/2) log ᾱ(ε),

and its prior is ours when our diffusion's prior is N(0, (1 − ᾱ_T) I) (= σ̃_max² ᾱ_T). Two ways to map σ̃ to the net's
step: k-diffusion's own ``DiscreteEpsDDPMDenoiser`` (``quantize=False``: log σ̃ piecewise linear in t, our
``"grid-linear"`` map), and :class:`SplineEpsDenoiser` below (σ̃ → t by inverting our default ``"grid"`` spline), so
that both solve exactly the same ODE as ``ppl_diffusion.ode`` does by default.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types

import numpy as np
import torch
from torch import nn


def load():
    """(``k_diffusion.sampling``, ``k_diffusion.external``), or raise ImportError with the install line."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion==0.1.1.post1 torchsde "
                          "trampoline")
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    try:
        import torchvision  # noqa: F401
    except Exception:  # the CUDA wheel beside the CPU torch, or absent: k_diffusion.utils only imports it
        names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
        for name in names:
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


class _OneBased(nn.Module):
    """k-diffusion calls the net at 0-based (float) steps; ours are 1..T."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, t + 1)


class SplineEpsDenoiser(nn.Module):
    """k-diffusion's denoiser interface ``D(x_VE, σ̃) = x_VE − σ̃ ε̂(x_VE / √(1 + σ̃²), t(σ̃))`` with t(σ̃) the inverse of
    our ``"grid"`` map (bisection on its float64 spline), so k-diffusion integrates our default ODE."""

    def __init__(self, net: nn.Module, ct) -> None:
        super().__init__()
        self.net, self.ct = net, ct
        self.sigma_min = float(math.exp(ct.log_sigmas[0]))
        self.sigma_max = float(math.exp(ct.log_sigmas[-1]))

    def step_of(self, sigma: float) -> float:
        target, lo, hi = math.log(sigma), 1.0 / self.ct.T, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if float(self.ct._grid_log_sigma(mid)[0]) < target else (lo, mid)
        return self.ct.T * 0.5 * (lo + hi)

    def forward(self, x, sigma):
        s = float(sigma.reshape(-1)[0])
        t = torch.full((x.shape[0],), self.step_of(s), dtype=x.dtype, device=x.device)
        eps = self.net(x / math.sqrt(1.0 + s * s), t)
        return x - s * eps


def log_likelihood(diffusion, x: torch.Tensor, *, rtol: float, atol: float, spline: bool = True, seed: int = 0):
    """k-diffusion's log p of ``x`` (our VP coordinates at ε = 1/T), converted to our coordinates, with its NFE and
    its Rademacher probe ``v`` (drawn from torch's generator seeded with ``seed``, as k-diffusion draws it).

    :returns: (log_prob [B], nfe, v [B x ...])."""
    kds, kde = load()
    from ppl_diffusion.continuous import ContinuousTime

    ab = diffusion.schedule.alphas_cumprod
    if spline:
        model = SplineEpsDenoiser(diffusion.denoiser, ContinuousTime(diffusion.schedule, "grid"))
        sigma_min, sigma_max = model.sigma_min, model.sigma_max
    else:
        model = kde.DiscreteEpsDDPMDenoiser(_OneBased(diffusion.denoiser), torch.tensor(ab, dtype=x.dtype),
                                            quantize=False)
        sigma_min, sigma_max = float(model.sigma_min), float(model.sigma_max)
    torch.manual_seed(seed)
    v = torch.randint_like(x, 2) * 2 - 1  # k-diffusion's first draw inside log_likelihood
    torch.manual_seed(seed)
    ll, info = kds.log_likelihood(model, x / math.sqrt(ab[0]), sigma_min, sigma_max, atol=atol, rtol=rtol)
    d = int(np.prod(x.shape[1:]))
    return ll - 0.5 * d * math.log(ab[0]), int(info["fevals"]), v


def matching_prior(diffusion):
    """N(0, (1 − ᾱ_T) I) over the event: k-diffusion's prior N(0, σ̃_max² I) in our coordinates."""
    import pyro.distributions as dist

    scale = math.sqrt(1.0 - diffusion.schedule.alphas_cumprod[-1])
    zeros = torch.zeros(diffusion.event_shape)
    return dist.Normal(zeros, scale * torch.ones_like(zeros)).to_event(len(diffusion.event_shape))
