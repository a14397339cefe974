"""Data sets: Olivetti faces, MNIST (the 10,000-image test set, split in two) and user image folders.

``load_dataset(name)`` returns a :class:`DataBundle` with ``.train`` and ``.test``
(:class:`ImageDataset`, images normalised to zero mean and unit variance with the training
split's statistics) and a map from each index to its identity and source file, so a UI can
show thumbnails.

Local copies are found with :func:`lcodec_core.paths.data_search_dirs`; where none exists and
the machine is online, the same public data is downloaded (scikit-learn's Olivetti fetcher,
torchvision's MNIST). Set ``LCODEC_OFFLINE=1`` to forbid downloads.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .paths import data_search_dirs, download_dir

DATASETS = ("olivetti", "mnist", "folder:PATH")
OLIVETTI_FILE = "olivettifaces.mat"
MNIST_IMAGES = "t10k-images-idx3-ubyte"
MNIST_LABELS = "t10k-labels-idx1-ubyte"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".gif", ".tif", ".tiff", ".webp")
# Decoders an image folder may use, whatever a file's name says (Pillow picks a decoder from
# the content; EPS, for one, would start Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "GIF", "TIFF", "WEBP")
MAX_IMAGE_PIXELS = 40_000_000      # width * height of one image (a 40 MP photo); more is refused


class DataError(ValueError):
    """A data set is missing, corrupt or has the wrong shape."""


class ImageDataset(Dataset):
    """Images and labels held in memory.

    Parameters
    ----------
    images : Tensor, shape (N, C, H, W), float32, normalised.
    targets : LongTensor, shape (N,), class index per image.
    classes : list of str, name of each class (identity).
    sources : list of str, length N, where each image came from (file and position).
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: list[str],
                 sources: list[str]):
        if images.ndim != 4 or len(images) != len(targets) or len(sources) != len(targets):
            raise DataError(f"images (N, C, H, W), targets (N,) and sources (N,) must agree; got "
                            f"{tuple(images.shape)}, {tuple(targets.shape)}, {len(sources)}")
        self.images = images
        self.targets = targets.long()
        self.classes = list(classes)
        self.sources = list(sources)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])

    def subset(self, indices) -> "ImageDataset":
        """A new dataset holding only ``indices`` (in that order)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return ImageDataset(self.images[index], self.targets[index], self.classes,
                            [self.sources[i] for i in index.tolist()])

    def indices_of(self, identity: int) -> list[int]:
        """Indices of every image whose label is ``identity``."""
        return torch.nonzero(self.targets == identity).flatten().tolist()


@dataclass(frozen=True)
class SampleInfo:
    """What one image is: split, index in that split, identity and source."""
    split: str
    index: int
    identity: int
    identity_name: str
    source: str


@dataclass
class DataBundle:
    """A data set split into train and test, with its normalisation.

    ``mean`` and ``std`` were subtracted from / divided into the raw [0, 1] pixels.
    """
    name: str
    train: ImageDataset
    test: ImageDataset
    classes: list[str]
    mean: float
    std: float
    seed: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def info(self, split: str, index: int) -> SampleInfo:
        """Identity and source of image ``index`` of ``split`` ('train' or 'test')."""
        dataset = self._split(split)
        if not 0 <= index < len(dataset):
            raise IndexError(f"{split} index must be in [0, {len(dataset)}); got {index}")
        identity = int(dataset.targets[index])
        return SampleInfo(split, index, identity, self.classes[identity], dataset.sources[index])

    def to_pixels(self, images: torch.Tensor) -> np.ndarray:
        """Undo the normalisation: (N, C, H, W) or (C, H, W) -> uint8 (N, H, W[, C]) for display."""
        raw = (images.detach().cpu().float() * self.std + self.mean).clamp(0, 1)
        pixels = (raw * 255).round().to(torch.uint8)
        pixels = pixels.movedim(-3, -1)
        return (pixels[..., 0] if pixels.shape[-1] == 1 else pixels).numpy()

    def _split(self, split: str) -> ImageDataset:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
        return self.train if split == "train" else self.test


def load_dataset(name: str, *, root: str | os.PathLike | None = None, seed: int = 0,
                 image_size: int = 64, channels: int | None = None) -> DataBundle:
    """Load a data set by name.

    Parameters
    ----------
    name : 'olivetti', 'mnist' or 'folder:PATH' (ImageFolder layout, one subfolder per identity).
    root : directory searched first for the data files.
    seed : seed of the deterministic per-identity train/test split.
    image_size, channels : only for folders: images are resized to (image_size, image_size)
        and converted to 1 (grey) or 3 (colour) channels (default: 1).
    """
    if name == "olivetti":
        raw, labels, sources = _olivetti_raw(root)
        classes = [f"person {k:02d}" for k in range(40)]
        train_idx, test_idx = _split_per_identity(labels, seed, test_per_identity=2)
    elif name == "mnist":
        raw, labels, sources = _mnist_raw(root)
        classes = [str(d) for d in range(10)]
        train_idx, test_idx = _split_per_identity(labels, seed, test_fraction=0.2)
    elif name.startswith("folder:"):
        raw, labels, sources, classes = _folder_raw(Path(name[len("folder:"):]), image_size,
                                                    channels or 1)
        train_idx, test_idx = _split_per_identity(labels, seed, test_fraction=0.2)
    else:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return _bundle(name, raw, labels, sources, classes, train_idx, test_idx, seed)


def _bundle(name, raw: np.ndarray, labels: np.ndarray, sources: list[str], classes: list[str],
            train_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> DataBundle:
    """raw: float32 (N, C, H, W) in [0, 1]; normalise with the training split's mean and std."""
    train_raw = raw[train_idx]
    mean = float(train_raw.mean())
    std = float(train_raw.std()) or 1.0

    def make(idx):
        images = torch.from_numpy((raw[idx] - mean) / std).float()
        return ImageDataset(images, torch.from_numpy(labels[idx]).long(), classes,
                            [sources[i] for i in idx])

    return DataBundle(name, make(train_idx), make(test_idx), classes, mean, std, seed)


