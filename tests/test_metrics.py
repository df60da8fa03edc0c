"""The digits Fréchet distance: the formula against independent computations, the classifier, sanity."""

import numpy as np
import pytest
import torch

from ppl_diffusion.data import load_digits
from ppl_diffusion.metrics import (
    classifier_accuracy,
    digits_classifier,
    digits_fd,
    digits_features,
    feature_statistics,
    frechet_distance,
    train_digits_classifier,
)


def random_spd(rng, D, rank=None):
    A = rng.standard_normal((D, rank or D))
    return A @ A.T / D + (0 if rank else 0.1 * np.eye(D))


def fd_by_eigendecomposition(mu1, s1, mu2, s2):
    """FD with Tr((Σ_1 Σ_2)^{1/2}) = Tr((Σ_1^{1/2} Σ_2 Σ_1^{1/2})^{1/2}): √eigenvalues of a symmetric PSD."""
    w, V = np.linalg.eigh(s1)
    root1 = (V * np.sqrt(np.clip(w, 0, None))) @ V.T
    m = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(m, 0, None))))


# ------------------------------------------------------------------------------------- the formula
def test_diagonal_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_commuting_covariances():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    s1, s2 = Q @ np.diag(a) @ Q.T, Q @ np.diag(b) @ Q.T
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(expected, rel=1e-9)


def test_one_dimension():
    # N(1, 4) vs N(-2, 1): 9 + (2 - 1)²
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[1.0]]) == pytest.approx(10.0, rel=1e-12)


@pytest.mark.parametrize("D, rank", [(3, None), (20, None), (128, None), (30, 10)], ids=["D3", "D20", "D128", "rank10"])
def test_random_spd_against_eigendecomposition(D, rank):
    rng = np.random.default_rng(D)
    mu1, mu2 = rng.standard_normal(D), rng.standard_normal(D)
    s1, s2 = random_spd(rng, D, rank), random_spd(rng, D, rank)
    expected = fd_by_eigendecomposition(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_zero_for_identical_and_symmetric():
    rng = np.random.default_rng(3)
    mu, s = rng.standard_normal(16), random_spd(rng, 16)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8
    mu2, s2 = rng.standard_normal(16), random_spd(rng, 16)
    assert frechet_distance(mu, s, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu, s), rel=1e-8)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


def test_feature_statistics_are_mean_and_unbiased_covariance():
    f = np.random.default_rng(4).standard_normal((50, 3))
    mu, sigma = feature_statistics(f)
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(sigma, (f - mu).T @ (f - mu) / 49)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(f[:1])


# ------------------------------------------------------------------------------------- the classifier
@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_classifier_accuracy(digits):
    net = digits_classifier()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert digits_classifier(0) is net and digits_classifier(seed=0) is net  # memoized
    acc = classifier_accuracy(net)
    print(f"\ndigits classifier (seed 0): test accuracy {acc:.4f} ({round(acc * 360)}/360)")
    assert acc > 0.95


def test_training_is_deterministic_and_leaves_global_state(digits):
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    with torch.no_grad():  # trains all the same (the first call may come from inside no_grad)
        again = train_digits_classifier(0)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    net = digits_classifier(0)
    for (name, p), q in zip(net.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name
    f1, f2 = digits_features(digits.test), digits_features(digits.test)
    assert f1.shape == (360, 128) and f1.dtype == np.float64
    assert np.array_equal(f1, f2)
    with torch.no_grad():  # outside digits_features' single thread only float32 rounding may differ
        np.testing.assert_allclose(again.features(digits.test).double().numpy(), f1, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- the score
def test_fd_separates_data_from_noise(digits):
    gen = torch.Generator().manual_seed(0)
    n = digits.train.shape[0]
    fd_train = digits_fd(digits.train)
    fd_noise = digits_fd(torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1)
    fd_test = digits_fd(digits.test)
    print(f"\ndigits FD vs test split (360): train split (1437) {fd_train:.3f}, uniform noise (1437) {fd_noise:.3f}, "
          f"test split itself {fd_test:.2e}")
    assert abs(fd_test) < 1e-6
    assert fd_noise > 20 * fd_train, f"train {fd_train:.3f} vs noise {fd_noise:.3f}"


def test_fd_grows_with_corruption(digits):
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(digits.train.shape, generator=gen)
    fds = [digits_fd(digits.train + s * noise) for s in (0.0, 0.2, 0.5, 1.0)]
    print("\ndigits FD of train + s·N(0, 1), s = 0, 0.2, 0.5, 1:", ", ".join(f"{v:.2f}" for v in fds))
    assert all(a < b for a, b in zip(fds, fds[1:])), fds


def test_fd_reference_options(digits):
    x = digits.train[:500]
    by_name = digits_fd(x, reference="test")
    by_tensor = digits_fd(x, reference=digits.test)
    assert by_name == pytest.approx(by_tensor, rel=1e-12)
    mu1, s1 = feature_statistics(digits_features(x))
    mu2, s2 = feature_statistics(digits_features(digits.test))
    assert by_name == pytest.approx(fd_by_eigendecomposition(mu1, s1, mu2, s2), rel=1e-4, abs=1e-4)
    assert digits_fd(digits.test, reference="train") == pytest.approx(digits_fd(digits.train, reference=digits.test),
                                                                      rel=1e-6)
    # samples are clipped to [-1, 1] before the classifier
    assert digits_fd(x * 3, reference="test") == digits_fd((x * 3).clamp(-1, 1), reference="test")


@pytest.mark.parametrize("bad, error, match", [
    (torch.zeros(10, 64), ValueError, r"\(10, 64\)"),
    (torch.zeros(10, 1, 8, 8, dtype=torch.long), TypeError, "int64"),
    (torch.full((10, 1, 8, 8), float("nan")), ValueError, "non-finite"),
    (np.zeros((10, 1, 8, 8)), TypeError, "ndarray"),
], ids=["shape", "dtype", "nan", "numpy"])
def test_fd_input_checks(bad, error, match):
    with pytest.raises(error, match=match):
        digits_fd(bad)


def test_fd_unknown_reference():
    with pytest.raises(ValueError, match="'val'"):
        digits_fd(torch.zeros(4, 1, 8, 8), reference="val")
