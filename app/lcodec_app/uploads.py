"""Uploaded checkpoints and image-folder zips, checked before anything is used.

Checkpoints load only through :func:`lcodec_models.load_checkpoint` (``torch.load(weights_only=True)``:
a pickle that would run code is refused and nothing in it runs). When a checkpoint is refused,
the file is inspected without unpickling it (its zip directory and pickle opcodes, read by
:mod:`pickletools`, never executed) to say what it really is: not a torch file at all, a damaged
zip, a plain Python pickle, a pickle of Python objects, or a torch file that is not an lcodec
checkpoint (and which keys it lacks). Zips are unpacked into a
fresh temporary directory after every member is checked: no absolute paths, no ``..``, no
links, only image files, bounded count, size and compression ratio (zip bombs); the images
are read into memory and the directory is deleted. Every problem raises :class:`UploadError`
with a message the page shows as is; the session keeps working.
"""
from __future__ import annotations

import pickletools
import stat
import tempfile
import zipfile
import zlib
from io import BytesIO
from pathlib import Path, PurePosixPath

from lcodec_core.data import IMAGE_EXTENSIONS, DataBundle, DataError, load_dataset
from lcodec_models import Checkpoint, CheckpointError, load_checkpoint
from lcodec_models.checkpoint import FORMAT

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
            message = str(error).replace(str(path), "the uploaded file")
            raise UploadError(_refusal_reason(data, message) or message) from None
    return checkpoint


# Why a checkpoint was refused -----------------------------------------------------------------

CHECKPOINT_KEYS = ("format", "state_dict", "metadata")
MAX_PICKLE_SCAN = 64 * 2**20   # bytes of pickle stream inspected at most
_SAFE = "Nothing in it was executed."
# Globals a file written by torch.save of tensors may name (torch's weights_only allow-list,
# roughly); anything else is a Python object that only a full unpickler would build.
_TORCH_GLOBAL_MODULES = ("torch", "collections", "_codecs", "builtins", "copyreg")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
               "BINSTRING", "SHORT_BINSTRING"}


def _refusal_reason(data: bytes, message: str) -> str | None:
    """A message naming what the refused file really is, or None to keep ``message``.

    ``message`` is load_checkpoint's refusal. Nothing is unpickled here except, for a file
    torch could read (weights only) but that is not an lcodec checkpoint, a second
    ``torch.load(weights_only=True)`` to name what it holds.
    """
    if "could not be loaded with weights_only" not in message:
        if "expected a dict with format" in message:
            return _not_lcodec_reason(data)
        return None
    if data[:4] == b"PK\x03\x04":
        stream, where = _zip_pickle(data)
        if stream is None:
            return where or None  # a damaged zip, or a zip that is not a torch file
    elif len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:  # PROTO 2..5
        stream, where = data, "the file"
    else:
        return ("the uploaded file is not a torch checkpoint: it is neither a zip archive (what "
                "torch.save writes) nor a pickle (it starts with the bytes "
                f"{data[:8].hex(' ')}). Upload the .pt file the Audit page downloads, or one "
                f"written by lcodec_models.Checkpoint.save. {_SAFE}")
    try:
        names = _pickle_globals(stream)
    except Exception as error:  # pickletools' ValueError, or anything odd in a broken stream
        return (f"the uploaded file is not a safe lcodec checkpoint: {where} looks like a "
                f"pickle but is corrupt or truncated ({str(error)[:120]}). {_SAFE}")
    foreign = sorted({n for n in names if n.split(".")[0] not in _TORCH_GLOBAL_MODULES})
    if foreign:
        return (f"the uploaded file is not a safe lcodec checkpoint: it could not be loaded with "
                f"weights_only=True (it holds Python objects other than tensors, such as "
                f"{', '.join(foreign[:3])}, which only a full unpickler (one that can run code) "
                f"would build). {_SAFE}")
    if where == "the file":  # a bare pickle of plain data that torch would not read
        return ("the uploaded file is not a torch checkpoint: it is a plain Python pickle (as "
                "pickle.dump writes), not a file written by torch.save, which an lcodec "
                f"checkpoint is. {_SAFE}")
    return None


