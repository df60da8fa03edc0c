"""Sample quality for the 8x8 digits: a Fréchet distance in the features of a small digit classifier.

FID (Heusel et al. 2017) compares Gaussians fitted to Inception-v3 features of two image sets. The 8x8
digits are far from ImageNet, so :func:`digits_fd` uses the same formula on the features of
:class:`DigitsClassifier`, a small CNN trained here, deterministically and in seconds, on the digits
training split. It is a score for comparing samplers and models *on the digits only*; its values are not
FIDs and are not comparable with published FIDs.

How :func:`digits_fd` is computed, exactly:

1. **Classifier** (:class:`DigitsClassifier`, input ``[N x 1 x 8 x 8]`` in [−1, 1]):
   conv 3x3 1→32 (padding 1) + ReLU → max-pool 2x2 → conv 3x3 32→64 (padding 1) + ReLU → flatten
   (64·4·4 = 1024) → linear 1024→128 + ReLU (**the feature layer**) → linear 128→10 (logits).
2. **Training** (:func:`train_digits_classifier`): ``load_digits().train`` (1437 images) and its labels;
   PyTorch's default initialisation drawn after ``torch.manual_seed(seed)`` (default seed 0; the global
   RNG state is restored afterwards); 20 epochs of minibatches of 64 in a fresh random order per epoch
   (a ``torch.Generator`` seeded with ``seed``), cross-entropy, Adam (lr 1e-3, default betas, no weight
   decay), float32 on the CPU with one intra-op thread (for run-to-run reproducibility). No augmentation.
   Takes 3–5 s on one core; :func:`digits_classifier` memoizes the trained network per seed in-process.
   Test accuracy (360 held-out digits, seed 0): 98.06% (353/360); training accuracy 100%.
3. **Features** (:func:`digits_features`): samples are clipped to [−1, 1] (as when saved as 8-bit
   images) and mapped to the 128 post-ReLU activations of the feature layer (as FID takes Inception's
   post-ReLU pool features), in eval mode with one thread, then cast to float64. About a third of the
   units are zero on every real digit; they contribute only where samples switch them on.
4. **Statistics**: mean μ and unbiased covariance Σ (``numpy.cov``, divisor N − 1) of the features.
5. **Distance** (:func:`frechet_distance`): ||μ_1 − μ_2||² + Tr(Σ_1 + Σ_2 − 2 (Σ_1 Σ_2)^{1/2}), with
   ``scipy.linalg.sqrtm`` and pytorch-fid's safeguards (ε I added to both covariances if the square root
   is not finite; the imaginary part, which must be numerically negligible, dropped).
6. **Reference**: the 360-image test split of :func:`~ppl_diffusion.data.load_digits` by default
   (``reference="train"`` for the 1437 training images, or a tensor of images).

Sample size. The plug-in estimate is biased upwards, and the bias shrinks as the sample grows, so only
compare scores computed with the same number of samples against the same reference. Use at least 1000
samples; 1437, the size of the training split, makes the score directly comparable with the real-data
floor. Measured against the test split (seed 0): the 1437 training images 7.20 (the first 360 of them
12.74), uniform noise on [−1, 1] (1437 images) 543.1, the training images plus N(0, 0.2²) noise, clipped,
12.6.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

FEATURE_DIM = 128  # width of the feature layer
EPOCHS = 20  # training epochs over the 1437 training digits
BATCH_SIZE = 64
LR = 1e-3  # Adam's learning rate


class DigitsClassifier(nn.Module):
    """A small CNN for ``[N x 1 x 8 x 8]`` digits in [−1, 1]; :meth:`features` is its 128-d feature layer.

    Example:

    >>> import torch
    >>> from ppl_diffusion.metrics import DigitsClassifier
    >>> _ = torch.manual_seed(0)
    >>> net = DigitsClassifier()
    >>> x = torch.rand(4, 1, 8, 8) * 2 - 1
    >>> net(x).shape, net.features(x).shape
    (torch.Size([4, 10]), torch.Size([4, 128]))
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.out = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        """The post-ReLU activations of the feature layer, ``[N x 128]``."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, 32, 4, 4)
        h = F.relu(self.conv2(h))  # (N, 64, 4, 4)
        return F.relu(self.fc(h.flatten(1)))  # (N, 128)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N x 10]``."""
        return self.out(self.features(x))


