"""The audit (lcodec_core.audit.comparison, audit_report, ``audit`` command) on tiny models with known answers."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lcodec_core.paths
from lcodec_core.audit.comparison import (audit_removal, gradient_norm, membership_inference,
                               output_distance, per_identity_accuracy, weight_distance)
from lcodec_core.audit.report import write_audit_report
from lcodec_core.data import DataBundle, ImageDataset
from lcodec_core.requests import make_request

pytestmark = pytest.mark.usefixtures("one_thread")


def logits_model(num_classes: int = 2) -> nn.Module:
    """Images of shape (N, 1, 1, K) whose pixels are the logits: an identity linear layer."""
    layer = nn.Linear(num_classes, num_classes, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(num_classes))
    return nn.Sequential(nn.Flatten(), layer)


def dataset(logits: torch.Tensor, targets) -> ImageDataset:
    n = len(logits)
    return ImageDataset(logits.view(n, 1, 1, -1).float(), torch.as_tensor(targets),
                        ["a", "b"], [f"x{i}" for i in range(n)])


def test_output_distance_closed_form():
    model, reference = logits_model(), logits_model()
    with torch.no_grad():
        reference[1].weight.mul_(2.0)   # reference logits are twice the model's
    images = torch.tensor([[1.0, 0.0], [0.0, 3.0]]).view(2, 1, 1, 2)
    p = torch.softmax(2 * images.view(2, 2).double(), 1)
    q = torch.softmax(images.view(2, 2).double(), 1)
    distance = output_distance(model, reference, images)
    assert distance["kl"] == pytest.approx(float((p * (p / q).log()).sum(1).mean()), rel=1e-9)
    assert distance["l1"] == pytest.approx(float((p - q).abs().sum(1).mean()), rel=1e-9)
    assert output_distance(model, model, images) == {"kl": 0.0, "l1": 0.0}
    assert all(math.isnan(v) for v in output_distance(model, reference, images[:0]).values())


def test_weight_distance_is_relative_and_checks_architecture():
    model, reference = logits_model(), logits_model()
    assert weight_distance(model, reference) == 0.0
    with torch.no_grad():
        model[1].weight.mul_(3.0)        # w = 3 w_ref: |w - w_ref| / |w_ref| = 2
    assert weight_distance(model, reference) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same architecture"):
        weight_distance(model, logits_model(3))


def test_gradient_norm_matches_the_softmax_regression_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    data = ImageDataset(x.view(10, 1, 1, 4), y, ["a", "b", "c"], ["s"] * 10)
    lam = 0.1
    weight = model[1].weight.detach()
    # grad of mean CE for logits W x: (P - Y)^T X / N, plus lam W.
    p = torch.softmax(x @ weight.T, 1)
    expected = (p - F.one_hot(y, 3)).T @ x / 10 + lam * weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert gradient_norm(model, data, lam, batch_size=3) == pytest.approx(float(expected.norm()), rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[1].weight.grad is None


def test_per_identity_accuracy():
    data = dataset(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), [0, 1, 1, 1])
    assert per_identity_accuracy(logits_model(), data) == {0: 1.0, 1: pytest.approx(1 / 3)}


def membership_bundle(forget_confident: bool) -> tuple[DataBundle, object]:
    """Members (train) are classified with confidence, non-members (test) are not. The forget
    set is the first 10 training images, confident or not."""
    generator = torch.Generator().manual_seed(0)

    def rows(n, margin):
        logits = torch.zeros(n, 2)
        logits[:, 0] = margin + 0.5 * torch.randn(n, generator=generator)
        return logits
    train = torch.cat([rows(10, 6.0 if forget_confident else 0.0), rows(60, 6.0)])
    test = rows(60, 0.0)
    bundle = DataBundle("toy", dataset(train, [0] * 70), dataset(test, [0] * 60), ["a", "b"], 0.0, 1.0, 0)
    return bundle, make_request(bundle, indices=list(range(10)))


def test_membership_inference_sees_members_and_not_non_members():
    bundle, request = membership_bundle(forget_confident=True)
    seen = membership_inference(logits_model(), request, bundle.test)
    assert seen["mia_auc"] > 0.95 and seen["mia_efficacy"] < 0.2
    bundle, request = membership_bundle(forget_confident=False)
    unseen = membership_inference(logits_model(), request, bundle.test)
    assert 0.25 < unseen["mia_auc"] < 0.75 and unseen["mia_efficacy"] > 0.8


def test_membership_inference_needs_held_out_images():
    bundle, request = membership_bundle(forget_confident=True)
    with pytest.raises(ValueError, match="at least 4 held-out"):
        membership_inference(logits_model(), request, bundle.test.subset([0, 1]))


def test_audit_removal_puts_every_model_beside_the_retrained_one():
    bundle, request = membership_bundle(forget_confident=True)
    original, retrained = logits_model(), logits_model()
    with torch.no_grad():
        retrained[1].weight.mul_(0.5)
    audit = audit_removal(original, retrained, retrained, bundle, request, weight_decay=0.01)
    assert set(audit) == {"original", "unlearned", "retrained"}
    # The "unlearned" model here is the retrained one: every distance is zero.
    assert audit["unlearned"]["kl_to_retrained"] == {"forget": 0.0, "retain": 0.0, "test": 0.0}
    assert audit["unlearned"]["weight_distance"] == 0.0
    assert audit["original"]["weight_distance"] == pytest.approx(1.0)
    assert audit["original"]["kl_to_retrained"]["forget"] > 0
    assert "kl_to_retrained" not in audit["retrained"]
    for entry in audit.values():
        assert {"mia_auc", "mia_efficacy", "residual_grad_norm", "forget_grad_norm",
                "retain_accuracy", "per_identity_test_accuracy"} <= set(entry)
    assert audit["unlearned"]["mia_auc"] == audit["retrained"]["mia_auc"]
    assert "retrained" not in audit_removal(original, retrained, None, bundle, request)


def toy_report(audit: dict) -> dict:
    return {"dataset": "toy", "model": "logits", "request": {"description": "10 training image(s)"},
            "settings": {"method": "lfoci"}, "selected_slices": [{"module": "1", "index": 0}],
            "parameters_updated": 2, "parameter_share": 0.5, "sigma": 0.0, "epsilon": None,
            "delta": None, "peak_memory_mb": 100.0, "speedup_over_retrain": 4.0,
            "timings": {"unlearn_s": 0.5, "retrain_s": 2.0}, "audit": audit}


def test_report_writes_markdown_with_every_number_beside_the_retrained_one(tmp_path):
    bundle, request = membership_bundle(forget_confident=True)
    original, retrained = logits_model(), logits_model()
    with torch.no_grad():
        retrained[1].weight.mul_(0.5)
    audit = audit_removal(original, original, retrained, bundle, request)
    report = json.loads(json.dumps(toy_report(audit)))   # as read back from RESULT.json
    path = write_audit_report(report, tmp_path / "out", charts=False)
    text = path.read_text()
    assert "| loss attack AUC (forget vs held-out) |" in text
    assert f"{audit['retrained']['mia_auc']:.3f}" in text and "no formal (epsilon, delta)" in text
    assert "| forget |" in text and "| 4.0 |" in text
    assert not list(path.parent.glob("*.html"))


def test_report_charts_are_html_and_png_or_say_why_not(tmp_path):
    bundle, request = membership_bundle(forget_confident=True)
    audit = audit_removal(logits_model(), logits_model(), logits_model(), bundle, request)
    path = write_audit_report(toy_report(audit), tmp_path)
    names = ("accuracy", "membership", "distance", "cost")
    assert all((tmp_path / f"{n}.html").stat().st_size > 1000 for n in names)
    pngs = [tmp_path / f"{n}.png" for n in names]
    if all(p.exists() for p in pngs):
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
        assert "![accuracy](accuracy.png)" in path.read_text()
    else:  # no browser for kaleido: the report says so
        assert "PNG charts were not written" in path.read_text()


def test_report_refuses_a_result_without_retrained_comparison(tmp_path):
    with pytest.raises(ValueError, match="--compare retrain"):
        write_audit_report({"audit": {"unlearned": {}}}, tmp_path)
    assert not (tmp_path / "audit.md").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LCODEC_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lcodec_core", *args], cwd=lcodec_core.paths.CHECKOUT_DIR,
                          env=env, capture_output=True, text=True, timeout=900)


def test_cli_unlearn_compare_retrain_adds_audit_and_audit_writes_the_report(trained_small_cnn, tmp_path):
    result_json = tmp_path / "result.json"
    run = run_cli("unlearn", "--forget-identity", "5", "--method", "finetune", "--compare", "retrain",
                  "--json", str(result_json))
    assert run.returncode == 0, run.stderr
    report = json.loads(result_json.read_text())
    for model in ("unlearned", "retrained"):
        assert 0.0 <= report["audit"][model]["mia_auc"] <= 1.0
        assert 0.0 <= report["audit"][model]["mia_efficacy"] <= 1.0
    unlearned = report["audit"]["unlearned"]
    assert set(unlearned["kl_to_retrained"]) == {"forget", "retain", "test"}
    assert unlearned["weight_distance"] > 0 and unlearned["residual_grad_norm"] > 0
    assert "mia_auc" in run.stdout
    # the attacks on the three models, and the verdict that reads them against retraining:
    # five epochs of fine-tuning hide the person (a few relearning steps bring them back)
    attacks = report["attacks"]
    assert {"before", "unlearned", "retrained"} <= set(attacks)
    assert attacks["retrained"]["relearned"]["10"] <= 0.125
    assert report["verdict"]["status"] == "hidden", report["verdict"]["headline"]
    assert "retrained" in report["verdict"]["headline"]
    assert "relearned 10 steps" in run.stdout

    audit = run_cli("audit", str(result_json), "--no-charts")
    assert audit.returncode == 0, audit.stderr
    markdown = (tmp_path / "result-audit" / "audit.md").read_text()
    assert "identity 5" in markdown and f"{unlearned['mia_auc']:.3f}" in markdown
    assert "## Attacks: hidden or removed" in markdown and "relearning steps" in markdown


def test_cli_audit_errors_are_one_line(tmp_path):
    not_json = tmp_path / "bad.json"
    not_json.write_text("{not json")
    no_audit = tmp_path / "plain.json"
    no_audit.write_text(json.dumps({"timings": {}}))
    for args in (["audit", str(not_json)], ["audit", str(no_audit)], ["audit"],
                 ["audit", str(no_audit), "--forget-identity", "1"]):
        run = run_cli(*args)
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("lcodec: error:")
