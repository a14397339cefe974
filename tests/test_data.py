"""Data loaders: Olivetti and MNIST from ../shared/data, user image folders, and their errors.

The shared files are the ones described in ../shared/data/README.md. The online path is
tested by replacing only scikit-learn's network call with a copy of the shared .mat file.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import loadmat, savemat

import lcodec_core.paths
from lcodec_core import DataError, load_dataset

SHARED_DATA = lcodec_core.paths.CHECKOUT_DIR.parent / "shared" / "data"
OLIVETTI_MAT = SHARED_DATA / "olivettifaces.mat"
MNIST_IMAGES_GZ = SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz"
MNIST_LABELS_GZ = SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz"
# Class counts of the MNIST test set (../shared/data/README.md).
MNIST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture
def no_local_data(tmp_path, monkeypatch):
    """Every place lcodec looks for data is an empty directory (the shared copy is hidden).

    Returns the empty directories: root, LCODEC_DATA_DIR and LCODEC_HOME.
    """
    dirs = {name: tmp_path / name for name in ("root", "data_dir", "home")}
    for path in dirs.values():
        path.mkdir()
    monkeypatch.setenv("LCODEC_DATA_DIR", str(dirs["data_dir"]))
    monkeypatch.setenv("LCODEC_HOME", str(dirs["home"]))
    # ../shared/data is found beside the checkout; move the "checkout" somewhere empty.
    monkeypatch.setattr(lcodec_core.paths, "CHECKOUT_DIR", tmp_path / "checkout")
    return dirs


# ----------------------------------------------------------------------------- Olivetti

def test_olivetti_split_sizes_and_shapes(olivetti):
    assert olivetti.name == "olivetti"
    assert len(olivetti.train) == 320 and len(olivetti.test) == 80
    assert olivetti.num_classes == 40 and len(olivetti.classes) == 40
    assert olivetti.input_shape == (1, 64, 64)
    assert olivetti.train.images.shape == (320, 1, 64, 64)
    assert olivetti.train.images.dtype == torch.float32
    assert olivetti.train.targets.dtype == torch.long
    assert torch.bincount(olivetti.train.targets, minlength=40).tolist() == [8] * 40
    assert torch.bincount(olivetti.test.targets, minlength=40).tolist() == [2] * 40
    image, label = olivetti.train[0]
    assert image.shape == (1, 64, 64) and isinstance(label, int)


def test_olivetti_train_and_test_partition_the_400_faces(olivetti):
    train, test = set(olivetti.train.sources), set(olivetti.test.sources)
    assert len(train) == 320 and len(test) == 80
    assert not train & test
    assert train | test == {f"olivettifaces.mat#{k}" for k in range(400)}


def test_olivetti_labels_follow_the_file_order(olivetti):
    """Person of image k is k // 10 (../shared/data/README.md)."""
    for split in (olivetti.train, olivetti.test):
        for source, target in zip(split.sources, split.targets.tolist()):
            assert int(source.rsplit("#", 1)[1]) // 10 == target


def test_olivetti_normalised_with_training_statistics(olivetti):
    train = olivetti.train.images
    assert abs(float(train.mean())) < 1e-4
    assert abs(float(train.std()) - 1) < 1e-3
    assert abs(float(olivetti.test.images.mean())) < 0.2
    assert 0 <= olivetti.mean <= 1 and 0 < olivetti.std <= 1


def test_to_pixels_gives_back_the_files_grey_levels(olivetti):
    faces = loadmat(str(OLIVETTI_MAT))["faces"]
    upright = faces.T.reshape(400, 64, 64).transpose(0, 2, 1).astype(np.float64)
    expected = np.round((upright - upright.min()) / (upright.max() - upright.min()) * 255)
    pixels = olivetti.to_pixels(olivetti.train.images[:5])
    assert pixels.shape == (5, 64, 64) and pixels.dtype == np.uint8
    for row, source in zip(pixels, olivetti.train.sources[:5]):
        k = int(source.rsplit("#", 1)[1])
        assert np.abs(row.astype(int) - expected[k]).max() <= 1
    single = olivetti.to_pixels(olivetti.test.images[0])
    assert single.shape == (64, 64) and single.dtype == np.uint8


def test_info_names_identity_and_source(olivetti):
    info = olivetti.info("test", 3)
    assert (info.split, info.index) == ("test", 3)
    assert info.identity == int(olivetti.test.targets[3])
    assert info.identity_name == olivetti.classes[info.identity]
    assert info.source == olivetti.test.sources[3]
    assert olivetti.info("train", 319).identity == int(olivetti.train.targets[319])
    with pytest.raises(IndexError, match=r"\[0, 320\)"):
        olivetti.info("train", 320)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        olivetti.info("validation", 0)


def test_split_is_deterministic_per_seed(olivetti):
    again = load_dataset("olivetti", seed=0)
    assert again.train.sources == olivetti.train.sources
    assert again.test.sources == olivetti.test.sources
    assert torch.equal(again.train.images, olivetti.train.images)
    other = load_dataset("olivetti", seed=1)
    assert other.test.sources != olivetti.test.sources
    assert torch.bincount(other.test.targets, minlength=40).tolist() == [2] * 40