def _check_images(x, what: str) -> Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{what} must be a tensor of shape [N, 1, 8, 8], got {type(x).__name__}")
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected [N, 1, 8, 8] digits in [-1, 1]")
    if not x.is_floating_point():
        raise TypeError(f"{what} has dtype {x.dtype}; pass model-space floats in [-1, 1] (x / 127.5 - 1 for pixels)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} has non-finite values; a Fréchet distance needs finite samples (check the sampler)")
    return x


class _single_thread:
    """One intra-op thread inside the block (restored after): reproducible CPU training."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def train_digits_classifier(seed: int = 0, *, epochs: int = EPOCHS) -> DigitsClassifier:
    """Train a fresh :class:`DigitsClassifier` on ``load_digits().train`` (recipe in the module docstring).

    Returns it in eval mode with frozen parameters. The global torch RNG state, the thread count and
    the grad mode are left as they were.

    :param int seed: the initialisation's and the minibatch order's seed.
    :param int epochs: passes over the training split (default 20).
    :rtype: DigitsClassifier

    Example (loads the digits and trains, seconds):

    >>> from ppl_diffusion.metrics import train_digits_classifier
    >>> net = train_digits_classifier(seed=0)  # doctest: +SKIP
    >>> net.training, any(p.requires_grad for p in net.parameters())  # doctest: +SKIP
    (False, False)
    """
    from .data import load_digits

    data = load_digits()
    x, y = data.train, data.train_labels
    # enable_grad: the first call may come from inside torch.no_grad() (e.g. via digits_features)
    with torch.random.fork_rng(devices=[]), _single_thread(), torch.enable_grad():
        torch.manual_seed(seed)
        net = DigitsClassifier()
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(x.shape[0], generator=gen)
            for i in range(0, x.shape[0], BATCH_SIZE):
                idx = perm[i:i + BATCH_SIZE]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


_CLASSIFIERS: dict[int, DigitsClassifier] = {}  # seed -> trained classifier, this process


def digits_classifier(seed: int = 0) -> DigitsClassifier:
    """The :class:`DigitsClassifier` trained with ``seed`` (eval mode, frozen), trained once per process.

    The same object is returned on every call: do not modify it.

    :param int seed: the training seed.

    Example (trains the classifier the first time, seconds on one core):

    >>> from ppl_diffusion.metrics import digits_classifier
    >>> digits_classifier(0) is digits_classifier(0)  # doctest: +SKIP
    True
    """
    seed = int(seed)
    if seed not in _CLASSIFIERS:
        _CLASSIFIERS[seed] = train_digits_classifier(seed)
    return _CLASSIFIERS[seed]


def classifier_accuracy(net: nn.Module | None = None, split: str = "test") -> float:
    """Fraction of the digits ``split`` (``"test"`` or ``"train"``) that ``net`` (default:
    :func:`digits_classifier`) labels correctly.

    :param torch.nn.Module net: a classifier of ``[N x 1 x 8 x 8]`` digits to ``[N x 10]`` logits.
    :param str split: ``"test"`` (360 digits) or ``"train"`` (1437).

    Example (loads the digits and trains the classifier, seconds; the module docstring's 98.06% = 353/360):

    >>> from ppl_diffusion.metrics import classifier_accuracy
    >>> round(classifier_accuracy(), 4)  # doctest: +SKIP
    0.9806
    """
    from .data import load_digits

    x, y = _split(load_digits(), split, "split")
    net = digits_classifier() if net is None else net
    with torch.no_grad(), _single_thread():
        return float((net(x).argmax(-1) == y).double().mean())


def _split(data, split: str, what: str):
    if split not in ("train", "test"):
        raise ValueError(f"{what} = {split!r}; choose 'train' or 'test' (the digits splits) or pass images")
    return getattr(data, split), getattr(data, f"{split}_labels")


@torch.no_grad()
def digits_features(x: Tensor, seed: int = 0, batch_size: int = 1024) -> np.ndarray:
    """Feature-layer activations of :func:`digits_classifier` (``seed``) for ``x`` ``[N x 1 x 8 x 8]``:
    float64 ``[N x 128]``; ``x`` is clipped to [−1, 1] first.

    :param torch.Tensor x: ``[N x 1 x 8 x 8]`` images in [−1, 1].
    :param int seed: the classifier's training seed.
    :param int batch_size: images per forward pass.

    Example (trains the classifier on its first call in a process, seconds):

    >>> import torch
    >>> from ppl_diffusion.metrics import digits_features
    >>> digits_features(torch.zeros(4, 1, 8, 8)).shape  # doctest: +SKIP
    (4, 128)
    """
    x = _check_images(x, "x").detach().to("cpu", torch.float32).clamp(-1.0, 1.0)
    net = digits_classifier(seed)
    with _single_thread():
        feats = [net.features(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(feats).double().numpy()


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D x D]`` (divisor N − 1) of ``features`` ``[N x D]``, N >= 2.

    :param numpy.ndarray features: ``[N x D]``.

    Example:

    >>> import numpy as np
    >>> from ppl_diffusion.metrics import feature_statistics
    >>> mu, sigma = feature_statistics(np.array([[0.0, 1.0], [2.0, 1.0]]))
    >>> mu.tolist(), sigma.tolist()
    ([1.0, 1.0], [[2.0, 0.0], [0.0, 0.0]])
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features have shape {features.shape}; pass [N, D] with N >= 2 examples")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    r"""The Fréchet (2-Wasserstein²) distance between N(μ_1, Σ_1) and N(μ_2, Σ_2):

    .. math:: d^2 = \lVert \mu_1 - \mu_2 \rVert^2 + \operatorname{Tr}\big(\Sigma_1 + \Sigma_2
              - 2 (\Sigma_1 \Sigma_2)^{1/2}\big).

    As pytorch-fid's ``calculate_frechet_distance``: the square root by ``scipy.linalg.sqrtm``; if it is
    not finite (singular product), ``eps · I`` is added to both covariances and it is taken again; a
    complex result whose diagonal has imaginary parts above 1e-3 is an error, otherwise its real part is
    used.

    :param mu1: μ_1 ``[D]``.
    :param sigma1: Σ_1 ``[D x D]``.
    :param mu2: μ_2 ``[D]``.
    :param sigma2: Σ_2 ``[D x D]``.
    :param float eps: the diagonal offset of the fallback.
    :raises ValueError: on mismatched shapes or a non-negligible imaginary component.

    Example: N(0, 1) and N(1, 4) are 1 + 1 + 4 − 2·2 = 2 apart.

    >>> from ppl_diffusion.metrics import frechet_distance
    >>> round(frechet_distance([0.0], [[1.0]], [1.0], [[4.0]]), 6)
    2.0
    """
    try:
        from scipy import linalg
    except ImportError as e:  # pragma: no cover - scipy comes with scikit-learn
        raise ImportError("frechet_distance needs scipy.linalg.sqrtm; pip install scipy") from e
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means have shapes {mu1.shape} and {mu2.shape}; pass two vectors of the same length D")
    D = mu1.shape[0]
    if sigma1.shape != (D, D) or sigma2.shape != (D, D):
        raise ValueError(f"covariances have shapes {sigma1.shape} and {sigma2.shape}; both must be ({D}, {D})")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sqrtm of a singular product; checked below
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(D) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(Σ_1 Σ_2) has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}; "
                             "the covariances are not positive semi-definite (check for NaNs or too few samples)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@functools.lru_cache(maxsize=None)
def _reference_statistics(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from .data import load_digits

    return feature_statistics(digits_features(_split(load_digits(), split, "reference")[0], seed))


def digits_fd(samples: Tensor, reference: str | Tensor = "test", seed: int = 0) -> float:
    """Fréchet distance between ``samples`` and the digits ``reference`` in :class:`DigitsClassifier`
    features (computed as the module docstring says). Lower is better; 0 for identical sets.

    :param torch.Tensor samples: ``[N x 1 x 8 x 8]`` in [−1, 1] (clipped), N >= 2; use at least 1000 and
        always the same N when comparing.
    :param reference: ``"test"`` (360 held-out digits, default), ``"train"`` (1437), or images
        ``[M x 1 x 8 x 8]``.
    :param int seed: the classifier's training seed.

    Example (trains the classifier on its first call in a process, seconds; noise scores about 543):

    >>> import torch
    >>> from ppl_diffusion.metrics import digits_fd
    >>> digits_fd(torch.rand(1437, 1, 8, 8) * 2 - 1) > 100  # doctest: +SKIP
    True
    """
    mu1, sigma1 = feature_statistics(digits_features(_check_images(samples, "samples"), seed))
    if isinstance(reference, str):
        mu2, sigma2 = _reference_statistics(reference, int(seed))
    else:
        mu2, sigma2 = feature_statistics(digits_features(_check_images(reference, "reference"), seed))
    return frechet_distance(mu1, sigma1, mu2, sigma2)


__all__ = ["DigitsClassifier", "classifier_accuracy", "digits_classifier", "digits_fd", "digits_features",
           "feature_statistics", "frechet_distance", "train_digits_classifier"]
