"""Accuracy of a model on the splits that judge a removal (docs/ALGORITHM.md, section 10
(Judging a removal against retraining))."""
from __future__ import annotations

import torch
from torch import nn

from lcodec_models.training import accuracy, predict

from ..data import DataBundle, ImageDataset
from ..parallel.shard import ONE_PROCESS, RetainedShard
from ..requests import ForgetRequest


def evaluate(model: nn.Module, bundle: DataBundle, request: ForgetRequest,
             shard: RetainedShard = ONE_PROCESS) -> dict[str, float]:
    """Retained, forgotten and test accuracy.

    Returns ``retain_accuracy`` (retained training images), ``forget_accuracy`` (the forget
    set), ``test_accuracy`` (held-out images of identities other than a forgotten one; all
    held-out images for an index request) and ``forget_test_accuracy`` (held-out images of the
    forgotten identity; nan for an index request). With ``shard`` (W processes, every rank
    calling with the same arguments), each rank classifies its share of the retained images
    and the counts are all-reduced; the small splits are evaluated on every rank.
    """
    test = bundle.test
    if request.identity is not None:
        mask = test.targets == request.identity
    else:
        mask = torch.zeros(len(test), dtype=torch.bool)
    return {
        "retain_accuracy": _retained_accuracy(model, request.retain, shard),
        "forget_accuracy": accuracy(model, request.forget.images, request.forget.targets),
        "test_accuracy": accuracy(model, test.images[~mask], test.targets[~mask]),
        "forget_test_accuracy": accuracy(model, test.images[mask], test.targets[mask]),
    }


def _retained_accuracy(model: nn.Module, retain: ImageDataset, shard: RetainedShard) -> float:
    """Share of the retained images classified correctly, over every rank's share."""
    if not shard.distributed:
        return accuracy(model, retain.images, retain.targets)
    targets = shard.take(retain.targets)
    correct = int((predict(model, shard.take(retain.images)).argmax(1) == targets).sum()) \
        if len(targets) else 0
    return shard.sum_float(float(correct), "accuracy") / len(retain.targets) \
        if len(retain.targets) else float("nan")
