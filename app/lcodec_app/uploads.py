"""Uploaded checkpoints and image-folder zips, checked before anything is used.

Checkpoints load only through :func:`models.load_checkpoint` (``torch.load(weights_only=True)``:
a pickle that would run code is refused and nothing in it runs). Zips are unpacked into a
fresh temporary directory after every member is checked: no absolute paths, no ``..``, no
links, only image files, bounded count, size and compression ratio (zip bombs); the images
are read into memory and the directory is deleted. Every problem raises :class:`UploadError`
with a message the page shows as is; the session keeps working.
"""
from __future__ import annotations

import stat
import tempfile
import zipfile
import zlib
from io import BytesIO
from pathlib import Path, PurePosixPath

from lcodec_core.data import IMAGE_EXTENSIONS, DataBundle, DataError, load_dataset
from models import Checkpoint, CheckpointError, load_checkpoint

MAX_UPLOAD_BYTES = 50 * 2**20      # also server.maxUploadSize in app/.streamlit/config.toml
MAX_UNPACKED_BYTES = 200 * 2**20   # total size of the unpacked images
MAX_FILES = 5000                   # images in one zip
MAX_RATIO = 200                    # uncompressed / compressed size of one member


class UploadError(ValueError):
    """An upload was refused; the message says why and what is expected."""


def _check_size(data: bytes, what: str) -> None:
    if not data:
        raise UploadError(f"the {what} is empty (0 bytes)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"the {what} is {len(data) / 2**20:.0f} MB; the limit is "
                          f"{MAX_UPLOAD_BYTES // 2**20} MB")


def load_uploaded_checkpoint(data: bytes) -> Checkpoint:
    """An lcodec checkpoint from uploaded bytes (weights only; nothing is executed)."""
    _check_size(data, "checkpoint")
    with tempfile.TemporaryDirectory(prefix="lcodec-upload-") as folder:
        path = Path(folder) / "upload.pt"
        path.write_bytes(data)
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as error:
            raise UploadError(str(error).replace(str(path), "the uploaded file")) from None
    return checkpoint


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The image members of ``archive``, after refusing anything unsafe."""
    members, total = [], 0
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        if info.filename.startswith(("/", "\\")) or ".." in name.parts or ":" in info.filename:
            raise UploadError(f"the zip holds an unsafe path {info.filename!r}; expected "
                              f"relative paths like person_a/photo1.png")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadError(f"the zip holds a link {info.filename!r}; links are not accepted")
        if info.is_dir() or name.name.startswith(".") or "__MACOSX" in name.parts:
            continue
        if name.suffix.lower() not in IMAGE_EXTENSIONS:
            raise UploadError(f"{info.filename!r} is not an image; expected only "
                              f"{', '.join(IMAGE_EXTENSIONS)} files")
        if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
            raise UploadError(f"{info.filename!r} expands {info.file_size / info.compress_size:.0f}x;"
                              f" refused as a possible zip bomb")
        total += info.file_size
        members.append(info)
    if len(members) > MAX_FILES:
        raise UploadError(f"the zip holds {len(members)} images; the limit is {MAX_FILES}")
    if total > MAX_UNPACKED_BYTES:
        raise UploadError(f"the zip unpacks to {total / 2**20:.0f} MB; the limit is "
                          f"{MAX_UNPACKED_BYTES // 2**20} MB")
    if not members:
        raise UploadError("the zip holds no images")
    return members


def _dataset_root(folder: Path) -> Path:
    """The folder whose subfolders are identities (skipping one wrapping folder)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        inner = [p for p in entries[0].iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(inner) >= 2:
            return entries[0]
    return folder


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Copy one member to ``target``, never more bytes than its header declares."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(info) as source, open(target, "wb") as sink:
        written = 0
        while chunk := source.read(1 << 20):
            written += len(chunk)
            if written > info.file_size:  # the header lied about the size
                raise UploadError(f"{info.filename!r} is larger than its zip header says")
            sink.write(chunk)


def load_image_zip(data: bytes, name: str = "upload") -> DataBundle:
    """A data set from a zip of ``identity/image`` files (grey, 64x64), held in memory."""
    _check_size(data, "zip")
    try:
        archive = zipfile.ZipFile(BytesIO(data))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise UploadError(f"not a readable zip file ({error})") from None
    with archive, tempfile.TemporaryDirectory(prefix="lcodec-zip-") as folder:
        root = Path(folder).resolve()
        for info in _safe_members(archive):
            target = (root / info.filename).resolve()
            if root not in target.parents:
                raise UploadError(f"the zip member {info.filename!r} would land outside the "
                                  f"upload folder")
            try:
                _extract(archive, info, target)
            except UploadError:
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
                    NotImplementedError, ValueError) as error:  # corrupt, encrypted, odd method
                raise UploadError(f"{info.filename!r} could not be unpacked "
                                  f"({error.__class__.__name__}: {str(error)[:200]})") from None
        try:
            bundle = load_dataset(f"folder:{_dataset_root(root)}")
        except (DataError, ValueError) as error:
            raise UploadError(str(error).replace(str(root), name)) from None
    bundle.name = f"upload:{name}"
    return bundle


def check_compatible(checkpoint: Checkpoint, bundle: DataBundle) -> None:
    """Refuse a checkpoint whose input shape or classes do not fit the data."""
    meta = checkpoint.metadata
    if tuple(meta.get("input_shape", ())) != tuple(bundle.input_shape):
        raise UploadError(f"the checkpoint expects images of shape {tuple(meta.get('input_shape', ()))}"
                          f" but the data has {tuple(bundle.input_shape)}")
    if int(meta.get("num_classes", -1)) != bundle.num_classes:
        raise UploadError(f"the checkpoint has {meta.get('num_classes')} classes but the data has "
                          f"{bundle.num_classes} ({', '.join(bundle.classes[:5])}...)")
    if "recipe" not in meta:
        raise UploadError("the checkpoint has no training recipe in its metadata; it is needed "
                          "to unlearn (weight decay) and to retrain for the audit")
