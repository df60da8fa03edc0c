"""Shared helpers: Monte-Carlo comparisons with tolerances from standard errors, the
linear-Gaussian diffusion whose log-likelihood and ELBO are known in closed form, and processes
killed at random moments."""

from __future__ import annotations

import math
import signal
import subprocess
import time

import numpy as np
import torch
from torch import nn

from ppl_diffusion import NoiseSchedule

# z-score of every Monte-Carlo comparison: with a few hundred comparisons in the suite, a false
# alarm at 5 standard errors has probability < 1e-4.
Z = 5.0


def mean_se(samples) -> tuple[float, float]:
    """Mean and its standard error from independent replicates."""
    x = np.asarray(samples, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def assert_mc_close(a, b, *, z: float = Z, what: str = "") -> None:
    """Two Monte-Carlo estimates (each (mean, se)) agree within z combined standard errors."""
    (ma, sa), (mb, sb) = a, b
    tol = z * math.hypot(sa, sb)
    assert abs(ma - mb) <= tol, f"{what}: {ma:.6g} ± {sa:.2g} vs {mb:.6g} ± {sb:.2g} (|diff| > {tol:.3g})"


class LinearDenoiser(nn.Module):
    """ε̂(x_t, t) = a_t ⊙ x_t + b_t: makes the reverse chain linear-Gaussian."""

    def __init__(self, T: int, dim: int, a=None, b=None) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.as_tensor(a if a is not None else np.zeros((T, dim)), dtype=torch.float64).clone())
        self.b = nn.Parameter(torch.as_tensor(b if b is not None else np.zeros((T, dim)), dtype=torch.float64).clone())

    def forward(self, x_t, t):
        return self.a[t - 1] * x_t + self.b[t - 1]


def optimal_linear_coefficients(schedule: NoiseSchedule, m: np.ndarray, s2: np.ndarray):
    """a_t, b_t of E[ε | x_t] when x_0 ~ N(m, diag(s2)): the best denoiser for Gaussian data."""
    ab = schedule.alphas_cumprod[:, None]
    a = np.sqrt(1 - ab) / (ab * s2[None] + 1 - ab)
    b = -a * np.sqrt(ab) * m[None]
    return a, b


def reverse_coefficients(schedule: NoiseSchedule, a: np.ndarray, b: np.ndarray):
    """μ_θ(x_t, t) = c_t x_t + d_t for the linear denoiser (DDPM's μ from ε̂), float64 [T, D]."""
    beta, alpha = schedule.betas[:, None], schedule.alphas[:, None]
    s1m = schedule.sqrt_one_minus_alphas_cumprod[:, None]
    c = (1 - beta * a / s1m) / np.sqrt(alpha)
    d = -beta * b / (s1m * np.sqrt(alpha))
    return c, d


def linear_gaussian_log_marginal(schedule, a, b, log_var, x0: np.ndarray) -> np.ndarray:
    """Exact log p(x_0) of the linear-Gaussian reverse chain, by propagating its marginals.

    x_T ~ N(0, 1); x_{t−1} = c_t x_t + d_t + σ_t ε; x_0 ~ N(c_1 x_1 + d_1, σ_1²). Per dimension.
    ``x0`` is [B, D]; returns [B] (summed over dimensions).
    """
    c, d = reverse_coefficients(schedule, a, b)
    var = np.exp(log_var)[:, None]
    m, v = np.zeros(a.shape[1]), np.ones(a.shape[1])
    for t in range(schedule.T, 0, -1):  # x_t → x_{t−1}
        m, v = c[t - 1] * m + d[t - 1], c[t - 1] ** 2 * v + var[t - 1]
    return (-0.5 * np.log(2 * np.pi * v) - 0.5 * (x0 - m) ** 2 / v).sum(-1)


