"""Audit of a removal against the model retrained without the forgotten data (docs/ALGORITHM.md,
section 10 (Judging a removal against retraining)).

Every number is computed the same way for the original, the unlearned and the retrained
model, so each can be read beside the retrained model's value (the reference, not zero):

- accuracies on retained, forgotten and held-out data, and per identity on held-out data;
- membership inference of the forget set U:
  ``mia_auc``: the per-sample loss as the attack score (lower loss = member), scored by ROC
  AUC on U (label 1) against one half of the held-out images (label 0), the half the SVC
  below is not fitted on.
  0.5 means U looks like unseen data; the retrained model's value is the target.
  ``mia_efficacy``: the confidence-SVC attack of Jia et al. (2023, "Sparse") and SalUn: an
  RBF SVC (C=3, gamma="auto") on the softmax probability of the true class, fitted on the
  same shadow data; the share of U it calls non-members. Higher = more forgotten.
- output distance to the retrained model per split s in {forget, retain, test}:
  ``kl_to_retrained[s]`` = mean_i KL(p_retrained(x_i) || p_model(x_i)) and
  ``l1_to_retrained[s]`` = mean_i sum_k |p_retrained(x_i)_k - p_model(x_i)_k|;
- ``weight_distance`` = |w - w_retrained| / |w_retrained| (meaningful when both come from the
  same initialisation or a convex objective);
- ``residual_grad_norm`` = |grad F_r(w)|, F_r(w) = mean_{i in retained} CE_i + (lam/2)|w|^2,
  and ``forget_grad_norm`` = |grad mean_{i in U} CE_i(w)|.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from lcodec_models.training import predict

from ..data import DataBundle, ImageDataset
from .evaluation import evaluate
from ..requests import ForgetRequest

def _log_probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """log softmax of the logits, shape (N, K), float64."""
    return F.log_softmax(predict(model, images).double(), dim=1)


def per_sample_loss(model: nn.Module, data: ImageDataset) -> torch.Tensor:
    """Cross-entropy of each image, shape (N,)."""
    log_p = _log_probs(model, data.images)
    return -log_p.gather(1, data.targets.view(-1, 1)).squeeze(1)


def true_class_confidence(model: nn.Module, data: ImageDataset) -> torch.Tensor:
    """Softmax probability of each image's own class, shape (N,)."""
    return per_sample_loss(model, data).neg().exp()


def _shadow_split(request: ForgetRequest, heldout: ImageDataset, seed: int):
    """Attack training data (members: retained images; non-members: half the held-out images)
    and the non-members U is scored against (the other half)."""
    if len(heldout) < 4:
        raise ValueError(f"membership inference needs at least 4 held-out images; got {len(heldout)}")
    order = torch.randperm(len(heldout), generator=torch.Generator().manual_seed(seed)).tolist()
    half = len(order) // 2
    shadow_out, target_out = heldout.subset(sorted(order[:half])), heldout.subset(sorted(order[half:]))
    members = request.retain
    if len(members) > 4 * half:  # keep the shadow classes roughly balanced
        pick = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed + 1))
        members = members.subset(sorted(pick[:4 * half].tolist()))
    return members, shadow_out, target_out


def _attack_data(feature, model, members, non_members):
    x = torch.cat([feature(model, members), feature(model, non_members)]).numpy().reshape(-1, 1)
    y = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    return x, y


def membership_inference(model: nn.Module, request: ForgetRequest, heldout: ImageDataset,
                         seed: int = 0) -> dict[str, float]:
    """``mia_auc`` (loss attack, ROC AUC of U vs held-out) and ``mia_efficacy`` (share of U the
    confidence SVC calls non-members). See the module docstring for the exact protocol."""
    members, shadow_out, target_out = _shadow_split(request, heldout, seed)
    # Loss attack: lower loss reads as member. The ROC AUC of the negated loss is the ranking a
    # one-feature logistic regression would give, without its fit and without the silent sign
    # flip it makes when the shadow data happen to order the other way.
    eval_loss = torch.cat([per_sample_loss(model, request.forget), per_sample_loss(model, target_out)])
    y_eval = np.r_[np.ones(len(request.forget)), np.zeros(len(target_out))]
    auc = float(roc_auc_score(y_eval, -eval_loss.numpy()))
    # Confidence SVC (MIA-efficacy).
    x, y = _attack_data(true_class_confidence, model, members, shadow_out)
    svc = SVC(C=3, gamma="auto", kernel="rbf", class_weight="balanced").fit(x, y)
    called_member = svc.predict(true_class_confidence(model, request.forget).numpy().reshape(-1, 1))
    return {"mia_auc": auc, "mia_efficacy": float(1.0 - called_member.mean())}


