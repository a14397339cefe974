"""Checkpoints: a dict of tensors plus JSON metadata, saved atomically, loaded with weights_only.

File layout (``torch.save``): ``{"format": "lcodec-checkpoint-v1", "state_dict": {name: Tensor},
"metadata": "<json>"}``. Loading never unpickles code (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

FORMAT = "lcodec-checkpoint-v1"
# torch warns on stderr whenever weights_only meets a pickle protocol other than 2; a refused
# upload or file already gets one clear error (a filter, not catch_warnings: that is not
# thread-safe, and the dashboard loads uploads from several threads).
warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)


class CheckpointError(ValueError):
    """A checkpoint could not be loaded: unsafe, corrupt, or not matching the architecture."""


@dataclass
class Checkpoint:
    """A trained model and what is needed to rebuild or retrain it.

    metadata keys: model, num_classes, input_shape, classes, recipe, n, plus any extras
    (dataset, accuracies, lineage).
    """
    model: nn.Module
    metadata: dict

    @functools.cached_property
    def recipe(self):
        """The training recipe (:class:`lcodec_models.Recipe`) stored in the metadata, parsed once:
        every caller reads lam and the training settings from here."""
        from .training import Recipe
        return Recipe.from_dict(self.metadata["recipe"])

    def state_hash(self) -> str:
        """sha256 of the parameters and buffers (names, shapes and bytes), hex."""
        return state_hash(self.model)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temporary file in the same folder, fsync, then rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for value in self.model.state_dict().values():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise CheckpointError("refusing to save a model with NaN or Inf weights")
        payload = {
            "format": FORMAT,
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "metadata": json.dumps(self.metadata),
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def state_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint written by :meth:`Checkpoint.save` and rebuild its zoo model."""
    from .zoo import build_model
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as error:
        # torch's own message for a refused pickle suggests weights_only=False: not for us.
        reason = ("it holds Python objects other than tensors, which only a full unpickler "
                  "(one that can run code) would build" if isinstance(error, pickle.UnpicklingError)
                  else f"{error.__class__.__name__}: {_first_line(error)}")
        raise CheckpointError(
            f"{path} is not a safe lcodec checkpoint: it could not be loaded with "
            f"weights_only=True ({reason}). Nothing in it was executed.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: expected a dict with format {FORMAT!r}")
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise CheckpointError(f"{path}: expected a 'state_dict' mapping names to tensors")
    try:
        metadata = json.loads(payload["metadata"])
        spec = (metadata["model"], int(metadata["num_classes"]),
                tuple(int(d) for d in metadata["input_shape"]))
        # Shapes first, on the meta device (no memory): metadata asking for a huge model is
        # refused by the comparison with the tensors actually in the file.
        with torch.device("meta"):
            skeleton = build_model(*spec)
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: metadata is missing or malformed "
                              f"({error.__class__.__name__}: {str(error)[:200]})") from None
    load_state_strict(skeleton, state_dict, source=str(path), shapes_only=True)
    for name, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: {name!r} holds NaN or Inf values; refusing to load "
                                  f"a model with non-finite weights")
    model = build_model(*spec)
    load_state_strict(model, state_dict, source=str(path))
    model.eval()
    return Checkpoint(model, metadata)


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters ('' if it has none)."""
    lines = str(error).splitlines()
    return lines[0][:200] if lines else ""


def load_state_strict(model: nn.Module, state_dict: dict, source: str = "state dict", *,
                      shapes_only: bool = False) -> None:
    """Load ``state_dict`` into ``model``; on mismatch raise naming expected vs found keys/shapes.

    ``shapes_only``: compare names and shapes, load nothing (for a model on the meta device).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        shapes = [f"{k}: expected {expected[k]}, found {found[k]}"
                  for k in sorted(set(expected) & set(found)) if expected[k] != found[k]]
        parts = [f"missing keys {missing[:8]}" if missing else "",
                 f"unexpected keys {unexpected[:8]}" if unexpected else "",
                 f"shape mismatches {shapes[:8]}" if shapes else ""]
        raise CheckpointError(f"{source} does not match the architecture: "
                              + "; ".join(p for p in parts if p))
    if not shapes_only:
        model.load_state_dict(state_dict)