def linear_gaussian_elbo(schedule, a, b, log_var, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ELBO of the linear-Gaussian chain with N(0, I) prior and Gaussian decoder.

    Every term is a Gaussian expectation of a quadratic, computed in closed form (no sampling):
    E_{q(x_t|x_0)} (μ̃_t − μ_θ)² = (E[diff])² + Var[diff] with diff linear in x_t. Returns the ELBO
    [B] and the terms L_0..L_T [B, T + 1] (nats), summed over dimensions.
    """
    T = schedule.T
    c, d = reverse_coefficients(schedule, a, b)
    var = np.exp(log_var)[:, None]
    ab, ab_prev = schedule.alphas_cumprod[:, None], schedule.alphas_cumprod_prev[:, None]
    terms = np.zeros((x0.shape[0], T + 1))
    # L_0 = −E log N(x_0 | c_1 x_1 + d_1, σ_1²), x_1 ~ N(√ᾱ_1 x_0, 1 − ᾱ_1)
    mean_r = x0 - (c[0] * np.sqrt(ab[0]) * x0 + d[0])
    e_sq = mean_r**2 + c[0] ** 2 * (1 - ab[0])
    terms[:, 0] = (0.5 * np.log(2 * np.pi * var[0]) + 0.5 * e_sq / var[0]).sum(-1)
    for t in range(2, T + 1):
        i = t - 1
        coef1 = np.sqrt(ab_prev[i]) * schedule.betas[i] / (1 - ab[i])
        coef2 = np.sqrt(schedule.alphas[i]) * (1 - ab_prev[i]) / (1 - ab[i])
        post_var = schedule.posterior_variance[i]
        e_diff = coef1 * x0 + (coef2 - c[i]) * np.sqrt(ab[i]) * x0 - d[i]
        v_diff = (coef2 - c[i]) ** 2 * (1 - ab[i])
        kl = 0.5 * (np.log(var[i] / post_var) + (post_var + e_diff**2 + v_diff) / var[i] - 1)
        terms[:, i] = kl.sum(-1)
    mT, vT = np.sqrt(ab[-1]) * x0, 1 - ab[-1]
    terms[:, T] = (0.5 * (vT + mT**2 - 1 - np.log(vT))).sum(-1)
    return -terms.sum(-1), terms


def kill_at_random_moments(cmd: list, *, saved, rng, tries: int, pause: float, env: dict, wait: float = 60) -> int:
    """Start ``cmd`` ``tries`` times in a new process, each SIGKILLed at a random moment up to ``pause`` s after
    ``saved()`` (what the command has written so far: its newest checkpoint, its progress files) first changes in
    that try (imports take a while), unless it finished first; return how many were killed."""
    kills = 0
    for _ in range(tries):
        before = saved()
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + wait
        while proc.poll() is None and saved() == before and time.monotonic() < deadline:
            time.sleep(0.005)  # wait until the work runs, then kill at random
        time.sleep(rng.uniform(0.0, pause))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    return kills


def nan_after(build, calls: int):
    """A ``build_diffusion`` whose denoiser returns NaN from its ``calls + 1``-th call on (divergence tests)."""
    def build_with_nan(config, dataset):
        diffusion = build(config, dataset)
        seen = []
        diffusion.denoiser.register_forward_hook(
            lambda m, i, out: out * float("nan") if seen.append(1) or len(seen) > calls else None)
        return diffusion

    return build_with_nan


class GaussianOracle(nn.Module):
    """The exact ε̂ for Gaussian data N(m, Σ) under a continuous-time map ``ct``: the marginal at s is
    N(√ᾱ m, C), C = ᾱ Σ + σ² I, whose score is −C⁻¹(x − √ᾱ m), so ε̂ = σ C⁻¹(x − √ᾱ m), at the time s of the
    label t (s = t/T for the grid maps, (t − 1)/(T − 1) for vp-linear). Every example of a call shares its t
    (as in the ODE). ``scale`` is a parameter (1 at the oracle) so that gradients have something to flow into."""

    def __init__(self, ct, mean: torch.Tensor, cov: torch.Tensor) -> None:
        super().__init__()
        from ppl_diffusion.ode import TimeCoefficients

        self.ct, self.coef = ct, TimeCoefficients(ct)
        self.register_buffer("mean", mean)
        self.register_buffer("cov", cov)
        self.scale = nn.Parameter(torch.ones((), dtype=mean.dtype))

    def forward(self, x, t):
        ct = self.ct
        s = t[0] / ct.T if ct.kind != "vp-linear" else (t[0] - 1) / (ct.T - 1)
        _, sigma, _ = self.coef(s, x.dtype)
        ab = 1 - sigma ** 2
        c = ab * self.cov + sigma ** 2 * torch.eye(len(self.mean), dtype=x.dtype)
        return self.scale * sigma * torch.linalg.solve(c, (x - ab.sqrt() * self.mean).T).T

    def marginal(self, s: float):
        """(mean, covariance) of the data's marginal at time s, float64 from the NumPy reference."""
        ab = float(self.ct.alpha_bar(s))
        return math.sqrt(ab) * self.mean, ab * self.cov + (1 - ab) * torch.eye(len(self.mean), dtype=self.cov.dtype)


def random_gaussian(dim: int, seed: int = 0, dtype=torch.float64):
    """A mean and a full covariance (eigenvalues about 0.1..2) for :class:`GaussianOracle`."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=dtype) * 0.5
    return torch.randn(dim, generator=g, dtype=dtype), a @ a.T + 0.1 * torch.eye(dim, dtype=dtype)


def assert_same_state(a, b, *, skip=("elapsed",), where: str = "state") -> None:
    """Two training states (checkpoint dicts) equal in every entry, recursively: every tensor by ``torch.equal``
    (same dtype, shape and bits), every number, string and ``None`` by ``==``; the keys in ``skip`` (the wall
    clock) are left out. The message names the first entry that differs."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b, key=str)}"
        for k in a:
            if k not in skip:
                assert_same_state(a[k], b[k], skip=skip, where=f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {type(a).__name__} of {len(a)} vs {b!r:.60}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, skip=skip, where=f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a!r:.80}"
        assert torch.equal(a, b), f"{where} differs: max |Δ| = {(a.double() - b.double()).abs().max().item():.3g}"
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


# ------------------------------------------------------------------------------ a γ schedule's exact Gaussian case
class GammaGaussianOracle(nn.Module):
    """The exact ε̂ for data N(m, diag(s²)) given the label of ``time_input="gamma"``: γ = lo + label (hi − lo)/1000
    (``gamma_range`` = (lo, hi)), α² = sigmoid(−γ), σ² = sigmoid(γ), and E[ε|x_γ] = σ (x − α m)/(α² s² + σ²).
    ``scale`` is a parameter (1 at the oracle) so that the model has one, or a buffer (``trainable=False``)."""

    def __init__(self, mean, var, gamma_range, trainable: bool = True) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("var", torch.as_tensor(var, dtype=torch.float64))
        self.lo, self.hi = gamma_range
        one = torch.ones((), dtype=torch.float64)
        if trainable:
            self.scale = nn.Parameter(one)
        else:  # a fixed θ: nothing for an optimizer to move
            self.register_buffer("scale", one)

    def forward(self, x, label):
        gamma = (self.lo + label.double() * (self.hi - self.lo) / 1000.0)[:, None]
        a2, s2 = torch.sigmoid(-gamma), torch.sigmoid(gamma)
        eps = s2.sqrt() * (x.double() - a2.sqrt() * self.mean) / (a2 * self.var + s2)
        return (self.scale * eps).to(x.dtype)


def gaussian_eps_mse(m, s2, x, gamma):
    """E_ε ‖ε − ε̂*(x_γ)‖² of the oracle per example, ``[B]``: Σ_d (s⁴ + e^γ (x − m)²) / (s² + e^γ)²."""
    u = np.exp(np.asarray(gamma, np.float64))[..., None]
    return ((s2 ** 2 + u * (x - m) ** 2) / (s2 + u) ** 2).sum(-1)


def gaussian_continuous_terms(m, s2, x, gamma_0: float, gamma_1: float) -> dict:
    """The continuous-time ELBO's terms (nats per example ``[B]``) for data N(m, diag(s2)), the exact ε̂ and the
    Gaussian decoder N(x̂_0(x_1), σ_0²) at γ_0, N(0, I) prior, in closed form:

    - diffusion ½ ∫_{γ_0}^{γ_1} Σ_d (s⁴ + e^γ (x − m)²)/(s² + e^γ)² dγ = ½ Σ_d [F(γ_1) − F(γ_0)],
      F(γ) = γ − log(s² + e^γ) + (s² − (x − m)²)/(s² + e^γ);
    - reconstruction ½ log(2π σ_0²) + E(x − x̂_0)²/(2 σ_0²), E(x − x̂_0)² = ((x − m)² σ⁴ + α² s⁴ σ²)/c² at γ_0,
      c = α² s² + σ²;
    - prior ½ (σ_1² + α_1² x² − 1 − log σ_1²) summed over d.
    """
    x, m, s2 = np.asarray(x, np.float64), np.asarray(m, np.float64), np.asarray(s2, np.float64)

    def F(g):
        u = math.exp(g)
        return (g - np.log(s2 + u) + (s2 - (x - m) ** 2) / (s2 + u)).sum(-1)

    def sig(g):
        return 1.0 / (1.0 + math.exp(-g))

    a2, v = sig(-gamma_0), sig(gamma_0)
    c = a2 * s2 + v
    err = ((x - m) ** 2 * v ** 2 + a2 * s2 ** 2 * v) / c ** 2
    rec = (0.5 * math.log(2 * math.pi * v) + err / (2 * v)).sum(-1)
    a2_1, v_1 = sig(-gamma_1), sig(gamma_1)
    prior = (0.5 * (v_1 + a2_1 * x ** 2 - 1.0 - math.log(v_1))).sum(-1)
    return {"prior": prior, "reconstruction": rec, "diffusion": 0.5 * (F(gamma_1) - F(gamma_0))}


def gaussian_elbo_by_endpoints(m, s2, x, gamma_0: float, gamma_1: float) -> np.ndarray:
    """The same ELBO by another route: with the exact reverse process the chain's terms telescope (docs/variational.md)
    and ELBO(x) = E_{q(x_1|x)}[log p(x|x_1) + log q(x_1) − log q(x_1|x)] − E_{q(x_T|x)}[log q(x_T) − log p(x_T)]
    with q(x_γ) = N(α m, α² s² + σ²) the data's marginal: the endpoint terms alone, ``[B]``."""
    x, m, s2 = np.asarray(x, np.float64), np.asarray(m, np.float64), np.asarray(s2, np.float64)

    def sig(g):
        return 1.0 / (1.0 + math.exp(-g))

    def e_log_marginal(g):  # E_{z ~ q(z|x)} log N(z; α m, α² s² + σ²)
        a2, v = sig(-g), sig(g)
        c = a2 * s2 + v
        return -0.5 * np.log(2 * math.pi * c) - (a2 * (x - m) ** 2 + v) / (2 * c)

    v_0, a2_1, v_1 = sig(gamma_0), sig(-gamma_1), sig(gamma_1)
    rec = gaussian_continuous_terms(m, s2, x, gamma_0, gamma_1)["reconstruction"]
    entropy_0 = 0.5 * np.log(2 * math.pi * math.e * v_0) * np.ones_like(x)  # −E log q(x_1|x)
    e_log_prior = -0.5 * math.log(2 * math.pi) - (a2_1 * x ** 2 + v_1) / 2
    return -rec + (e_log_marginal(gamma_0) + entropy_0).sum(-1) - (e_log_marginal(gamma_1) - e_log_prior).sum(-1)


def cubature_noise(batch: int, dim: int, dtype=torch.float64):
    """The 2·dim points ±√dim e_k (equal weights): their mean of any quadratic in a standard normal ε of ``dim``
    dimensions is its exact expectation. Returns (noise ``[batch·2·dim x dim]``, rows of each example grouped)."""
    pts = math.sqrt(dim) * torch.cat([torch.eye(dim, dtype=dtype), -torch.eye(dim, dtype=dtype)])
    return pts.repeat(batch, 1)


def central_difference(f, p: torch.Tensor, h: float = 1e-5, index=()) -> float:
    """d f / d p[index] by central differences with one Richardson step (error O(h⁴)): ``f()`` a float64 scalar
    function of the parameter ``p``, changed in place and restored."""
    def d(step):
        with torch.no_grad():
            p[index] += step
            up = float(f())
            p[index] -= 2 * step
            down = float(f())
            p[index] += step
        return (up - down) / (2 * step)

    return (4 * d(h / 2) - d(h)) / 3
