"""How close a trained model is to a stationary point of its training objective, and a cheap
way to get closer: polish the linear head to its exact optimum.

    F(w) = (1/n) sum_i CE(f_w(x_i), y_i) + (lam / 2) |w|^2

With every layer before the head fixed, F is a strongly convex function of the head's weight
and bias (softmax regression on the head's input features), so full-batch L-BFGS on cached
features reaches its optimum in a few seconds. Polishing the whole network does not reach
stationarity in any affordable time (310 s of full-batch L-BFGS on the default model did not).

Why it matters: the removal's right-hand side -grad F_r(w*) equals the forget set's gradient
g_U only at a stationary point; elsewhere part of any update that uses it would happen with
nothing removed (lcodec_core/unlearning/forget_step.py reports that as the null control).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F


def head_module(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """(name, module) of the model's last nn.Linear (its classification head), or None."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@torch.no_grad()
def head_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The head's input features (n, d) for ``images`` (n, C, H, W), in eval mode.

    Runs channels-last when that pays (:func:`lcodec_models.training.predict`'s rule): 0.09 s
    against 0.40 s for the small CNN's 320 photos."""
    from .training import _channels_last_forward
    name, head = head_module(model)
    captured = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    was_training = model.training
    model.eval()
    forward = _channels_last_forward(model, images)
    device = next(model.parameters()).device
    try:
        for start in range(0, len(images), batch_size):
            forward(images[start:start + batch_size].to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured).cpu()


@contextlib.contextmanager
def one_intra_op_thread():
    """Run the block with one intra-op thread, then restore the count.

    LBFGS on the head is hundreds of tiny float64 ops; with two OpenMP threads each op pays a
    team wake-up, which off the main thread (a dashboard job) doubled the polish: 7.1-7.6 s
    against 3.5 s in the main thread and 2.9-3.1 s with one thread in either (identity 5's
    312 photos, 2 cores, 2026-12-01 05:00 UTC, load 1.1-1.5; docs/BENCHMARKS.md)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def polish_head(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, weight_decay: float,
                max_iterations: int = 500) -> dict:
    """Move the head of ``model`` (in place: call it on a model you own) to the optimum of F
    with every other layer fixed. Returns {"head", "grad_norm_before", "grad_norm_after"}
    (the head's part of |grad F|). Layers before the head and all buffers are untouched."""
    found = head_module(model)
    if found is None:
        return {"head": None}
    name, head = found
    features = head_features(model, images).double()                      # (n, d)
    weight = head.weight.detach().double().clone().requires_grad_(True)    # (K, d)
    bias = (head.bias.detach().double().clone() if head.bias is not None else
            torch.zeros(head.out_features, dtype=torch.float64)).requires_grad_(head.bias is not None)
    params = [weight] + ([bias] if head.bias is not None else [])

    def objective() -> torch.Tensor:
        logits = features @ weight.T + bias                                # (n, K)
        return F.cross_entropy(logits, targets) + 0.5 * weight_decay * sum(p.pow(2).sum() for p in params)

    def grad_norm() -> float:
        grads = torch.autograd.grad(objective(), params)
        return float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))

    before = grad_norm()
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iterations, history_size=50,
                                  tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        return loss

    with one_intra_op_thread():
        optimizer.step(closure)
    after = grad_norm()
    if after < before and all(torch.isfinite(p).all() for p in params):
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight.dtype))
            if head.bias is not None:
                head.bias.copy_(bias.to(head.bias.dtype))
    else:
        after = before
    return {"head": name, "grad_norm_before": before, "grad_norm_after": after}


def objective_gradient_norms(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                             weight_decay: float, batch_size: int = 256) -> dict:
    """|grad F(w)| over the whole model and per parameter tensor, in eval mode.

    Returns {"grad_norm": float, "per_parameter": {name: float}}. The model is not changed
    (its gradients are computed functionally)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    was_training = model.training
    model.eval()
    try:
        totals = {k: torch.zeros_like(v) for k, v in params.items()}
        for start in range(0, len(images), batch_size):
            live = {k: v.requires_grad_(True) for k, v in ((k, v.clone()) for k, v in params.items())}
            logits = torch.func.functional_call(model, (live, buffers), (images[start:start + batch_size],))
            loss = F.cross_entropy(logits, targets[start:start + batch_size], reduction="sum")
            grads = torch.autograd.grad(loss, list(live.values()))
            for k, g in zip(live, grads):
                totals[k] += g
    finally:
        model.train(was_training)
    n = len(images)
    per = {k: float((totals[k] / n + weight_decay * params[k]).norm()) for k in params}
    return {"grad_norm": float(sum(v ** 2 for v in per.values()) ** 0.5), "per_parameter": per}
