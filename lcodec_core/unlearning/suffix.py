"""Split a model's forward pass at the modules being updated, so frozen work is done once.

The block Newton step evaluates the retained loss, its gradient and Hessian-vector products
many times, always with every parameter outside the block P fixed. Everything the forward pass
computes before the first module of P is therefore a constant. With ``torch.fx`` we trace the
model, mark every node that depends on a module in P ("dependent"), and cut the graph at the
"boundary": the independent nodes feeding dependent ones.

- ``prefix``: input -> boundary values (run once per image, under ``no_grad``).
- ``suffix``: boundary values -> logits (a GraphModule sharing the original submodules, so
  ``torch.func.functional_call(suffix, params, boundary)`` takes the model's parameter names).

The result is exact: logits = suffix(prefix(x)). A model that ``torch.fx`` cannot trace falls
back to prefix = identity and suffix = the whole model.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch
from torch import fx, nn

log = logging.getLogger(__name__)


@dataclass
class SplitModel:
    """prefix: (x,) -> tuple of boundary tensors; suffix: (*boundary) -> logits."""
    prefix: nn.Module
    suffix: nn.Module
    traced: bool

    @torch.no_grad()
    def boundary_values(self, images: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
        """Run the prefix on ``images`` (N, ...) in batches; returns the boundary tensors (N, ...)."""
        chunks = [self.prefix(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return [torch.cat([chunk[j] for chunk in chunks]) for j in range(len(chunks[0]))]


class _Identity(nn.Module):
    def forward(self, x):
        return (x,)


def split_model(model: nn.Module, modules: set[str]) -> SplitModel:
    """Cut ``model``'s traced graph just before the first computation that uses ``modules``."""
    try:
        traced = _trace(model)
    except Exception as error:  # dynamic control flow and the like
        log.info("torch.fx could not trace %s (%s); using the whole model as suffix",
                 type(model).__name__, error)
        return SplitModel(_Identity(), model, traced=False)

    def uses_block(node: fx.Node) -> bool:
        if node.op in ("call_module", "get_attr"):
            target = str(node.target)
            return any(target == m or target.startswith(m + ".") for m in modules)
        return False

    dependent: set[fx.Node] = set()
    for node in traced.graph.nodes:
        if node.op != "output" and (uses_block(node) or any(n in dependent for n in node.all_input_nodes)):
            dependent.add(node)
    output = next(n for n in traced.graph.nodes if n.op == "output")
    boundary = [n for n in traced.graph.nodes
                if n not in dependent and n.op != "output" and any(u in dependent for u in n.users)]
    if not dependent or not boundary:
        raise ValueError(f"the model's output does not depend on modules {sorted(modules)}")

    prefix_graph, env = fx.Graph(), {}
    for node in traced.graph.nodes:
        if node not in dependent and node.op != "output":
            env[node] = prefix_graph.node_copy(node, lambda n: env[n])
    prefix_graph.output(tuple(env[b] for b in boundary))

    suffix_graph, env = fx.Graph(), {}
    for b in boundary:
        env[b] = suffix_graph.placeholder(f"boundary_{b.name}")
    for node in traced.graph.nodes:
        if node in dependent:
            env[node] = suffix_graph.node_copy(node, lambda n: env[n])
    suffix_graph.output(fx.map_arg(output.args[0], lambda n: env[n]))
    return SplitModel(_pruned(traced, prefix_graph), _pruned(traced, suffix_graph), traced=True)


_TRACE_LOCK = threading.Lock()  # one torch.fx trace at a time in this process (see _trace)


class _OwnThreadTracer(fx.Tracer):
    """A tracer that leaves every other thread's module calls alone.

    While ``Tracer.trace`` runs, torch.fx replaces ``nn.Module.__call__`` and ``__getattr__``
    process-wide; a forward of any other model in another thread (a dashboard page, another
    session's evaluation) would then reach this tracer and fail with "module is not installed
    as a submodule". Calls from other threads run the original code here.
    """

    def trace(self, root, concrete_args=None):
        self._thread = threading.get_ident()
        return super().trace(root, concrete_args)

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _trace(model: nn.Module) -> fx.GraphModule:
    """``fx.symbolic_trace`` made safe next to other threads. Traces are serialised: two at
    once would each save and restore the other's patch of ``nn.Module.__call__``, leaving a
    stale tracer installed for the whole process."""
    with _TRACE_LOCK:
        tracer = _OwnThreadTracer()
        graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, model.__class__.__name__)


def _pruned(root: fx.GraphModule, graph: fx.Graph) -> fx.GraphModule:
    """A GraphModule over ``graph`` (sharing ``root``'s submodules) without unused nodes."""
    module = fx.GraphModule(root, graph)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module