def _split_per_identity(labels: np.ndarray, seed: int, *, test_per_identity: int | None = None,
                        test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split: for each identity, a seeded permutation of its images; the first
    ``test_per_identity`` (or ``round(test_fraction * count)``, keeping one for training) go to
    test. Returns sorted train and test indices."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for identity in np.unique(labels):
        members = np.flatnonzero(labels == identity)
        members = members[rng.permutation(len(members))]
        n_test = test_per_identity if test_per_identity is not None else int(
            round(test_fraction * len(members)))
        n_test = min(n_test, len(members) - 1)
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def _find(filenames: tuple[str, ...], root) -> Path | None:
    """First existing file among ``filenames`` in the search directories (and a few subfolders)."""
    for directory in data_search_dirs(root):
        for sub in ("", "mnist", "MNIST/raw"):
            for filename in filenames:
                path = directory / sub / filename
                if path.is_file():
                    return path
    return None


def _missing(what: str, filenames: tuple[str, ...], root, reason: str) -> DataError:
    looked = "\n".join(f"  - {d}" for d in data_search_dirs(root))
    return DataError(
        f"{what} not found: looked for {' or '.join(filenames)} in\n{looked}\n"
        f"and could not download it ({reason}). Put the file in one of those directories, "
        f"set LCODEC_DATA_DIR to its folder, or run once on a machine with internet access.")


def _offline() -> bool:
    return os.environ.get("LCODEC_OFFLINE", "") not in ("", "0")


def _olivetti_raw(root) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Olivetti faces as float32 (400, 1, 64, 64) in [0, 1], labels (400,), sources."""
    path = _find((OLIVETTI_FILE,), root)
    if path is not None:
        faces = _read_olivetti_mat(path)
        source = path.name
    else:
        faces = _download_olivetti(root)
        source = "olivetti (scikit-learn download)"
    labels = np.arange(400) // 10
    return faces[:, None], labels, [f"{source}#{k}" for k in range(400)]


def _read_olivetti_mat(path: Path) -> np.ndarray:
    """The .mat holds key 'faces': uint8 (4096, 400), column k is image k, column-major."""
    from scipy.io import loadmat
    try:
        content = loadmat(str(path))
    except Exception as error:  # scipy raises several types for a corrupt file
        raise DataError(f"{path} is not a readable MATLAB file ({error.__class__.__name__}: "
                        f"{error}); expected the Olivetti faces .mat with key 'faces'") from None
    faces = content.get("faces")
    if faces is None or getattr(faces, "shape", None) != (4096, 400):
        found = None if faces is None else faces.shape
        raise DataError(f"{path}: expected key 'faces' with shape (4096, 400); found {found}")
    faces = np.float32(faces.T)
    faces = faces - faces.min()
    faces /= max(float(faces.max()), 1e-12)
    return faces.reshape(400, 64, 64).transpose(0, 2, 1).copy()


def _download_olivetti(root) -> np.ndarray:
    if _offline():
        raise _missing("Olivetti faces", (OLIVETTI_FILE,), root, "LCODEC_OFFLINE is set")
    from sklearn.datasets import fetch_olivetti_faces
    try:
        bunch = fetch_olivetti_faces(data_home=str(download_dir()), shuffle=False,
                                     download_if_missing=True)
    except Exception as error:  # URLError, OSError, HTTP errors, checksum mismatch
        raise _missing("Olivetti faces", (OLIVETTI_FILE,), root, str(error)) from None
    images = np.asarray(bunch.images, dtype=np.float32)
    if images.shape != (400, 64, 64):
        raise DataError(f"downloaded Olivetti faces have shape {images.shape}; expected (400, 64, 64)")
    return images


def _mnist_raw(root) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The MNIST test set as float32 (10000, 1, 28, 28) in [0, 1], labels (10000,), sources."""
    names_images = (MNIST_IMAGES + ".gz", MNIST_IMAGES)
    names_labels = (MNIST_LABELS + ".gz", MNIST_LABELS)
    images_path, labels_path = _find(names_images, root), _find(names_labels, root)
    if images_path is None or labels_path is None:
        directory = _download_mnist(root, names_images)
        images_path, labels_path = _find(names_images, directory), _find(names_labels, directory)
    images = _read_idx(images_path, ndim=3)
    labels = _read_idx(labels_path, ndim=1)
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise DataError(f"MNIST files disagree: images {images.shape}, labels {labels.shape}; "
                        f"expected (N, 28, 28) and (N,)")
    if labels.max() > 9:
        raise DataError(f"{labels_path}: labels must be digits 0-9; found {labels.max()}")
    raw = images.astype(np.float32)[:, None] / 255.0
    return raw, labels.astype(np.int64), [f"{images_path.name}#{k}" for k in range(len(labels))]


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes with ``ndim`` dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # zlib.error: corrupt deflate stream
        raise DataError(f"{path} could not be read ({error}); expected an IDX file") from None
    header = 4 + 4 * ndim
    if len(data) < header or data[:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != ndim:
        raise DataError(f"{path} is not an IDX file of {ndim}-d unsigned bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but the file holds "
                        f"{len(data) - header} bytes of data (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _download_mnist(root, filenames) -> Path:
    if _offline():
        raise _missing("MNIST test set", filenames, root, "LCODEC_OFFLINE is set")
    from torchvision.datasets import MNIST
    try:
        MNIST(str(download_dir()), train=False, download=True)
    except Exception as error:
        raise _missing("MNIST test set", filenames, root, str(error)) from None
    return download_dir() / "MNIST" / "raw"


def _folder_raw(path: Path, image_size: int, channels: int):
    """ImageFolder layout -> float32 (N, C, S, S) in [0, 1], labels, sources, class names."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (colour); got {channels}")
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist; expected a folder with one "
                        f"subfolder of images per identity")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"image folder {path} has {len(classes)} identity subfolders; expected "
                        f"at least 2 (one subfolder of images per identity)")
    images, labels, sources = [], [], []
    mode = "L" if channels == 1 else "RGB"
    for label, name in enumerate(classes):
        files = sorted(f for f in (path / name).iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"identity folder {path / name} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        for file in files:
            array = _read_image(file, image_size, mode)
            images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            labels.append(label)
            sources.append(str(file.relative_to(path)))
    return np.stack(images), np.array(labels, dtype=np.int64), sources, classes


def _read_image(file: Path, image_size: int, mode: str) -> np.ndarray:
    """One image as float32 (S, S) (mode "L") or (S, S, 3) (mode "RGB") in [0, 1].

    Any colour layout Pillow decodes is converted: palette, grey+alpha, RGBA (alpha dropped),
    CMYK. 16-bit grey (PNG, TIFF) is scaled by 1/65535 rather than clipped to white; 32-bit
    integer and float images have no agreed range and are refused. Images larger than
    :data:`MAX_IMAGE_PIXELS` are refused before their pixels are decoded.
    """
    from PIL import Image
    try:
        with Image.open(file, formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(f"{file} is {width}x{height} pixels; the limit is "
                                f"{MAX_IMAGE_PIXELS:,} pixels per image (resize it first)")
            if image.mode in ("I", "F"):
                raise DataError(f"{file} has 32-bit {'float' if image.mode == 'F' else 'integer'} "
                                f"pixels; save it as an 8- or 16-bit image")
            if image.mode.startswith("I;16"):
                grey = np.asarray(image, dtype=np.float32) / 65535.0      # (H, W)
                image = Image.fromarray(np.uint8(np.round(grey * 255)))
            image = image.convert(mode).resize((image_size, image_size))
            return np.asarray(image, dtype=np.float32) / 255.0
    except DataError:
        raise
    except Exception as error:  # Pillow's decoders raise many types on corrupt data
        raise DataError(f"{file} is not a readable image ({error.__class__.__name__}: "
                        f"{str(error)[:200]}); expected {', '.join(IMAGE_FORMATS)}") from None