def _zip_pickle(data: bytes) -> tuple[bytes | None, str]:
    """(the pickle stream of a torch zip file, where it is), or (None, why there is none)."""
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            members = archive.infolist()
            pickles = [m for m in members if PurePosixPath(m.filename).name == "data.pkl"]
            if not pickles:
                shown = ", ".join(m.filename for m in members[:4]) or "nothing"
                return None, ("the uploaded file is not a torch checkpoint: it is a zip archive "
                              "but holds no data.pkl, which every file torch.save writes has "
                              f"(it holds {shown}{', ...' if len(members) > 4 else ''}). {_SAFE}")
            member = pickles[0]
            if member.file_size > MAX_PICKLE_SCAN:
                return None, ""
            return archive.read(member), f"its {member.filename}"
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, ValueError,
            NotImplementedError) as error:
        return None, ("the uploaded file is not a usable torch checkpoint: it is a damaged zip "
                      "archive (torch checkpoints are zip archives; this one is truncated or "
                      f"corrupt: {error.__class__.__name__}: {str(error)[:120]}). {_SAFE}")


def _pickle_globals(stream: bytes) -> list[str]:
    """"module.name" of every global a pickle stream refers to, read from its opcodes (nothing
    is built or run). Raises ValueError for a stream that is not a complete pickle."""
    names, pushed, memo = [], [], {}
    for opcode, arg, _ in pickletools.genops(BytesIO(stream[:MAX_PICKLE_SCAN])):
        name = opcode.name
        if name == "GLOBAL":  # protocol <= 3: arg is "module name"
            names.append(".".join(str(arg).split(" ", 1)))
            pushed.append(None)
        elif name == "STACK_GLOBAL":  # the module and the name were the last two pushes
            module, attr = (pushed[-2:] + [None, None])[:2] if len(pushed) >= 2 else (None, None)
            names.append(f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str)
                         else "an unnamed global")
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else None)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif name == "STOP":
            break
        else:
            pushed.append(None)
    else:
        raise ValueError("the pickle has no end (STOP)")
    return names


def _not_lcodec_reason(data: bytes) -> str | None:
    """What a torch file that is not an lcodec checkpoint holds, and which keys it lacks."""
    import torch
    try:
        payload = torch.load(BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # it loaded once already; keep load_checkpoint's message if not now
        return None
    expected = ("an lcodec checkpoint is a dict with the keys "
                + ", ".join(repr(k) for k in CHECKPOINT_KEYS) + f" (format {FORMAT!r})")
    if not isinstance(payload, dict):
        what = (f"a tensor of shape {tuple(payload.shape)}" if isinstance(payload, torch.Tensor)
                else f"a {type(payload).__name__}")
        return (f"the uploaded file is a torch file but not an lcodec checkpoint: it holds "
                f"{what}, and {expected}. A bare state_dict or tensor cannot be used: the model "
                "and its training recipe are needed too.")
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return (f"the uploaded file is a torch file but not an lcodec checkpoint: it is a bare "
                f"state_dict ({len(payload)} tensors) without the keys "
                f"{', '.join(repr(k) for k in missing)}; {expected}. The metadata (model, "
                "classes, training recipe) is needed to rebuild and retrain the model.")
    if missing:
        keys = ", ".join(repr(k) for k in list(payload)[:6]) or "none"
        return (f"the uploaded file is a torch file but not an lcodec checkpoint: it is a dict "
                f"missing the keys {', '.join(repr(k) for k in missing)} (its keys: {keys}); "
                f"{expected}.")
    return (f"the uploaded file is a torch file but not an lcodec checkpoint: its format is "
            f"{payload.get('format')!r}; {expected}.")


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
