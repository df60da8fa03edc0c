"""The fitted reverse variance (ppl_diffusion.variance) against the exact linear-Gaussian ELBO.

With Gaussian data and a linear denoiser every term of the ELBO is a closed-form function of log σ_t²
(``tests/common.py``, no package code), so the ELBO-optimal σ_t² can be found by direct numerical
minimisation of that function and compared with the Monte-Carlo fit, within its standard error.
"""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from ppl_diffusion import GaussianDiffusion, NoiseSchedule
from ppl_diffusion.respace import respace
from ppl_diffusion.variance import FittedVariance, fit_variance

from .common import LinearDenoiser, linear_gaussian_elbo, optimal_linear_coefficients

M, S2 = np.array([0.3, -0.5]), np.array([0.25, 0.6])  # data N(M, diag(S2))
N = 20_000  # training examples of the fit


def _model(T=12, perturb=0.3, seed=3):
    s = NoiseSchedule.linear(T)
    a, b = optimal_linear_coefficients(s, M, S2)
    rng = np.random.default_rng(seed)  # a poor denoiser, so that m_t is far from 0
    a, b = a + perturb * rng.normal(size=a.shape), b + perturb * rng.normal(size=b.shape)
    return s, a, b, GaussianDiffusion(schedule=s, denoiser=LinearDenoiser(T, 2, a, b), event_shape=(2,))


def _data(n, seed=0):
    return np.random.default_rng(seed).normal(M, np.sqrt(S2), size=(n, 2))


def _quadrature(n=20):
    """Gauss–Hermite nodes and weights for E over x_0 ~ N(M, diag(S2)): exact for these polynomials."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    nodes = np.stack([M[0] + np.sqrt(S2[0]) * z1.ravel(), M[1] + np.sqrt(S2[1]) * z2.ravel()], -1)
    return nodes, np.outer(w, w).ravel()


def _optimal_log_variance(s, a, b, iterations=80):
    """argmin over log σ_t² of the exact mean −ELBO by golden-section search, all t at once (term t − 1
    of the ELBO depends on σ_t² only, so the search over the vector is T independent searches)."""
    base = np.log(s.betas)
    x0, w = _quadrature()
    f = lambda lv: w @ linear_gaussian_elbo(s, a, b, lv, x0)[1][:, :-1]  # E L_0 .. E L_{T−1}, [T]
    lo, hi = base - 6.0, base + 6.0
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = f(x1), f(x2)
    for _ in range(iterations):
        left = f1 < f2  # the minimum lies in [lo, x2]
        hi, lo = np.where(left, x2, hi), np.where(left, lo, x1)
        x1n, x2n = hi - g * (hi - lo), lo + g * (hi - lo)
        x1, x2 = x1n, x2n
        f1, f2 = f(x1), f(x2)
    assert np.all((lo > base - 5.9) & (hi < base + 5.9)), "optimum at the edge of the bracket"
    return (lo + hi) / 2


def test_fitted_variance_is_the_elbo_optimum():
    s, a, b, d = _model()
    x0 = _data(N)
    fitted = fit_variance(d, torch.as_tensor(x0), batch_size=N, seed=1)
    got = fitted.log_variance(s)
    want = _optimal_log_variance(s, a, b)
    # e_t is a mean of N·D squares of Gaussians, so its relative standard error is at most √(2 / (N D));
    # σ_t² = β̃_t + c_t² e_t has at most that relative error, and so has the Gaussian decoder's σ_1².
    rel_se = math.sqrt(2 / (N * 2))
    np.testing.assert_array_less(np.abs(got - want), 5 * rel_se)
    # The fitted model's exact ELBO beats both of DDPM's fixed choices.
    elbo = {v: linear_gaussian_elbo(s, a, b, lv, x0[:2000])[0].mean()
            for v, lv in [("beta", np.log(s.betas)), ("posterior", s.posterior_log_variance_clipped),
                          ("fitted", got)]}
    assert elbo["fitted"] > max(elbo["beta"], elbo["posterior"]), elbo


def test_fitted_diffusion_uses_the_fitted_variance():
    s, a, b, d = _model()
    fitted = fit_variance(d, torch.as_tensor(_data(500)), seed=0)
    d2 = d.with_variance(fitted)
    assert d2.denoiser is d.denoiser and d2.variance is fitted
    x_t, t = torch.zeros(4, 2, dtype=torch.float64), torch.tensor([1, 2, 7, 12])
    _, log_var = d2.p_mean_variance(x_t, t)
    np.testing.assert_allclose(log_var[:, 0].numpy(), fitted.log_variance(s)[t.numpy() - 1])
    # For a perfect mean the fit is β̃_t: here e_t = 0 exactly gives log β̃_t for t >= 2.
    zero = FittedVariance(x0_mse=np.zeros(s.T), decoder_log_variance=-5.0, num_examples=1, seconds=0.0)
    np.testing.assert_allclose(zero.log_variance(s)[1:], np.log(s.posterior_variance[1:]))


def test_respaced_fit_matches_a_fit_of_the_respaced_model():
    """e_t belongs to the denoiser at step t: fitting the respaced chain directly gives the same σ'_k²."""
    s, a, b, d = _model(T=20)
    x0 = torch.as_tensor(_data(N))
    fitted = fit_variance(d, x0, batch_size=N, seed=1)
    r = respace(d.with_variance(fitted), 5)
    direct = fit_variance(respace(d, 5), x0, batch_size=N, seed=2)
    np.testing.assert_allclose(direct.x0_mse, fitted.respaced(r.denoiser.timesteps).x0_mse,
                               rtol=5 * 2 * math.sqrt(2 / (N * 2)))
    np.testing.assert_allclose(r.p_log_variance[1:], direct.log_variance(r.schedule)[1:],
                               atol=5 * 2 * math.sqrt(2 / (N * 2)))


def test_bad_variances_are_named():
    s, a, b, d = _model()
    with pytest.raises(ValueError, match="unknown variance 'small'.*FittedVariance"):
        d.with_variance("small")
    short = FittedVariance(x0_mse=np.ones(3), decoder_log_variance=-5.0, num_examples=1, seconds=0.0)
    with pytest.raises(ValueError, match="covers 3 steps but the schedule has T = 12"):
        d.with_variance(short)


def test_round_trip_through_a_dict():
    s, a, b, d = _model()
    fitted = fit_variance(d, torch.as_tensor(_data(100)))
    again = FittedVariance.from_dict(fitted.to_dict())
    np.testing.assert_array_equal(again.log_variance(s), fitted.log_variance(s))


def test_fit_on_a_subset_of_steps():
    """Fitting only some steps gives those steps' fit (within the Monte-Carlo error) and NaN elsewhere."""
    s, a, b, d = _model()
    x0 = torch.as_tensor(_data(5000))
    full = fit_variance(d, x0, batch_size=5000, seed=1)
    part = fit_variance(d, x0, batch_size=5000, timesteps=[1, 4, 9], seed=2)
    kept = np.array([0, 3, 8])
    assert np.isnan(np.delete(part.x0_mse, kept)).all()
    np.testing.assert_allclose(part.x0_mse[kept], full.x0_mse[kept], rtol=5 * 2 * math.sqrt(2 / (5000 * 2)))
    with pytest.raises(ValueError, match="including 1"):
        fit_variance(d, x0, timesteps=[2, 3])
