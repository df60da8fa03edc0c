"""Data sets as float tensors in model space, each with the decoder that scores it.

Images are 8-bit pixels v ∈ {0..255} mapped to x = v / 127.5 − 1 ∈ [−1, 1], exactly the bin centres
−1 + 2v/255 of the 256-bin discretized decoder (DDPM §3.3), in ``[N x C x H x W]``; vectors are
``[N x D]`` under the Gaussian decoder.

=====================  ============================================================================
``digits``             scikit-learn's 8x8 digits (bundled): 1437 train / 360 test, ``[N x 1 x 8 x 8]``.
``mnist``              the four idx files (raw or ``.gz``) under ``root``: ``[N x 1 x 28 x 28]``.
``cifar10``            the binary batches ``cifar-10-batches-bin/*.bin`` under ``root``: ``[N x 3 x 32 x 32]``.
``image_folder``       every ``*.png`` under ``root`` (same size), split deterministically.
``eight_gaussians``,   2-D toys scaled into about [−1, 1]², ``[N x 2]``.
``two_moons``,
``swiss_roll``
``gaussian``           N(mean, std² I) in ``dim`` dimensions, ``[N x dim]``.
=====================  ============================================================================

Nothing is downloaded: a missing file is an error that says which file and where to put it.
Choose by name with :func:`~ppl_diffusion.data.load_dataset`.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATASETS", "Dataset", "PIXEL_BINS", "TOYS_2D", "eight_gaussians", "gaussian", "load_cifar10",
           "load_dataset", "load_digits", "load_image_folder", "load_mnist", "read_cifar10_batch", "read_idx",
           "to_model_space", "to_uint8", "toy_2d"]

#: The discretized decoder's number of bins for 8-bit pixels.
PIXEL_BINS = 256


@dataclass(frozen=True)
class Dataset:
    """A train and a test split in model space, and how the decoder p(x_0|x_1) should score them.

    :param str name: the registry name (see :data:`~ppl_diffusion.data.DATASETS`).
    :param torch.Tensor train: float32 ``[N_train x *event_shape]``; images in [−1, 1] on the 256 bin centres.
    :param torch.Tensor test: float32 ``[N_test x *event_shape]``.
    :param tuple event_shape: shape of one example, ``(C, H, W)`` or ``(D,)``.
    :param bins: 256 for 8-bit images (discretized decoder), ``None`` for continuous data.
    :param str decoder: ``"discretized"`` if ``bins`` else ``"gaussian"``; a name for
        :func:`~ppl_diffusion.distributions.make_decoder`.
    :param train_labels: int64 ``[N_train]`` class labels where the source has them, else ``None``.
    :param test_labels: int64 ``[N_test]``, likewise.

    Example:

    >>> import torch
    >>> from ppl_diffusion.data import Dataset
    >>> data = Dataset("mine", torch.zeros(6, 3), torch.zeros(2, 3), (3,), None, "gaussian")
    >>> data, data.num_dims
    (Dataset('mine', train=[6, 3], test=[2, 3], bins=None, decoder='gaussian'), 3)
    """

    name: str
    train: Tensor
    test: Tensor
    event_shape: tuple[int, ...]
    bins: int | None
    decoder: str
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = getattr(self, split)
            if tuple(x.shape[1:]) != tuple(self.event_shape):
                raise ValueError(f"{self.name}: {split} has shape {tuple(x.shape)} but event_shape is "
                                 f"{tuple(self.event_shape)}; stack examples along dim 0")
            labels = getattr(self, f"{split}_labels")
            if labels is not None and labels.shape != (x.shape[0],):
                raise ValueError(f"{self.name}: {split}_labels has shape {tuple(labels.shape)}, "
                                 f"expected ({x.shape[0]},), one label per example")
        expected = "discretized" if self.bins else "gaussian"
        if self.decoder != expected:
            raise ValueError(f"{self.name}: decoder {self.decoder!r} with bins = {self.bins}; "
                             f"use decoder={expected!r}")

    @property
    def num_dims(self) -> int:
        """D, the number of dimensions of one example (for bits/dim).

        Example:

        >>> from ppl_diffusion.data import load_digits
        >>> load_digits().num_dims  # 1 x 8 x 8
        64
        """
        return int(math.prod(self.event_shape))

    @property
    def level_spacing(self) -> float | None:
        """The spacing of the training split's grey levels in model space, (max − min)/(L − 1) over its L distinct
        values: 2/255 for 8-bit data using every value, 0.125 for the digits' 17 levels; ``None`` for continuous
        data (and for a split of one value).

        Example:

        >>> from ppl_diffusion.data import gaussian, load_digits
        >>> load_digits().level_spacing, gaussian(n_train=8, n_test=2).level_spacing
        (0.125, None)
        """
        if self.bins is None:
            return None
        levels = torch.unique(self.train)
        return float((levels.max() - levels.min()) / (len(levels) - 1)) if len(levels) > 1 else None

    def make_decoder(self):
        """The decoder object for :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (``decoder=...``): the discretized
        Gaussian decoder of ``bins`` bins for images, the Gaussian decoder for continuous data.

        Example:

        >>> from ppl_diffusion.data import load_digits
        >>> load_digits().make_decoder()
        DiscretizedGaussianDecoder(bins=256)
        """
        from .distributions import DiscretizedGaussianDecoder, GaussianDecoder

        return DiscretizedGaussianDecoder(self.bins) if self.bins else GaussianDecoder()

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={list(self.train.shape)}, test={list(self.test.shape)}, "
                f"bins={self.bins}, decoder={self.decoder!r})")


# ---------------------------------------------------------------------------------------- pixels
def to_model_space(pixels) -> Tensor:
    """8-bit pixels v (uint8 or integer, array or tensor) to float32 x = v / 127.5 − 1 ∈ [−1, 1].

    Computed in float64 and rounded once, so x is the float32 nearest to the bin centre −1 + 2v/255.

    :param pixels: integers in 0..255, any shape (``[N x C x H x W]`` for images).
    :returns: float32 of the same shape.
    :raises TypeError: for floating-point pixels.
    :raises ValueError: for values outside 0..255.

    Example:

    >>> import torch
    >>> from ppl_diffusion.data import to_model_space
    >>> to_model_space(torch.tensor([0, 128, 255], dtype=torch.uint8))
    tensor([-1.0000,  0.0039,  1.0000])
    """
    if not isinstance(pixels, Tensor):
        pixels = np.asarray(pixels)
        pixels = pixels if pixels.flags.writeable else pixels.copy()  # torch warns on read-only arrays
    v = torch.as_tensor(pixels)
    if v.dtype.is_floating_point or v.dtype == torch.bool or v.is_complex():
        raise TypeError(f"pixels have dtype {v.dtype}; pass 8-bit integers 0..255 (use to_uint8 on model-space floats)")
    if v.numel() and (v.min() < 0 or v.max() > 255):
        raise ValueError(f"pixels range over {int(v.min())}..{int(v.max())}; 8-bit pixels must lie in 0..255")
    return (v.to(torch.float64) / 127.5 - 1.0).to(torch.float32)


def to_uint8(x: Tensor) -> Tensor:
    """Model-space values to 8-bit pixels: round((x + 1) · 127.5) clipped to 0..255 (inverse of
    :func:`~ppl_diffusion.data.to_model_space`); use it on samples before saving them as images.

    :param torch.Tensor x: finite model-space values, any shape.
    :returns: uint8 of the same shape.

    Example:

    >>> import torch
    >>> from ppl_diffusion.data import to_model_space, to_uint8
    >>> pixels = torch.arange(256, dtype=torch.uint8)
    >>> torch.equal(to_uint8(to_model_space(pixels)), pixels)  # a round trip
    True
    >>> to_uint8(torch.tensor([-1.7, 0.0, 2.0]))  # clipped to 0..255
    tensor([  0, 128, 255], dtype=torch.uint8)
    """
    x = torch.as_tensor(x)
    if not torch.isfinite(x).all():
        raise ValueError("x has non-finite values; pixels are defined only for finite x (check the sampler)")
    return torch.round((x.to(torch.float64) + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def _images(name: str, train, test, train_labels=None, test_labels=None) -> Dataset:
    """A :class:`~ppl_diffusion.data.Dataset` from uint8 ``[N x C x H x W]`` arrays (and optional labels)."""
    train, test = to_model_space(train), to_model_space(test)
    labels = [None if y is None else torch.as_tensor(np.asarray(y, dtype=np.int64))
              for y in (train_labels, test_labels)]
    return Dataset(name, train, test, tuple(train.shape[1:]), PIXEL_BINS, "discretized", *labels)


def _vectors(name: str, x, n_train: int) -> Dataset:
    """A :class:`~ppl_diffusion.data.Dataset` of continuous vectors: the first ``n_train`` rows of ``x`` train, the rest test."""
    x = torch.as_tensor(x, dtype=torch.float32)
    return Dataset(name, x[:n_train].clone(), x[n_train:].clone(), tuple(x.shape[1:]), None, "gaussian")


# ---------------------------------------------------------------------------------------- digits
def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (values 0..16) as 8-bit images rint(v · 255/16), ``[N x 1 x 8 x 8]``.

    Split by ``train_test_split(images, test_size=0.2, random_state=0)``: 1437 train, 360 test.

    Example:

    >>> from ppl_diffusion.data import load_digits
    >>> data = load_digits()
    >>> data
    Dataset('digits', train=[1437, 1, 8, 8], test=[360, 1, 8, 8], bins=256, decoder='discretized')
    >>> data.train_labels.shape, float(data.train.min()), float(data.train.max())
    (torch.Size([1437]), -1.0, 1.0)
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    raw = sk_load_digits()
    pixels = np.rint(raw.images * 255 / 16).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    x_train, x_test, y_train, y_test = train_test_split(pixels, raw.target, test_size=0.2, random_state=0)
    return _images("digits", x_train, x_test, y_train, y_test)


# ---------------------------------------------------------------------------------------- MNIST
MNIST_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # ndim -> magic of an unsigned-byte idx file


def _find(root: Path, filename: str, missing: str) -> Path:
    for path in (root / filename, root / (filename + ".gz")):
        if path.is_file():
            return path
    raise FileNotFoundError(missing.format(file=filename, root=root))


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An unsigned-byte idx file (``.gz`` read through gzip) as a uint8 array of its ``ndim`` dims.

    Format: big-endian int32 magic (0x00000803 for images, 0x00000801 for labels), then ``ndim``
    big-endian int32 sizes, then the bytes.

    :param path: the file (``.gz``: gzipped).
    :param int ndim: 3 for images, 1 for labels.
    :rtype: numpy.ndarray

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from ppl_diffusion.data import read_idx
    >>> labels = np.array([7, 2, 1], dtype=np.uint8)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "labels-idx1-ubyte"
    ...     _ = path.write_bytes((0x801).to_bytes(4, "big") + (3).to_bytes(4, "big") + labels.tobytes())
    ...     print(read_idx(path, 1))
    [7 2 1]
    """
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    header = 4 * (1 + ndim)
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != IDX_MAGIC[ndim]:
        found = "no header" if magic is None else f"magic number 0x{magic:08x}"
        raise ValueError(f"{path} has {found}, expected 0x{IDX_MAGIC[ndim]:08x} (idx{ndim} unsigned bytes); "
                         "the file is corrupt or not this idx file (a gzipped file must end in .gz)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + math.prod(shape):
        raise ValueError(f"{path} holds {len(data) - header} bytes after its header but its sizes {shape} "
                         f"need {math.prod(shape)}; the file is truncated, download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist(root: str | Path) -> Dataset:
    """MNIST from its four idx files in ``root`` (each raw or ``.gz``): 60000 / 10000 images ``[N x 1 x 28 x 28]``.

    :param root: the folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).
    :raises FileNotFoundError: naming a missing file and where to put it.

    Example (a folder of two tiny stand-in files per split):

    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from ppl_diffusion.data import load_mnist
    >>> def idx(magic, array):
    ...     sizes = b"".join(n.to_bytes(4, "big") for n in array.shape)
    ...     return magic.to_bytes(4, "big") + sizes + array.astype(np.uint8).tobytes()
    >>> with tempfile.TemporaryDirectory() as root:
    ...     for prefix, n in (("train", 3), ("t10k", 2)):
    ...         _ = Path(root, f"{prefix}-images-idx3-ubyte").write_bytes(idx(0x803, np.zeros((n, 28, 28))))
    ...         _ = Path(root, f"{prefix}-labels-idx1-ubyte").write_bytes(idx(0x801, np.arange(n)))
    ...     data = load_mnist(root)
    >>> data, data.test_labels
    (Dataset('mnist', train=[3, 1, 28, 28], test=[2, 1, 28, 28], bins=256, decoder='discretized'), tensor([0, 1]))
    """
    root = Path(root)
    missing = ("MNIST file {file} not found in {root}; download it from the MNIST site and place the four "
               "idx files (optionally .gz) in that folder")
    splits = {}
    for split, (images_name, labels_name) in MNIST_FILES.items():
        images_path, labels_path = _find(root, images_name, missing), _find(root, labels_name, missing)
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if len(labels) != len(images):
            raise ValueError(f"{labels_path} has {len(labels)} labels but {images_path.name} has {len(images)} "
                             "images; the files come from different downloads, fetch both again")
        splits[split] = images[:, None], labels
    return _images("mnist", splits["train"][0], splits["test"][0], splits["train"][1], splits["test"][1])


# ---------------------------------------------------------------------------------------- CIFAR-10
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CIFAR10_RECORD = 1 + 3 * 32 * 32  # a label byte, then R, G, B planes of 32x32, row-major


def read_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary CIFAR-10 batch as (uint8 images ``[N x 3 x 32 x 32]``, uint8 labels ``[N]``).

    Each record is a label byte, then the red, green and blue planes of 32 x 32 bytes, row-major.

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from ppl_diffusion.data import read_cifar10_batch
    >>> images = np.arange(2 * 3 * 32 * 32).reshape(2, 3, 32, 32).astype(np.uint8)
    >>> records = np.concatenate([np.array([[3], [8]], dtype=np.uint8), images.reshape(2, -1)], axis=1)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     records.tofile(Path(folder) / "test_batch.bin")
    ...     back, labels = read_cifar10_batch(Path(folder) / "test_batch.bin")
    >>> bool((back == images).all()), labels
    (True, array([3, 8], dtype=uint8))
    """
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % CIFAR10_RECORD:
        raise ValueError(f"{path} has {data.size} bytes, not a positive multiple of the {CIFAR10_RECORD}-byte "
                         "record; it is truncated or not a CIFAR-10 binary batch (get the binary version)")
    records = data.reshape(-1, CIFAR10_RECORD)
    labels, images = records[:, 0], records[:, 1:].reshape(-1, 3, 32, 32)
    if labels.max() > 9:
        raise ValueError(f"{path} has label {int(labels.max())}; CIFAR-10 labels are 0..9 (is this CIFAR-100?)")
    return images, labels


def load_cifar10(root: str | Path) -> Dataset:
    """CIFAR-10 from its binary batches: 50000 / 10000 images ``[N x 3 x 32 x 32]``.

    ``root`` is the folder that holds ``cifar-10-batches-bin/`` (as extracted from cifar-10-binary.tar.gz)
    or that folder itself.

    :param root: the folder that holds ``cifar-10-batches-bin/``, or that folder.
    :raises FileNotFoundError: naming a missing batch and where to put it.

    Example (a stand-in folder of one record a batch):

    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from ppl_diffusion.data import load_cifar10
    >>> with tempfile.TemporaryDirectory() as root:
    ...     folder = Path(root, "cifar-10-batches-bin")
    ...     folder.mkdir()
    ...     for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    ...         np.zeros(1 + 3 * 32 * 32, dtype=np.uint8).tofile(folder / name)
    ...     data = load_cifar10(root)
    >>> data
    Dataset('cifar10', train=[5, 3, 32, 32], test=[1, 3, 32, 32], bins=256, decoder='discretized')
    """
    root = Path(root)
    folder = root / CIFAR10_DIR if (root / CIFAR10_DIR).is_dir() else root
    splits = {}
    for split, names in CIFAR10_FILES.items():
        batches = []
        for name in names:
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"CIFAR-10 file {name} not found in {folder}; download the binary version "
                    f"(cifar-10-binary.tar.gz) from the CIFAR-10 site and extract it in {root}, giving "
                    f"{CIFAR10_DIR}/ with data_batch_1.bin … data_batch_5.bin and test_batch.bin")
            batches.append(read_cifar10_batch(folder / name))
        splits[split] = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    return _images("cifar10", splits["train"][0], splits["test"][0], splits["train"][1], splits["test"][1])


# ---------------------------------------------------------------------------------------- PNG folder
_GRAY_MODES = {"1", "L", "LA"}
_COLOUR_MODES = {"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


@contextlib.contextmanager
def _open_png(Image, path: Path):
    """``Image.open(path)``, with an unreadable or truncated file (Pillow's ``OSError``, raised on opening or
    on decoding in the ``with`` body) turned into a one-line ``ValueError`` naming the file and the fix."""
    try:
        with Image.open(path) as im:
            yield im
    except OSError as e:  # PIL.UnidentifiedImageError is an OSError, as is "image file is truncated"
        unknown = isinstance(e, Image.UnidentifiedImageError)
        reason = "Pillow cannot identify its format" if unknown else " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{path} is not a readable image ({reason}); re-save it as an 8-bit PNG or move it out "
                         "of the folder") from None


def load_image_folder(root: str | Path, *, test_fraction: float = 0.1, seed: int = 0,
                      grayscale: bool | None = None) -> Dataset:
    """Every 8-bit ``*.png`` under ``root`` (subfolders included, sorted by path), ``[N x C x H x W]``.

    :param float test_fraction: share of the images in the test split, in (0, 1); at least one image
        goes to each split.
    :param int seed: the split is a permutation drawn with ``numpy.random.default_rng(seed)``; within each
        split images keep their sorted order.
    :param grayscale: ``True`` reads every image as one channel, ``False`` as RGB (alpha dropped),
        ``None`` picks one channel only when every image is grayscale.
    :raises FileNotFoundError: for a missing folder or one with fewer than two PNGs.
    :raises ValueError: for an unreadable image, one of another size or not 8 bits per channel.

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from ppl_diffusion.data import load_image_folder
    >>> with tempfile.TemporaryDirectory() as root:
    ...     for i in range(4):
    ...         Image.fromarray(np.full((6, 6), 60 * i, dtype=np.uint8)).save(f"{root}/{i}.png")
    ...     data = load_image_folder(root, test_fraction=0.25)
    >>> data
    Dataset('image_folder', train=[3, 1, 6, 6], test=[1, 1, 6, 6], bins=256, decoder='discretized')
    """
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("load_image_folder reads PNGs with Pillow; pip install pillow") from e
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction = {test_fraction!r}; pass a fraction in (0, 1), e.g. 0.1")
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "not found"
        raise FileNotFoundError(f"image folder {root} {what}; pass a folder of .png images (--data-root FOLDER, "
                                "or root= in Python)")
    files = [p for p in root.rglob("*") if p.is_file()]
    paths = sorted((p for p in files if p.suffix.lower() == ".png"), key=lambda p: p.relative_to(root).as_posix())
    if len(paths) < 2:
        others = sorted(p for p in files if p.suffix.lower() in _OTHER_IMAGE_SUFFIXES)
        seen = (f" but {len(others)} other image file(s), e.g. {others[0].name}: convert them to 8-bit PNG"
                if others else "")
        raise FileNotFoundError(f"found {len(paths)} .png file(s) under {root}{seen}; put at least two PNG images "
                                "there (subfolders are searched too)")

    modes, size = [], None
    for path in paths:
        with _open_png(Image, path) as im:
            if im.mode not in _GRAY_MODES | _COLOUR_MODES:
                raise ValueError(f"{path} has mode {im.mode} (not 8 bits per channel); save it as an 8-bit PNG")
            if size is None:
                size, first = im.size, path
            elif im.size != size:
                raise ValueError(f"{path} is {im.size[0]}x{im.size[1]} (width x height) but {first.name} and the "
                                 f"images before it are {size[0]}x{size[1]}; resize every PNG to the same size")
            modes.append(im.mode)
    if grayscale is None:
        grayscale = all(m in _GRAY_MODES for m in modes)
    mode = "L" if grayscale else "RGB"
    pixels = []
    for path in paths:
        with _open_png(Image, path) as im:
            a = np.asarray(im.convert(mode), dtype=np.uint8)
        pixels.append(a[None] if grayscale else a.transpose(2, 0, 1))  # [C, H, W]
    pixels = np.stack(pixels)

    n = len(paths)
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return _images("image_folder", pixels[train_idx], pixels[test_idx])


# ---------------------------------------------------------------------------------------- continuous
#: The 2-D toys of :func:`~ppl_diffusion.data.toy_2d`, by name.
TOYS_2D = ("eight_gaussians", "two_moons", "swiss_roll")


# (cos, sin) of the angles kπ/4, k = 0..7, written out: √½ is IEEE's correctly rounded square root, the same number
# on every machine, where torch.cos of the angles was MKL's (see ppl_diffusion.determinism) and not exact.
_HALF_SQRT2 = math.sqrt(0.5)
EIGHT_DIRECTIONS = ((1.0, 0.0), (_HALF_SQRT2, _HALF_SQRT2), (0.0, 1.0), (-_HALF_SQRT2, _HALF_SQRT2),
                    (-1.0, 0.0), (-_HALF_SQRT2, -_HALF_SQRT2), (0.0, -1.0), (_HALF_SQRT2, -_HALF_SQRT2))


def eight_gaussians(n: int, *, radius: float = 2.0, std: float = 0.1, scale: float = 0.5, seed: int | None = None):
    """``[n x 2]`` draws from 8 equal Gaussians centred at radius · (cos kπ/4, sin kπ/4), multiplied by ``scale``.

    The classic 2-D toy of the diffusion and flow literature; with the defaults the points lie in [−1.1, 1.1]².
    The centres are exact constants (``EIGHT_DIRECTIONS``), not computed with a transcendental function, so
    the draws are a function of ``seed`` alone, in any process and with any number of threads.

    :param int n: the number of points.
    :param float radius: the centres' distance from the origin.
    :param float std: each Gaussian's standard deviation.
    :param float scale: multiplies every point.
    :param seed: an integer, or ``None`` for torch's global generator.
    :returns: float32 ``[n x 2]``.

    Example:

    >>> import torch
    >>> from ppl_diffusion.data import eight_gaussians
    >>> x = eight_gaussians(1000, seed=0)
    >>> x.shape, torch.equal(x, eight_gaussians(1000, seed=0))
    (torch.Size([1000, 2]), True)
    >>> radii = x.norm(dim=1)  # scale · radius = 1, give or take the noise
    >>> bool((radii > 0.8).all() and (radii < 1.2).all())
    True
    """
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    k = torch.randint(0, 8, (n,), generator=gen)
    centres = radius * torch.tensor(EIGHT_DIRECTIONS, dtype=torch.float32)[k]
    return scale * (centres + std * torch.randn(n, 2, generator=gen))


def toy_2d(name: str, n_train: int = 10_000, n_test: int = 2_000, seed: int = 0) -> Dataset:
    """A 2-D toy in about [−1, 1]², ``[N x 2]``, train and test drawn together from ``seed``.

    ``"eight_gaussians"`` (:func:`~ppl_diffusion.data.eight_gaussians`), ``"two_moons"`` (``sklearn.datasets.make_moons``,
    noise 0.05, shifted by (−0.5, −0.25) and divided by 1.5), ``"swiss_roll"`` (``make_swiss_roll``,
    noise 0.25, the (x, z) plane divided by 4.5π, the roll's largest radius).

    :param str name: a name of :data:`~ppl_diffusion.data.TOYS_2D`.
    :param int n_train: examples in the train split.
    :param int n_test: examples in the test split.
    :param int seed: the draws' seed.

    Example:

    >>> from ppl_diffusion.data import toy_2d
    >>> toy_2d("swiss_roll", n_train=8, n_test=4)
    Dataset('swiss_roll', train=[8, 2], test=[4, 2], bins=None, decoder='gaussian')
    """
    if name not in TOYS_2D:
        raise ValueError(f"unknown 2-D toy {name!r}; choose one of {list(TOYS_2D)}")
    _check_sizes(n_train, n_test)
    n = n_train + n_test
    if name == "eight_gaussians":
        x = eight_gaussians(n, seed=seed)
    elif name == "two_moons":
        from sklearn.datasets import make_moons

        x = (make_moons(n, noise=0.05, random_state=seed)[0] - [0.5, 0.25]) / 1.5
    else:
        from sklearn.datasets import make_swiss_roll

        x = make_swiss_roll(n, noise=0.25, random_state=seed)[0][:, [0, 2]] / (4.5 * math.pi)
    return _vectors(name, x, n_train)


def gaussian(dim: int = 2, n_train: int = 10_000, n_test: int = 2_000, mean: float = 0.0, std: float = 1.0,
             seed: int = 0) -> Dataset:
    """N(mean, std² I) in ``dim`` dimensions, ``[N x dim]``: the data whose likelihood is known exactly.

    The draws are made in float64 from ``seed`` and stored as float32.

    :param int dim: the dimensions D.
    :param int n_train: examples in the train split.
    :param int n_test: examples in the test split.
    :param float mean: every coordinate's mean.
    :param float std: every coordinate's standard deviation (positive).
    :param int seed: the draws' seed.

    Example:

    >>> from ppl_diffusion.data import gaussian
    >>> data = gaussian(dim=3, n_train=4000, n_test=10, mean=1.0, std=0.5)
    >>> data.train.shape, round(float(data.train.mean()), 1), round(float(data.train.std()), 1)
    (torch.Size([4000, 3]), 1.0, 0.5)
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim = {dim!r}; pass a positive integer number of dimensions")
    if not std > 0:
        raise ValueError(f"std = {std!r}; pass a positive standard deviation")
    _check_sizes(n_train, n_test)
    gen = torch.Generator().manual_seed(seed)
    x = mean + std * torch.randn(n_train + n_test, dim, generator=gen, dtype=torch.float64)
    return _vectors("gaussian", x, n_train)


def _check_sizes(n_train: int, n_test: int) -> None:
    if not (isinstance(n_train, int) and isinstance(n_test, int) and n_train >= 1 and n_test >= 1):
        raise ValueError(f"n_train = {n_train!r}, n_test = {n_test!r}; pass positive integers")


# ---------------------------------------------------------------------------------------- registry
#: The data sets by name, each a loader returning a :class:`~ppl_diffusion.data.Dataset` (see the module docstring).
DATASETS = {
    "digits": load_digits,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "image_folder": load_image_folder,
    **{name: functools.partial(toy_2d, name) for name in TOYS_2D},
    "gaussian": gaussian,
}
# Image files an image folder skips: named when it finds too few PNGs.
_OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

FILE_DATASETS = {  # datasets read from files: what root must hold
    "mnist": "the folder holding the four MNIST idx files",
    "cifar10": f"the folder holding {CIFAR10_DIR}/",
    "image_folder": "a folder of .png images",
}


def load_dataset(name: str, root: str | Path | None = None, **kwargs) -> Dataset:
    """A :class:`~ppl_diffusion.data.Dataset` by name from :data:`~ppl_diffusion.data.DATASETS`; ``root`` only for the ones read from files,
    ``kwargs`` go to the loader (e.g. ``n_train=`` for the toys, ``test_fraction=`` for an image folder).

    :param str name: a name of :data:`~ppl_diffusion.data.DATASETS`.
    :param root: the folder of a data set read from files (``mnist``, ``cifar10``, ``image_folder``).
    :raises ValueError: for an unknown name, a missing ``root`` or a ``root`` given to a data set without files.

    Example:

    >>> from ppl_diffusion.data import load_dataset
    >>> load_dataset("eight_gaussians", n_train=8, n_test=4)
    Dataset('eight_gaussians', train=[8, 2], test=[4, 2], bins=None, decoder='gaussian')
    >>> load_dataset("mnist")
    Traceback (most recent call last):
    ...
    ValueError: dataset 'mnist' is read from files; pass --data-root <the folder holding the four MNIST idx files> (root= in Python)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if name in FILE_DATASETS:
        if root is None:
            raise ValueError(f"dataset {name!r} is read from files; pass --data-root <{FILE_DATASETS[name]}> (root= in "
                             "Python)")
        return DATASETS[name](root, **kwargs)
    if root is not None:
        raise ValueError(f"dataset {name!r} needs no files but got root={str(root)!r}; drop root "
                         f"(only {sorted(FILE_DATASETS)} read files)")
    return DATASETS[name](**kwargs)
