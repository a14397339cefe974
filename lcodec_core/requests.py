"""Deletion requests: which training images to forget, and the retained rest."""
from __future__ import annotations

from dataclasses import dataclass

from .data import DataBundle, ImageDataset


@dataclass
class ForgetRequest:
    """A forget set U (indices into the training split) and the retained complement.

    ``identity`` is set when the request removes every training image of one identity.
    """
    forget_indices: list[int]
    retain_indices: list[int]
    forget: ImageDataset
    retain: ImageDataset
    identity: int | None = None

    @property
    def description(self) -> str:
        if self.identity is not None:
            return f"identity {self.identity} ({len(self.forget_indices)} training images)"
        return f"{len(self.forget_indices)} training image(s) {self.forget_indices[:10]}"


def make_request(bundle: DataBundle, *, identity: int | None = None,
                 indices: list[int] | None = None, already_removed: list[int] = ()) -> ForgetRequest:
    """Build a request to forget an identity or explicit training indices.

    ``already_removed``: indices removed by earlier requests (a stream of removals); they are
    neither forgotten again nor retained.
    """
    train = bundle.train
    removed = set(already_removed)
    if (identity is None) == (indices is None):
        raise ValueError("give exactly one of identity (a class index) or indices (training indices)")
    if identity is not None:
        if not 0 <= identity < bundle.num_classes:
            raise ValueError(f"identity must be in [0, {bundle.num_classes}); got {identity}")
        forget = [i for i in train.indices_of(identity) if i not in removed]
        if not forget:
            raise ValueError(f"identity {identity} has no training images left to forget")
    else:
        forget = sorted(set(int(i) for i in indices))
        bad = [i for i in forget if not 0 <= i < len(train)]
        if bad:
            raise ValueError(f"training indices must be in [0, {len(train)}); got {bad[:5]}")
        if not forget:
            raise ValueError("the forget set is empty: give at least one training index")
        again = [i for i in forget if i in removed]
        if again:
            raise ValueError(f"training images {again[:5]} were already removed")
    forget_set = set(forget)
    retain = [i for i in range(len(train)) if i not in forget_set and i not in removed]
    if not retain:
        raise ValueError("the forget set covers the whole training set: nothing would be retained")
    return ForgetRequest(forget, retain, train.subset(forget), train.subset(retain), identity)
