"""Accuracy of a model on the splits that judge a removal (docs/ALGORITHM.md, section 10
(Judging a removal against retraining))."""
from __future__ import annotations

import torch
from torch import nn

from models.training import accuracy

from ..data import DataBundle
from ..requests import ForgetRequest


def evaluate(model: nn.Module, bundle: DataBundle, request: ForgetRequest) -> dict[str, float]:
    """Retained, forgotten and test accuracy.

    Returns ``retain_accuracy`` (retained training images), ``forget_accuracy`` (the forget
    set), ``test_accuracy`` (held-out images of identities other than a forgotten one; all
    held-out images for an index request) and ``forget_test_accuracy`` (held-out images of the
    forgotten identity; nan for an index request).
    """
    test = bundle.test
    if request.identity is not None:
        mask = test.targets == request.identity
    else:
        mask = torch.zeros(len(test), dtype=torch.bool)
    return {
        "retain_accuracy": accuracy(model, request.retain.images, request.retain.targets),
        "forget_accuracy": accuracy(model, request.forget.images, request.forget.targets),
        "test_accuracy": accuracy(model, test.images[~mask], test.targets[~mask]),
        "forget_test_accuracy": accuracy(model, test.images[mask], test.targets[mask]),
    }