# ----------------------------------------------------------------------------- MNIST

def test_mnist_split_sizes_shapes_and_balance(mnist):
    assert len(mnist.train) == 8000 and len(mnist.test) == 2000
    assert mnist.input_shape == (1, 28, 28)
    assert mnist.classes == [str(d) for d in range(10)]
    test_counts = torch.bincount(mnist.test.targets, minlength=10).tolist()
    train_counts = torch.bincount(mnist.train.targets, minlength=10).tolist()
    for count, n_test, n_train in zip(MNIST_CLASS_COUNTS, test_counts, train_counts):
        assert abs(n_test - 0.2 * count) <= 1
        assert n_test + n_train == count
    assert abs(float(mnist.train.images.mean())) < 1e-4
    assert abs(float(mnist.train.images.std()) - 1) < 1e-3
    assert not set(mnist.train.sources) & set(mnist.test.sources)


def test_mnist_split_is_deterministic_per_seed(mnist):
    assert load_dataset("mnist", seed=0).test.sources == mnist.test.sources
    assert load_dataset("mnist", seed=5).test.sources != mnist.test.sources


# ----------------------------------------------------------------------------- missing data

@pytest.mark.parametrize("name, filename", [("olivetti", "olivettifaces.mat"),
                                            ("mnist", "t10k-images-idx3-ubyte")])
def test_missing_data_says_where_it_looked_and_how_to_provide_it(no_local_data, name, filename):
    assert lcodec_core.paths.data_search_dirs()[-1] != SHARED_DATA  # the shared copy is hidden
    with pytest.raises(DataError) as caught:
        load_dataset(name, root=no_local_data["root"])
    message = str(caught.value)
    assert filename in message
    for directory in no_local_data.values():
        assert str(directory) in message
    assert "LCODEC_DATA_DIR" in message
    assert "LCODEC_OFFLINE" in message


def test_online_olivetti_uses_scikit_learn_download(no_local_data, monkeypatch, olivetti):
    """Only the network call is replaced: it 'downloads' the shared .mat into sklearn's folder."""
    import sklearn.datasets._olivetti_faces as sk_olivetti
    monkeypatch.delenv("LCODEC_OFFLINE")
    calls = []

    def fake_fetch_remote(remote, dirname=None, n_retries=3, delay=1):
        calls.append((remote.filename, dirname))
        target = Path(dirname) / remote.filename
        shutil.copyfile(OLIVETTI_MAT, target)
        return str(target)

    monkeypatch.setattr(sk_olivetti, "_fetch_remote", fake_fetch_remote)
    online = load_dataset("olivetti")
    assert len(calls) == 1
    assert Path(calls[0][1]).is_relative_to(no_local_data["home"])  # cached under LCODEC_HOME
    assert torch.equal(online.train.images, olivetti.train.images)
    assert torch.equal(online.test.images, olivetti.test.images)
    assert torch.equal(online.train.targets, olivetti.train.targets)
    assert online.mean == olivetti.mean and online.std == olivetti.std
    # The second load reuses scikit-learn's cache: no second download.
    assert torch.equal(load_dataset("olivetti").train.images, olivetti.train.images)
    assert len(calls) == 1


def test_failed_download_says_where_it_looked(no_local_data, monkeypatch):
    import sklearn.datasets._olivetti_faces as sk_olivetti
    from urllib.error import URLError
    monkeypatch.delenv("LCODEC_OFFLINE")

    def unreachable(remote, dirname=None, n_retries=3, delay=1):
        raise URLError("network is unreachable")

    monkeypatch.setattr(sk_olivetti, "_fetch_remote", unreachable)
    with pytest.raises(DataError, match="network is unreachable") as caught:
        load_dataset("olivetti")
    assert str(no_local_data["data_dir"]) in str(caught.value)


# ----------------------------------------------------------------------------- corrupt files

