"""Data sets: pixel mapping, digits against sklearn, and each file format read from tiny fixtures
written here in the real on-disk format (idx, CIFAR-10 binary batches, PNG)."""

import gzip
import math

import numpy as np
import pytest
import torch

from ppl_diffusion.data import (
    DATASETS, TOYS_2D, Dataset, gaussian, load_cifar10, load_dataset, load_digits, load_image_folder,
    load_mnist, to_model_space, to_uint8, toy_2d,
)
from ppl_diffusion.distributions import DiscretizedGaussian, make_decoder


# ------------------------------------------------------------------------ fixture writers (real formats)
def write_idx(path, array, *, magic=None):
    """An unsigned-byte idx file: big-endian magic 0x000008<ndim>, the sizes, the bytes (gzipped if .gz)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x00000800 + array.ndim if magic is None else magic
    data = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(data)


def write_mnist(root, *, gz=False, n_train=5, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for name, a in arrays.items():
        write_idx(root / (name + (".gz" if gz else "")), a)
    return arrays


def write_cifar_batch(path, images, labels):
    """Records of 1 label byte + 3072 image bytes (R plane, G plane, B plane, each 32x32 row-major)."""
    labels = np.asarray(labels, np.uint8)[:, None]
    records = np.concatenate([labels, np.asarray(images, np.uint8).reshape(len(labels), -1)], axis=1)
    records.tofile(path)


def write_pngs(root, arrays, dtype=np.uint8):
    """PNGs img_00.png, img_01.png, ...: [H, W] arrays as grayscale, [H, W, 3 or 4] as RGB(A)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(np.asarray(a, dtype)).save(root / f"img_{i:02d}.png")


# ------------------------------------------------------------------------ pixels
def test_pixel_mapping_round_trips_and_hits_the_bin_centres():
    v = torch.arange(256, dtype=torch.uint8)
    x = to_model_space(v)
    assert x.dtype == torch.float32 and x[0] == -1.0 and x[-1] == 1.0
    centres = torch.tensor([-1 + 2 * k / 255 for k in range(256)], dtype=torch.float64).float()
    assert torch.equal(x, centres)
    assert torch.equal(to_uint8(x), v)
    # the decoder's float32 grid is within an ulp of these values, and its validation accepts every one
    d = DiscretizedGaussian(torch.zeros(256), torch.ones(256), bins=256, validate_args=True)
    assert torch.allclose(d._grid(x), x, atol=1e-4 / 256, rtol=0)  # the decoder checks to this tolerance
    assert torch.isfinite(d.log_prob(x)).all()


def test_to_uint8_rounds_and_clips():
    x = torch.tensor([-3.0, -1.0, -1 + 0.4 / 127.5, -1 + 0.6 / 127.5, 0.999, 5.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 1, 255, 255]


def test_pixel_mapping_rejects_bad_input():
    with pytest.raises(TypeError, match="dtype"):
        to_model_space(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="0..256"):
        to_model_space(np.array([0, 256]))
    with pytest.raises(ValueError, match="non-finite"):
        to_uint8(torch.tensor([0.0, float("nan")]))


# ------------------------------------------------------------------------ digits
def test_digits_shapes_levels_and_split_match_sklearn():
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    d = load_digits()
    assert d.train.shape == (1437, 1, 8, 8) and d.test.shape == (360, 1, 8, 8) and d.event_shape == (1, 8, 8)
    assert d.bins == 256 and d.decoder == "discretized" and d.num_dims == 64 and d.train.dtype == torch.float32
    levels = {round(v * 255 / 16) for v in range(17)}  # exact: v*255/16 is never a .5 tie
    expected = sorted(k / 127.5 - 1 for k in levels)
    assert len(levels) == 17
    np.testing.assert_allclose(torch.unique(torch.cat([d.train, d.test])).double().numpy(), expected, atol=1e-7)

    images = datasets.load_digits().images
    train, test = train_test_split(np.rint(images * 255 / 16).astype(np.uint8), test_size=0.2, random_state=0)
    assert torch.equal(to_uint8(d.train)[:, 0], torch.from_numpy(train))
    assert torch.equal(to_uint8(d.test)[:, 0], torch.from_numpy(test))
    assert d.train_labels.shape == (1437,) and set(d.train_labels.tolist()) == set(range(10))
    decoder = d.make_decoder()
    assert decoder.bins == 256 and type(decoder) is type(make_decoder(d.decoder))


# ------------------------------------------------------------------------ MNIST
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_mnist_reads_idx_files_exactly(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    d = load_mnist(tmp_path)
    assert d.train.shape == (5, 1, 28, 28) and d.test.shape == (3, 1, 28, 28) and d.bins == 256
    assert torch.equal(to_uint8(d.train)[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.uint8)))
    assert torch.equal(to_uint8(d.test)[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.uint8)))
    assert d.train_labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert d.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_mnist_bad_magic_names_the_file_and_the_magic(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), magic=0x00000801)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte has magic number 0x00000801, expected 0x00000803"):
        load_mnist(tmp_path)


