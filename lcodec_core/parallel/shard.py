"""The retained set split over the processes of a torch.distributed group, and its sums.

Every quantity the removal computes over the retained rows is a sum over rows (docs/
ALGORITHM.md, sections 4-6), so with the N rows split into W contiguous shards,

    sum_{i in R} a_i = sum_{r=0..W-1} sum_{i in R_r} a_i,

each process (rank r) sums its own shard R_r and one all-reduce adds the W partial sums:

    f(v)            (1/N) sum_r sum_{R_r} CE_i + (lam/2)|v|^2        1 scalar
    grad f(v)       (1/N) sum_r sum_{R_r} grad CE_i + lam v           p scalars
    H u             (1/N_c) sum_r sum_{C_r} Hess CE_i u + lam u        p scalars per product
    Fisher          G^T G = sum_r G_r^T G_r (p < N)                    p x p scalars
                    or G = [G_0; ...; G_{W-1}] gathered (N <= p)        N x p scalars
    accuracy        sum_r #correct_r / N                               2 scalars

:class:`RetainedShard` is that split plus the collectives. With one process (the default,
``ONE_PROCESS``) every method returns its argument as it is: the single-process path runs the
same lines, communicates nothing and costs nothing extra. Shards are contiguous and in rank
order, so a gather puts rows back in their single-process order.

Every collective is counted in :attr:`RetainedShard.traffic` (bytes of the payload one rank
contributes, by what was reduced); a ring all-reduce moves about 2 (W-1)/W times that per
rank over the wire, an all-gather (W-1) times it.
"""
from __future__ import annotations

import pickle
from collections import defaultdict
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