def output_distance(model: nn.Module, reference: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """``kl`` = mean KL(p_reference || p_model) and ``l1`` = mean sum_k |p_reference - p_model|
    over ``images`` (N, C, H, W); nan for N = 0."""
    if len(images) == 0:
        return {"kl": float("nan"), "l1": float("nan")}
    log_q, log_p = _log_probs(model, images), _log_probs(reference, images)
    kl = (log_p.exp() * (log_p - log_q)).sum(1).mean()
    l1 = (log_p.exp() - log_q.exp()).abs().sum(1).mean()
    return {"kl": float(kl), "l1": float(l1)}


def weight_distance(model: nn.Module, reference: nn.Module) -> float:
    """|w - w_ref| / |w_ref| over all parameters (same architecture required)."""
    params, ref = dict(model.named_parameters()), dict(reference.named_parameters())
    if params.keys() != ref.keys() or any(params[k].shape != ref[k].shape for k in ref):
        raise ValueError("weight distance needs the same architecture for both models")
    diff = sum(float((params[k].detach().double() - ref[k].detach().double()).pow(2).sum()) for k in ref)
    norm = sum(float(ref[k].detach().double().pow(2).sum()) for k in ref)
    return math.sqrt(diff / norm) if norm > 0 else float("nan")


def gradient_norm(model: nn.Module, data: ImageDataset, weight_decay: float = 0.0,
                  batch_size: int = 256) -> float:
    """|grad_w [ (1/N) sum_i CE_i(w) + (lam/2)|w|^2 ]| over all parameters, in eval mode.

    The model is not modified (a private eval-mode copy is differentiated)."""
    if len(data) == 0:
        return float("nan")
    frozen = copy.deepcopy(model).eval()
    params = {k: v.detach().requires_grad_(True) for k, v in frozen.named_parameters()}
    device = next(iter(params.values())).device
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for start in range(0, len(data), batch_size):
        images = data.images[start:start + batch_size].to(device)
        targets = data.targets[start:start + batch_size].to(device)
        loss = F.cross_entropy(functional_call(frozen, params, (images,)), targets, reduction="sum")
        for k, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            total[k] += g
    squared = sum(float((total[k] / len(data) + weight_decay * params[k].detach()).double().pow(2).sum())
                  for k in params)
    return math.sqrt(squared)


def per_identity_accuracy(model: nn.Module, data: ImageDataset) -> dict[int, float]:
    """Accuracy on the images of each class present in ``data``."""
    correct = predict(model, data.images).argmax(1) == data.targets
    return {int(c): float(correct[data.targets == c].float().mean()) for c in data.targets.unique()}


def audit_model(model: nn.Module, bundle: DataBundle, request: ForgetRequest, *,
                reference: nn.Module | None = None, weight_decay: float = 0.0,
                seed: int = 0) -> dict:
    """Every audit number of one model (see the module docstring); the distances to
    ``reference`` only when one is given."""
    entry = dict(evaluate(model, bundle, request))
    entry["per_identity_test_accuracy"] = per_identity_accuracy(model, bundle.test)
    entry.update(membership_inference(model, request, bundle.test, seed))
    entry["residual_grad_norm"] = gradient_norm(model, request.retain, weight_decay)
    entry["forget_grad_norm"] = gradient_norm(model, request.forget)
    if reference is not None:
        splits = {"forget": request.forget.images, "retain": request.retain.images,
                  "test": bundle.test.images}
        distances = {s: output_distance(model, reference, images) for s, images in splits.items()}
        entry["kl_to_retrained"] = {s: d["kl"] for s, d in distances.items()}
        entry["l1_to_retrained"] = {s: d["l1"] for s, d in distances.items()}
        entry["weight_distance"] = weight_distance(model, reference)
    return entry


def audit_removal(original: nn.Module, unlearned: nn.Module, retrained: nn.Module | None,
                  bundle: DataBundle, request: ForgetRequest, *, weight_decay: float = 0.0,
                  seed: int = 0) -> dict:
    """``{"original": ..., "unlearned": ..., "retrained": ...}``, each from :func:`audit_model`;
    original and unlearned carry their distances to ``retrained`` when it is given (the
    "retrained" entry is left out when it is None)."""
    audit = {name: audit_model(model, bundle, request, reference=retrained,
                               weight_decay=weight_decay, seed=seed)
             for name, model in (("original", original), ("unlearned", unlearned))}
    if retrained is not None:
        audit["retrained"] = audit_model(retrained, bundle, request, weight_decay=weight_decay,
                                         seed=seed)
    return audit