def test_corrupt_olivetti_mat_is_a_clear_error(tmp_path):
    path = tmp_path / "olivettifaces.mat"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DataError, match="not a readable MATLAB file") as caught:
        load_dataset("olivetti", root=tmp_path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("content, found", [
    ({"faces": np.zeros((10, 10), dtype=np.uint8)}, r"found \(10, 10\)"),
    ({"pictures": np.zeros((4096, 400), dtype=np.uint8)}, "found None"),
])
def test_olivetti_mat_with_wrong_shape_is_a_clear_error(tmp_path, content, found):
    savemat(str(tmp_path / "olivettifaces.mat"), content)
    with pytest.raises(DataError, match=r"expected key 'faces' with shape \(4096, 400\)") as caught:
        load_dataset("olivetti", root=tmp_path)
    assert caught.match(found)


def _mnist_images_bytes() -> bytes:
    return gzip.decompress(MNIST_IMAGES_GZ.read_bytes())


def _corrupt_deflate_stream(data: bytes) -> bytes:
    """A gzip file with a valid header whose compressed body is garbage (zlib.error on read)."""
    packed = bytearray(gzip.compress(data))
    for i in range(20, len(packed) - 8):
        packed[i] ^= 0xFF
    return bytes(packed)


@pytest.mark.parametrize("filename, make, message", [
    ("t10k-images-idx3-ubyte", lambda: _mnist_images_bytes()[:100_000], "truncated"),
    ("t10k-images-idx3-ubyte", lambda: np.random.default_rng(0).bytes(4096), "not an IDX file"),
    ("t10k-images-idx3-ubyte.gz", lambda: np.random.default_rng(0).bytes(4096), "could not be read"),
    ("t10k-images-idx3-ubyte.gz", lambda: MNIST_IMAGES_GZ.read_bytes()[:50_000], "could not be read"),
    ("t10k-images-idx3-ubyte.gz", lambda: _corrupt_deflate_stream(_mnist_images_bytes()[:20_000]),
     "could not be read"),
], ids=["truncated", "garbage", "garbage-gz", "truncated-gz", "corrupt-deflate"])
def test_bad_mnist_idx_is_a_clear_error(tmp_path, filename, make, message):
    (tmp_path / filename).write_bytes(make())
    shutil.copyfile(MNIST_LABELS_GZ, tmp_path / MNIST_LABELS_GZ.name)
    with pytest.raises(DataError, match=message) as caught:
        load_dataset("mnist", root=tmp_path)
    assert filename in str(caught.value)


def test_mnist_labels_that_disagree_with_images_are_a_clear_error(tmp_path):
    labels = gzip.decompress(MNIST_LABELS_GZ.read_bytes())
    short = labels[:4] + (100).to_bytes(4, "big") + labels[8:108]
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(short)
    shutil.copyfile(MNIST_IMAGES_GZ, tmp_path / MNIST_IMAGES_GZ.name)
    with pytest.raises(DataError, match="disagree"):
        load_dataset("mnist", root=tmp_path)


# ----------------------------------------------------------------------------- folders

# Each image is one flat grey level, so the loaded pixels are known exactly.
FOLDER_IMAGES = {
    "alice": [("L", (40, 50), 20), ("L", (64, 64), 40), ("RGB", (80, 70), (60, 60, 60)),
              ("L", (30, 30), 80), ("RGB", (100, 64), (100, 100, 100))],
    "bob": [("RGB", (64, 64), (120, 120, 120)), ("L", (50, 40), 140), ("L", (70, 90), 160),
            ("RGB", (32, 32), (180, 180, 180)), ("L", (64, 48), 200)],
    "carol": [("L", (20, 20), 210), ("RGB", (90, 90), (220, 220, 220)), ("L", (64, 64), 230),
              ("L", (66, 65), 240), ("RGB", (48, 64), (250, 250, 250))],
}


def _grey(value) -> int:
    return value if isinstance(value, int) else value[0]


@pytest.fixture
def image_folder(tmp_path):
    """An ImageFolder of 3 identities x 5 small PNGs (grey and RGB, assorted sizes)."""
    root = tmp_path / "faces"
    for identity, images in FOLDER_IMAGES.items():
        (root / identity).mkdir(parents=True)
        for k, (mode, size, colour) in enumerate(images):
            Image.new(mode, size, colour).save(root / identity / f"{k}.png")
    (root / "alice" / "notes.txt").write_text("not an image; ignored")
    return root


def test_folder_images_are_resized_to_64_grey(image_folder):
    bundle = load_dataset(f"folder:{image_folder}")
    assert bundle.classes == ["alice", "bob", "carol"]
    assert bundle.input_shape == (1, 64, 64)
    assert len(bundle.train) == 12 and len(bundle.test) == 3  # one test image per identity
    assert torch.bincount(bundle.test.targets).tolist() == [1, 1, 1]
    for split in ("train", "test"):
        dataset = getattr(bundle, split)
        pixels = bundle.to_pixels(dataset.images)
        for index in range(len(dataset)):
            info = bundle.info(split, index)
            identity, file = info.source.split("/")
            assert identity == info.identity_name
            expected = _grey(FOLDER_IMAGES[identity][int(Path(file).stem)][2])
            assert np.abs(pixels[index].astype(int) - expected).max() <= 1


def test_folder_in_colour(image_folder):
    bundle = load_dataset(f"folder:{image_folder}", channels=3, image_size=32)
    assert bundle.input_shape == (3, 32, 32)
    assert bundle.to_pixels(bundle.train.images).shape == (12, 32, 32, 3)


def test_folder_with_a_non_image_png_is_a_clear_error(image_folder):
    (image_folder / "bob" / "broken.png").write_bytes(b"this is not a PNG file at all")
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        load_dataset(f"folder:{image_folder}")


@pytest.mark.parametrize("identities", [[], ["alice"]])
def test_folder_with_fewer_than_two_identities_is_a_clear_error(tmp_path, identities):
    for identity in identities:
        (tmp_path / identity).mkdir()
        Image.new("L", (8, 8), 0).save(tmp_path / identity / "0.png")
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'") as caught:
        load_dataset("cifar")
    for choice in ("olivetti", "mnist", "folder:PATH"):
        assert choice in str(caught.value)