class RetainedShard:
    """Rank ``rank`` of ``world_size`` processes: its share of any retained row set, and the
    collectives that add the shares up (identities when ``world_size`` is 1).

    Parameters
    ----------
    rank : this process's rank r in [0, W).
    world_size : W, the number of processes sharing the retained set (1: no communication).
    group : the ``torch.distributed`` process group (None: the default group). Must be
        initialised when W > 1; gloo on CPU, NCCL when the model is on a GPU.
    device : where scalars created for a collective live (``cuda:i`` for NCCL, else cpu).

    Attributes
    ----------
    traffic : dict, what -> bytes this rank contributed to collectives ("gradient", "hvp",
        "fisher_gram", "fisher_rows", "loss", "accuracy", "selection", "block", ...).
    calls : dict, what -> number of collectives.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, group=None,
                 device: torch.device | str = "cpu"):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size) and world_size >= 1; "
                             f"got rank {rank}, world_size {world_size}")
        self.rank, self.world_size, self.group = int(rank), int(world_size), group
        self.device = torch.device(device)
        self.traffic: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def __repr__(self) -> str:
        return f"RetainedShard(rank={self.rank}, world_size={self.world_size})"

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process (False: every collective is the identity)."""
        return self.world_size > 1

    @property
    def bytes_communicated(self) -> int:
        """Total payload bytes this rank contributed to collectives so far."""
        return sum(self.traffic.values())

    def _count(self, what: str, nbytes: int) -> None:
        self.traffic[what] += int(nbytes)
        self.calls[what] += 1

    # ---- the split -------------------------------------------------------------------------
    def span(self, n: int) -> tuple[int, int]:
        """Rows [start, stop) of an n-row set that this rank holds: contiguous, in rank order,
        sizes differing by at most one."""
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of ``tensor`` (n, ...) (``tensor`` itself in one process)."""
        if not self.distributed:
            return tensor
        start, stop = self.span(len(tensor))
        return tensor[start:stop]

    def local_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """Of the sorted global row indices ``rows`` (into an n-row set), those this rank
        holds, as indices into its shard (``rows`` itself in one process)."""
        if not self.distributed:
            return rows
        start, stop = self.span(n)
        return rows[(rows >= start) & (rows < stop)] - start

    # ---- collectives -----------------------------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor, what: str = "sum") -> torch.Tensor:
        """sum over ranks of ``tensor`` (same shape on every rank); a new tensor, the input
        is untouched. In one process: ``tensor`` itself."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist
        out = tensor.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        self._count(what, out.numel() * out.element_size())
        return out

    def sum_float(self, value: float, what: str = "sum") -> float:
        """sum over ranks of a Python float (reduced in float64)."""
        if not self.distributed:
            return value
        return float(self.all_reduce_sum(torch.tensor([value], dtype=torch.float64,
                                                      device=self.device), what)[0])

    def count(self, local: int, what: str = "rows") -> int:
        """sum over ranks of a row count."""
        if not self.distributed:
            return local
        return int(self.all_reduce_sum(torch.tensor([local], dtype=torch.int64,
                                                    device=self.device), what)[0])

    def mean_rows(self, rows: torch.Tensor, what: str = "mean") -> torch.Tensor:
        """Mean over every rank's rows of ``rows`` (N_r, ...) -> (...); ``rows.mean(0)`` in one
        process. The global N must be > 0."""
        if not self.distributed:
            return rows.mean(0)
        total = self.all_reduce_sum(torch.cat([rows.sum(0).reshape(-1),
                                               rows.new_tensor([len(rows)])]), what)
        return (total[:-1] / total[-1]).reshape(rows.shape[1:])

    def mean(self, values: torch.Tensor, what: str = "mean") -> float:
        """Mean of the 1-D ``values`` (N_r,) over every rank's rows (nan when N = 0), as
        ``float(values.double().mean())`` in one process."""
        if not self.distributed:
            return float(values.double().mean()) if len(values) else float("nan")
        total = self.all_reduce_sum(torch.stack([values.double().sum(),
                                                 torch.tensor(float(len(values)), dtype=torch.float64,
                                                              device=values.device)]), what)
        return float(total[0] / total[1]) if float(total[1]) else float("nan")

    def any_rows(self, mask: torch.Tensor, what: str = "any") -> torch.Tensor:
        """Element-wise logical or of the bool ``mask`` (same shape on every rank)."""
        if not self.distributed:
            return mask
        return self.all_reduce_sum(mask.to(torch.int32), what) > 0

    def gather_rows(self, rows: torch.Tensor, what: str = "gather") -> torch.Tensor:
        """Every rank's ``rows`` (N_r, ...) stacked in rank order: (sum_r N_r, ...), on every
        rank (``rows`` itself in one process). Shards may differ in length (padded in transit)."""
        if not self.distributed:
            return rows
        import torch.distributed as dist
        counts = self.all_reduce_sum(
            torch.zeros(self.world_size, dtype=torch.int64, device=rows.device)
            .index_fill_(0, torch.tensor([self.rank], device=rows.device), len(rows)), "rows")
        longest = int(counts.max())
        padded = rows.new_zeros((longest,) + tuple(rows.shape[1:]))
        padded[:len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        self._count(what, padded.numel() * padded.element_size())
        return torch.cat([part[:int(count)] for part, count in zip(parts, counts)])

    def broadcast_tensor(self, tensor: torch.Tensor, what: str = "broadcast") -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (``tensor`` itself in one process)."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist
        out = tensor.detach().clone().contiguous()
        dist.broadcast(out, src=0, group=self.group)
        self._count(what, out.numel() * out.element_size())
        return out

    def from_rank0(self, compute: Callable[[], T], what: str = "broadcast") -> T:
        """``compute()`` run on rank 0 only, its (picklable) result sent to every rank; in one
        process just ``compute()``. An exception on rank 0 is raised on every rank."""
        if not self.distributed:
            return compute()
        import torch.distributed as dist
        box: list = [None]
        if self.rank == 0:
            try:
                box[0] = ("ok", compute())
            except Exception as error:      # every rank must learn of it, or they would wait
                box[0] = ("error", error)
        dist.broadcast_object_list(box, src=0, group=self.group,
                                   device=self.device if self.device.type == "cuda" else None)
        self._count(what, len(pickle.dumps(box[0])))
        status, value = box[0]
        if status == "error":
            raise value
        return value


ONE_PROCESS = RetainedShard()
"""The whole retained set in this process: every collective is the identity."""
