"""The retained objective restricted to a parameter block P, with exact derivatives.

    f(v) = (1/N) sum_{i in D} CE(model_{w(v)}(x_i), y_i) + (lam / 2) |v|^2

where w(v) equals the trained weights w* except on the block P (the selected rows of some
parameters), which holds v (shape (p,)). D is the retained data (or a random subsample).
The lam term is the part of the weight-decay penalty (lam/2)|w|^2 that depends on v.
Gradients and Hessian-vector products come from autograd (double backward) through
``torch.func.functional_call`` on the suffix of the model after the first block module (see :mod:`.suffix`), so
the frozen prefix of the network runs once.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from ..parallel.shard import ONE_PROCESS, RetainedShard
from .suffix import split_model


def warm_up() -> float:
    """Pay the one-time cost of the first ``torch.func.vmap`` in this process (about 1.2 s of
    lazy imports on the 2-core machine) before a timed removal; returns the seconds taken.
    The CLI, the dashboard's server and the benchmarks call it once, so every removal's
    ``unlearn_s`` is the steady-state cost."""
    import time
    start = time.perf_counter()
    vmap(grad(lambda w, x: (w * x).sum()), in_dims=(None, 0))(torch.ones(2), torch.ones(3, 2))
    return time.perf_counter() - start


class BlockObjective:
    """f(v), its gradient, Hessian-vector products and the explicit Hessian on a block.

    Parameters
    ----------
    model : the trained network (not modified).
    rows : parameter name -> first-dimension rows in the block (from ``slice_parameter_rows``).
    images : (N, C, H, W) float, targets : (N,) long. The data of the objective.
    weight_decay : lam.
    batch_size : rows per forward pass (bounds memory of double backward). None: as many as
        keep the boundary tensors of one pass under ``memory_budget`` bytes (x8 for the
        intermediate activations); each pass has a fixed cost, so fewer, larger passes are faster.
    curvature_size : Hessian-vector products and the explicit Hessian average over a seeded
        random subsample of this many rows (None: all rows); f and grad f always use all rows.
    shard : with W processes (:mod:`lcodec_core.parallel`), this process keeps only its
        contiguous share of ``images`` and ``targets`` and every sum over rows is all-reduced;
        ``count`` and ``curvature_count`` stay the global N. Default: one process, all rows.
    """

    def __init__(self, model: nn.Module, rows: dict[str, list[int]], images: torch.Tensor,
                 targets: torch.Tensor, weight_decay: float, batch_size: int | None = None,
                 curvature_size: int | None = None, seed: int = 0, memory_budget: float = 2**28,
                 shard: RetainedShard = ONE_PROCESS):
        if not rows:
            raise ValueError("the parameter block is empty: select at least one slice")
        self.weight_decay = float(weight_decay)
        self.memory_budget = float(memory_budget)
        # Images go through the convolutions channels-last (and so do their weights): the
        # same numbers to float rounding, and 15-25% faster forward passes of a ResNet-18 on
        # a CPU (docs/BENCHMARKS.md, "ResNet-18 identity removal").
        self.channels_last = images.ndim == 4
        params = {k: _in_layout(v.detach(), self.channels_last) for k, v in model.named_parameters()}
        self.names = sorted(rows)
        device = next(model.parameters()).device
        self.rows = {k: torch.as_tensor(rows[k], dtype=torch.long, device=device) for k in self.names}
        self.row_shapes = {k: (len(rows[k]),) + tuple(params[k].shape[1:]) for k in self.names}
        self.sizes = [int(torch.tensor(self.row_shapes[k]).prod()) for k in self.names]
        modules = {k.rsplit(".", 1)[0] if "." in k else "" for k in self.names}
        # A private eval-mode copy: BatchNorm and dropout behave as at inference, and the
        # caller's model (its mode and buffers) is never touched.
        frozen_model = copy.deepcopy(model).eval()
        if self.channels_last:
            frozen_model = frozen_model.to(memory_format=torch.channels_last)
        self.split = split_model(frozen_model, modules)
        self.shard, self.count = shard, len(targets)           # N over all ranks
        images, targets = shard.take(images), shard.take(targets)   # this rank's rows (all in one process)
        self.boundary = self.boundary_of(images, batch_size or 256)
        if batch_size is None:
            batch_size = max(1, int(memory_budget // (4 * 8 * max(self.boundary_numel, 1))))
        self.batch_size = batch_size
        suffix_params = dict(self.split.suffix.named_parameters())
        self.frozen = {k: params[k] for k in suffix_params}
        self.buffers = {k: b for k, b in self.split.suffix.named_buffers()}
        self.targets = targets.to(device)
        n = self.count
        if curvature_size is None or curvature_size >= n:
            curvature_rows = torch.arange(n, device=device)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            curvature_rows = order[:curvature_size].sort().values.to(device)
        self.curvature_count = len(curvature_rows)                  # N_c over all ranks
        self.curvature_rows = shard.local_rows(curvature_rows, n)   # this rank's, shard indices
        self.v0 = torch.cat([params[k][self.rows[k]].reshape(-1) for k in self.names])
        self.block_modules = {m: self.split.suffix.get_submodule(m) for m in sorted(modules)}

    @property
    def size(self) -> int:
        """p, the number of scalars in the block."""
        return self.v0.numel()

    def params_with(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """The suffix's parameters with the block set to ``v`` (functional: nothing is mutated)."""
        out = dict(self.frozen)
        for name, chunk in zip(self.names, torch.split(v, self.sizes)):
            out[name] = self.frozen[name].index_put((self.rows[name],), chunk.reshape(self.row_shapes[name]))
        return out

    def full_state(self, v: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s parameters with the block replaced by ``v`` (new tensors for block params)."""
        params = {k: p.detach() for k, p in model.named_parameters()}
        for name, chunk in zip(self.names, torch.split(v.detach(), self.sizes)):
            params[name] = params[name].index_put((self.rows[name],),
                                                  chunk.reshape(self.row_shapes[name]).to(params[name].dtype))
        return params

    def _batch_loss(self, v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Sum (not mean) of the cross-entropy over the rows ``index``."""
        inputs = tuple(b[index] for b in self.boundary)
        logits = functional_call(self.split.suffix, (self.params_with(v), self.buffers), inputs)
        return F.cross_entropy(logits, self.targets[index], reduction="sum")

    def _batches(self, rows: torch.Tensor | None = None) -> list[torch.Tensor]:
        rows = torch.arange(len(self.targets)) if rows is None else rows
        return [index for index in torch.split(rows, self.batch_size) if len(index)]

    def loss(self, v: torch.Tensor) -> float:
        """f(v) as a float."""
        with torch.no_grad():
            data = sum(float(self._batch_loss(v, index)) for index in self._batches())
        data = self.shard.sum_float(data, "loss")
        return data / self.count + 0.5 * self.weight_decay * float(v.double().pow(2).sum())

    def gradient(self, v: torch.Tensor) -> torch.Tensor:
        """grad f(v), shape (p,)."""
        total = torch.zeros_like(v)
        for index in self._batches():
            w = v.detach().requires_grad_(True)
            total += torch.autograd.grad(self._batch_loss(w, index), w)[0]
        total = self.shard.all_reduce_sum(total, "gradient")
        return total / self.count + self.weight_decay * v

    def _gradient_graphs(self, v: torch.Tensor):
        """Per curvature batch: (w, grad of the batch's summed loss at w with create_graph)."""
        for index in self._batches(self.curvature_rows):
            w = v.detach().requires_grad_(True)
            yield w, torch.autograd.grad(self._batch_loss(w, index), w, create_graph=True)[0]

    def hvp(self, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Hessian of f at v times u, shape (p,), by double backward, averaged over the
        curvature rows. (Double backward ran 5-10x faster than torch.func's jvp-over-grad
        here on CPU.)"""
        return self.hvp_operator(v)(u)

    def hvp_operator(self, v: torch.Tensor, graph_budget: float | None = None):
        """u -> H(v) u by double backward, averaged over the curvature rows.

        The gradient graphs at v are built once and reused for every product (conjugate
        gradient calls it many times at the same v) while their estimated size (the suffix's
        activations, about 8x the boundary tensors, twice for double backward) fits in
        ``graph_budget`` bytes (default: the objective's ``memory_budget``); beyond it each
        product rebuilds one batch's graph at a time, so memory stays bounded by one batch.
        """
        budget = self.memory_budget if graph_budget is None else graph_budget
        rows = len(self.curvature_rows)
        keep = 2 * 8 * 4 * self.boundary_numel * rows <= budget
        graphs = list(self._gradient_graphs(v)) if keep else None
        scale = 1.0 / self.curvature_count

        def product(u: torch.Tensor) -> torch.Tensor:
            total = torch.zeros_like(v)
            for w, g in (graphs if keep else self._gradient_graphs(v)):
                total += torch.autograd.grad(g, w, grad_outputs=u, retain_graph=keep)[0]
            total = self.shard.all_reduce_sum(total, "hvp")
            return total * scale + self.weight_decay * u

        product.keeps_graphs = keep
        return product

    def boundary_of(self, images: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
        """The boundary tensors (what enters the suffix) for ``images`` (M, C, H, W)."""
        images = _in_layout(images.to(next(self.split.suffix.parameters()).device),
                            self.channels_last)
        return [_in_layout(b, self.channels_last)
                for b in self.split.boundary_values(images, batch_size)]

    @torch.no_grad()
    def logits(self, v: torch.Tensor, boundary: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (M, K) of the model with the block set to ``v``, for ``boundary`` tensors
        (from :meth:`boundary_of`; default: this objective's own rows)."""
        boundary = self.boundary if boundary is None else boundary
        params = self.params_with(v)
        count = len(boundary[0])
        return torch.cat([functional_call(self.split.suffix, (params, self.buffers),
                                          tuple(b[i:i + self.batch_size] for b in boundary))
                          for i in range(0, count, self.batch_size)]) if count else \
            torch.empty(0, device=v.device)

    def per_sample_gradients(self, v: torch.Tensor, boundary: list[torch.Tensor] | None = None,
                             targets: torch.Tensor | None = None, chunk: int = 64,
                             with_logits: bool = False):
        """G (M, p): row i is grad_v CE(f(x_i), y_i) at v, without the lam term; with
        ``with_logits`` also the logits (M, K) at v, which the same pass computes anyway.

        ``chunk`` rows at a time (bounded memory: one chunk's activations at once). Defaults to
        this objective's curvature rows. When every block module is a Linear or an ungrouped,
        zero-padded Conv2d (every zoo model), one batched backward gives each block module's
        input x_i and output gradient g_i, and row r of its weight gets g_i[r] x_i^T (a conv:
        over the input patches); this is exact because in eval mode each sample's
        loss depends on its own activations only. Otherwise ``torch.func.vmap(grad(...))``,
        which materialises a per-sample copy of every block parameter: 40x slower with one
        row of a 512-channel ResNet conv in the block."""
        if boundary is None:
            rows = self.curvature_rows
            boundary, targets = [b[rows] for b in self.boundary], self.targets[rows]
        if all(_outer_product_rule(m) for m in self.block_modules.values()):
            out = [self._per_sample_chunk(v, targets[i:i + chunk], [b[i:i + chunk] for b in boundary])
                   for i in range(0, len(targets), chunk)]
            return self._joined(out, v, with_logits)
        suffix, buffers = self.split.suffix, self.buffers

        def one_loss(w, target, *inputs):
            logits = functional_call(suffix, (self.params_with(w), buffers),
                                     tuple(x.unsqueeze(0) for x in inputs))         # (1, K)
            return F.cross_entropy(logits, target.unsqueeze(0)), logits[0].detach()

        in_dims = (None, 0) + (0,) * len(boundary)
        per_sample = vmap(grad(one_loss, has_aux=True), in_dims=in_dims)
        w = v.detach()
        out = [per_sample(w, targets[i:i + chunk], *(b[i:i + chunk] for b in boundary))
               for i in range(0, len(targets), chunk)]
        return self._joined(out, v, with_logits)

    def _joined(self, chunks: list, v: torch.Tensor, with_logits: bool):
        """The per-chunk (G (B, p), logits (B, K)) pairs stacked: G (N, p), and the logits
        (N, K) too when ``with_logits``; empty tensors for no rows."""
        gradients = (torch.cat([g for g, _ in chunks]) if chunks else
                     torch.zeros(0, self.size, dtype=v.dtype, device=v.device))
        if not with_logits:
            return gradients
        return gradients, torch.cat([z for _, z in chunks]) if chunks else torch.zeros(0, 0)

    def _per_sample_chunk(self, v: torch.Tensor, targets: torch.Tensor,
                          inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(G (B, p), logits (B, K)) for one chunk, by the outer-product rule (see
        :meth:`per_sample_gradients`): one forward and one backward of the suffix."""
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def recorder(name):
            def record(_module, args, output):
                if name in seen:
                    raise RuntimeError(f"block module {name!r} ran twice in one forward pass")
                seen[name] = (args[0].detach(), output)
            return record

        handles = [m.register_forward_hook(recorder(name)) for name, m in self.block_modules.items()]
        try:
            w = v.detach().requires_grad_(True)
            logits = functional_call(self.split.suffix, (self.params_with(w), self.buffers),
                                     tuple(inputs))                                  # (B, K)
        finally:
            for handle in handles:
                handle.remove()
        loss = F.cross_entropy(logits, targets, reduction="sum")
        names = list(seen)
        output_grads = dict(zip(names, torch.autograd.grad(loss, [seen[n][1] for n in names])))
        columns = []
        for name in self.names:
            module_name, kind = name.rsplit(".", 1) if "." in name else ("", name)
            module, rows = self.block_modules[module_name], self.rows[name]
            x, g = seen[module_name][0], output_grads[module_name]
            batch = len(x)
            if isinstance(module, nn.Conv2d):
                g = g[:, rows]                                                       # (B, R, H', W')
                if kind == "weight":
                    columns.append(_conv_weight_rows(x, g, module).reshape(batch, -1))
                else:
                    columns.append(g.sum((2, 3)))                                    # (B, R)
            else:                                                                    # Linear
                g = g.reshape(batch, -1, g.shape[-1])[:, :, rows]                    # (B, T, R)
                if kind == "weight":
                    x = x.reshape(batch, -1, x.shape[-1])                            # (B, T, in)
                    columns.append(torch.einsum("btr,bti->bri", g, x).reshape(batch, -1))
                else:
                    columns.append(g.sum(1))                                         # (B, R)
        return torch.cat(columns, dim=1).detach(), logits.detach()

    @property
    def boundary_numel(self) -> int:
        """Scalars per image entering the suffix (a proxy for the cost of one HVP per image)."""
        return sum(b[0].numel() for b in self.boundary)

    def hessian(self, v: torch.Tensor, chunk: int = 128) -> torch.Tensor:
        """The explicit p x p Hessian of f at v (float64): p Hessian-vector products, batched
        over chunks of basis vectors (``is_grads_batched``) on one double-backward graph."""
        p = self.size
        hessian = torch.zeros(p, p, dtype=v.dtype, device=v.device)
        eye = torch.eye(p, dtype=v.dtype, device=v.device)
        for w, g in self._gradient_graphs(v):
            for start in range(0, p, chunk):
                basis = eye[start:start + chunk]
                hessian[start:start + chunk] += torch.autograd.grad(
                    g, w, grad_outputs=basis, is_grads_batched=True, retain_graph=True)[0]
        hessian = self.shard.all_reduce_sum(hessian, "hessian")
        hessian = hessian.double() / self.curvature_count
        hessian = 0.5 * (hessian + hessian.T)
        return hessian + self.weight_decay * torch.eye(p, dtype=torch.float64, device=v.device)


def _in_layout(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``tensor`` channels-last when asked and it is 4-D (images, feature maps, conv
    weights); otherwise as it is."""
    if channels_last and tensor.ndim == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def _outer_product_rule(module: nn.Module) -> bool:
    """Whether a block module's per-sample gradients follow from its input and output
    gradient alone: a Linear, or a Conv2d without groups, with zero padding given as numbers."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and
            module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _conv_weight_rows(x: torch.Tensor, g: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Per-sample gradient (B, R, C, kh, kw) of ``conv``'s weight rows whose outputs have the
    gradient ``g`` (B, R, H', W'), for the input ``x`` (B, C, H, W): for each kernel tap (i, j),
    the sum over output positions of g times the input pixel that tap reads, one batched matrix
    product per tap (``F.unfold``'s im2col was several times slower on the small CNN)."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (conv.kernel_size, conv.stride, conv.dilation,
                                              conv.padding)
    x = F.pad(x, (pw, pw, ph, ph))
    height, width = g.shape[2:]
    taps = [torch.einsum("brhw,bchw->brc", g, x[:, :, i * dh: i * dh + sh * (height - 1) + 1: sh,
                                                 j * dw: j * dw + sw * (width - 1) + 1: sw])
            for i in range(kh) for j in range(kw)]                                   # (B, R, C) each
    return torch.stack(taps, dim=-1).reshape(g.shape[0], g.shape[1], x.shape[1], kh, kw)