def test_mnist_truncated_and_mismatched_files_are_refused(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path)
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(ValueError, match="4 labels but train-images-idx3-ubyte has 5 images"):
        load_mnist(tmp_path)


def test_mnist_missing_file_is_one_line_naming_the_file(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"MNIST file t10k-labels-idx1-ubyte not found in") as e:
        load_mnist(tmp_path)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value) and ".gz" in str(e.value)


# ------------------------------------------------------------------------ CIFAR-10
def test_cifar10_reads_binary_batches_channel_major(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        images, labels = rng.integers(0, 256, (i % 2 + 1, 3, 32, 32)), rng.integers(0, 10, i % 2 + 1)
        write_cifar_batch(folder / name, images, labels)
        batches[name] = images, labels
    # a marked record: pure red with one green pixel at row 1, column 2
    marked = np.zeros((1, 3, 32, 32), np.uint8)
    marked[0, 0] = 255
    marked[0, 1, 1, 2] = 7
    write_cifar_batch(folder / "test_batch.bin", marked, [3])

    for root in (tmp_path, folder):  # the parent of cifar-10-batches-bin/ or the folder itself
        d = load_cifar10(root)
        train = np.concatenate([batches[f"data_batch_{k}.bin"][0] for k in range(1, 6)])
        assert d.train.shape == (len(train), 3, 32, 32) == (7, 3, 32, 32) and d.test.shape == (1, 3, 32, 32)
        assert torch.equal(to_uint8(d.train), torch.from_numpy(train.astype(np.uint8)))
        assert torch.equal(to_uint8(d.test), torch.from_numpy(marked))
        assert d.test[0, 0].eq(1.0).all() and d.test[0, 2].eq(-1.0).all() and to_uint8(d.test[0, 1, 1, 2]) == 7
        assert d.test_labels.tolist() == [3] and d.bins == 256


def test_cifar10_missing_and_truncated_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for k in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{k}.bin", np.zeros((1, 3, 32, 32)), [0])
    with pytest.raises(FileNotFoundError, match="CIFAR-10 file test_batch.bin not found") as e:
        load_cifar10(tmp_path)
    assert "\n" not in str(e.value)
    (folder / "test_batch.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(ValueError, match="test_batch.bin has 3000 bytes"):
        load_cifar10(tmp_path)


# ------------------------------------------------------------------------ PNG folder
def test_image_folder_values_channels_and_deterministic_split(tmp_path):
    # image i is constant 20 i, with pixel (0, 1) = 255 to check orientation
    arrays = [np.full((4, 6), 20 * i, np.uint8) for i in range(10)]
    for a in arrays:
        a[0, 1] = 255
    write_pngs(tmp_path / "gray", arrays)
    d = load_image_folder(tmp_path / "gray", test_fraction=0.3, seed=0)
    assert d.train.shape == (7, 1, 4, 6) and d.test.shape == (3, 1, 4, 6) and d.bins == 256
    pixels = torch.cat([to_uint8(d.train), to_uint8(d.test)])
    assert pixels[:, 0, 0, 1].eq(255).all()
    ids = pixels[:, 0, 1, 1].div(20, rounding_mode="floor")
    assert sorted(ids.tolist()) == list(range(10))
    assert to_uint8(d.train)[:, 0, 1, 1].diff().gt(0).all()  # sorted file order kept within each split
    for i, img in zip(ids.tolist(), pixels):
        expected = torch.from_numpy(arrays[i])
        assert torch.equal(img[0], expected)

    again, other = load_image_folder(tmp_path / "gray", test_fraction=0.3, seed=0), \
        load_image_folder(tmp_path / "gray", test_fraction=0.3, seed=1)
    assert torch.equal(again.train, d.train) and torch.equal(again.test, d.test)
    assert not torch.equal(other.test, d.test)

    # grayscale read as RGB on request; an RGB folder stays RGB with R, G, B in that order
    assert load_image_folder(tmp_path / "gray", grayscale=False).event_shape == (3, 4, 6)
    rgb = np.zeros((2, 4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    write_pngs(tmp_path / "rgb", rgb)
    c = load_image_folder(tmp_path / "rgb", test_fraction=0.5)
    assert c.event_shape == (3, 4, 6)
    assert [int(to_uint8(c.train[0, k]).unique()) for k in range(3)] == [10, 20, 30]
    # a mixed folder (grayscale and RGBA) is read as RGB, alpha dropped, gray copied to every channel
    write_pngs(tmp_path / "mixed", [np.full((4, 6), 50), np.full((4, 6, 4), 200)])
    m = load_image_folder(tmp_path / "mixed", test_fraction=0.5)
    assert m.event_shape == (3, 4, 6) and sorted(to_uint8(torch.cat([m.train, m.test])).unique().tolist()) == [50, 200]


def test_image_folder_refuses_16_bit_pngs(tmp_path):
    write_pngs(tmp_path, [np.full((4, 4), 1000), np.full((4, 4), 2000)], dtype=np.uint16)
    with pytest.raises(ValueError, match=r"img_00.png has mode I(;16)? .*8-bit PNG"):
        load_image_folder(tmp_path)


def test_image_folder_size_mismatch_names_the_file(tmp_path):
    write_pngs(tmp_path, [np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((3, 5))])
    with pytest.raises(ValueError, match=r"img_02.png is 5x3 \(width x height\) but img_00.png .* 4x4") as e:
        load_image_folder(tmp_path)
    assert "\n" not in str(e.value)


def test_image_folder_unreadable_or_truncated_file_is_one_line_naming_it(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32))  # incompressible: the pixel data fills the file
    write_pngs(tmp_path, noise[:2])
    (tmp_path / "img_02.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"img_02.png is not a readable image \(Pillow cannot identify") as e:
        load_image_folder(tmp_path)
    assert "\n" not in str(e.value) and "re-save it" in str(e.value)
    # a truncated PNG opens (its header is intact) and fails on decoding: the same one line
    data = (tmp_path / "img_00.png").read_bytes()
    (tmp_path / "img_02.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"img_02.png is not a readable image \(image file is truncated\)"):
        load_image_folder(tmp_path)


def test_image_folder_empty_or_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="found 0 .png"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="a.png is a file, not a folder"):
        load_image_folder(tmp_path / "a.png")
    for name in ("b.jpg", "c.JPEG"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        (tmp_path / "sub" / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"found 1 .png file\(s\) under .* but 2 other image file\(s\), "
                                                r"e.g. b.jpg: convert them to 8-bit PNG"):
        load_image_folder(tmp_path)


# ------------------------------------------------------------------------ continuous data
@pytest.mark.parametrize("name", TOYS_2D)
def test_toys_shapes_range_and_seeds(name):
    d = toy_2d(name, n_train=500, n_test=100, seed=3)
    assert d.train.shape == (500, 2) and d.test.shape == (100, 2) and d.event_shape == (2,)
    assert d.bins is None and d.decoder == "gaussian" and d.train.dtype == torch.float32
    x = torch.cat([d.train, d.test])
    assert torch.isfinite(x).all() and x.abs().max() < 1.5 and x.abs().max() > 0.5
    assert torch.equal(toy_2d(name, n_train=500, n_test=100, seed=3).train, d.train)
    assert not torch.equal(toy_2d(name, n_train=500, n_test=100, seed=4).train, d.train)


def test_gaussian_moments_and_seed():
    d = gaussian(dim=3, n_train=4000, n_test=10, mean=1.0, std=0.5, seed=0)
    assert d.train.shape == (4000, 3) and d.event_shape == (3,) and d.bins is None
    se_mean, se_std = 0.5 / math.sqrt(4000), 0.5 / math.sqrt(2 * 4000)
    assert (d.train.mean(0) - 1.0).abs().max() < 5 * se_mean
    assert (d.train.std(0) - 0.5).abs().max() < 5 * se_std
    assert torch.equal(gaussian(dim=3, n_train=4000, n_test=10, mean=1.0, std=0.5, seed=0).test, d.test)


# ------------------------------------------------------------------------ registry
def test_registry_by_name_and_errors(tmp_path):
    assert set(DATASETS) == {"digits", "mnist", "cifar10", "image_folder", "eight_gaussians", "two_moons",
                             "swiss_roll", "gaussian"}
    assert load_dataset("two_moons", n_train=10, n_test=5).train.shape == (10, 2)
    write_mnist(tmp_path)
    assert load_dataset("mnist", root=tmp_path).name == "mnist"
    with pytest.raises(ValueError, match=r"unknown dataset 'mnsit'; choose one of \[.*'mnist'.*\]"):
        load_dataset("mnsit")
    with pytest.raises(ValueError, match=r"pass --data-root <the folder holding .*> \(root= in Python\)"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="needs no files"):
        load_dataset("gaussian", root=tmp_path)


def test_dataset_checks_its_own_consistency():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="use decoder='gaussian'"):
        Dataset("x", x, x, (2,), None, "discretized")
    with pytest.raises(ValueError, match="event_shape"):
        Dataset("x", x, x, (3,), None, "gaussian")
