"""A stationary starting point: polishing the convex head, the stored |grad F|, the warning.

Known answers: after polishing, the head's part of grad F is ~0 (softmax regression on fixed
features has a unique optimum); layers before the head are bit-identical; the gradient norms
match autograd on the full objective.
"""
from __future__ import annotations

import copy
import math
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lcodec_models.stationarity import head_module, objective_gradient_norms, polish_head

LAM = 1e-2


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.body = nn.Linear(8, 5)
        self.relu = nn.ReLU()
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.relu(self.body(self.flatten(x))))


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(30) % 3
    images = torch.randn(3, 1, 2, 4, generator=generator)[targets] + \
        0.5 * torch.randn(30, 1, 2, 4, generator=generator)
    return images, targets


def full_objective_gradient(model, images, targets):
    model.zero_grad()
    loss = F.cross_entropy(model(images), targets) + 0.5 * LAM * sum(p.pow(2).sum() for p in model.parameters())
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_gradient_norms_match_autograd(data):
    images, targets = data
    torch.manual_seed(1)
    model = TwoLayer().eval()
    norms = objective_gradient_norms(model, images, targets, LAM, batch_size=7)
    grads = full_objective_gradient(copy.deepcopy(model), images, targets)
    for name, grad in grads.items():
        assert norms["per_parameter"][name] == pytest.approx(float(grad.norm()), rel=1e-4, abs=1e-7)
    assert norms["grad_norm"] == pytest.approx(math.sqrt(sum(float(g.norm()) ** 2 for g in grads.values())),
                                               rel=1e-4)


def test_polish_head_reaches_the_head_optimum_and_leaves_the_body(data):
    images, targets = data
    torch.manual_seed(1)
    model = TwoLayer().eval()
    body_before = copy.deepcopy(model.body.state_dict())
    report = polish_head(model, images, targets, LAM)
    assert report["head"] == "head" and head_module(model)[0] == "head"
    assert report["grad_norm_after"] < 1e-4 < report["grad_norm_before"]
    for name, value in model.body.state_dict().items():
        assert torch.equal(value, body_before[name])
    grads = full_objective_gradient(model, images, targets)
    head_norm = math.sqrt(float(grads["head.weight"].norm()) ** 2 + float(grads["head.bias"].norm()) ** 2)
    assert head_norm < 1e-4
    assert float(grads["body.weight"].norm()) > 1e-3       # the body is not polished


def test_trained_zoo_model_stores_its_stationarity(trained_small_cnn):
    checkpoint, _ = trained_small_cnn
    stationarity = checkpoint.metadata["stationarity"]
    assert stationarity["polished_head"] == "fc"
    assert stationarity["per_parameter"]["fc.weight"] < 1e-4
    assert stationarity["head_grad_norm_before_polish"] > stationarity["per_parameter"]["fc.weight"]


def test_removal_report_warns_on_a_far_from_stationary_checkpoint(trained_small_cnn):
    from lcodec_models import Checkpoint

    from lcodec_core.removal import stationarity_of
    from lcodec_core.requests import make_request
    checkpoint, bundle = trained_small_cnn
    request = make_request(bundle, identity=3)
    train = bundle.train
    assert "warning" not in stationarity_of(checkpoint, train.images, train.targets)
    rough = copy.deepcopy(checkpoint.model)
    with torch.no_grad():
        rough.fc.weight.mul_(1.5)                                # far from the head's optimum
    metadata = {k: v for k, v in checkpoint.metadata.items() if k != "stationarity"}
    measured = stationarity_of(Checkpoint(rough, metadata), train.images, train.targets)
    assert measured["head_grad_norm"] > 1e-3 and "lcodec polish" in measured["warning"]


def test_cli_checks_the_identity_before_training(tmp_path):
    """An out-of-range identity fails in seconds on an empty cache, and nothing is trained."""
    env = {"LCODEC_HOME": str(tmp_path), "LCODEC_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lcodec_core", "unlearn", "--forget-identity", "99"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "identity must be in [0, 40); got 99" in done.stderr
    assert time.perf_counter() - start < 60
    assert not list(tmp_path.glob("models/*.pt"))
