"""Start W processes that remove data together, and join a group another launcher started.

Three ways to run :func:`unlearn_distributed`:

1. ``workers=1`` (or None outside a process group): exactly :func:`lcodec_core.unlearn`.
2. ``workers=W > 1`` on one machine: W processes are spawned with ``torch.multiprocessing``
   (gloo, ``MASTER_ADDR=127.0.0.1``, a free port; NCCL with one GPU each when the model is
   on a GPU and W GPUs are visible). Each process receives the same arguments (tensors go
   through shared memory, not copies), takes its contiguous share of the retained rows
   (:class:`.shard.RetainedShard`) and runs the same removal; rank 0's result comes back.
3. Under ``torchrun`` (or any ``init_process_group``): every rank calls the function with the
   same arguments; the group is read from ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
   ``MASTER_PORT`` (env:// rendezvous) when not yet initialised. Every rank returns the same
   result; let rank 0 write files.

Which sums are split, and what crosses the wire, is described in :mod:`.shard` and
docs/SCALING.md.
"""
from __future__ import annotations

import copy
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data import ImageDataset
from ..unlearning.config import UnlearnConfig
from .shard import RetainedShard

ProgressFn = Callable[[dict], None]


def check_workers(workers, retained_rows: int) -> int:
    """``workers`` as an int in [1, retained_rows], else ``ValueError`` saying why."""
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise ValueError(f"workers must be a whole number >= 1; got {workers!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (1 runs in this process); got {workers}")
    if workers > retained_rows:
        raise ValueError(f"workers ({workers}) must not exceed the retained rows the removal "
                         f"reads ({retained_rows}): every worker needs at least one row")
    return workers


def retained_rows(retain: ImageDataset, config: UnlearnConfig) -> int:
    """How many retained rows the removal's objective holds (after ``retain_subsample``)."""
    size = config.retain_subsample
    return len(retain) if size is None else min(size, len(retain))


def _in_group() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def _launched() -> bool:
    """Whether torchrun (or another env:// launcher) started this process as one of several."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_group(backend: str | None = None, device: torch.device | str = "cpu") -> RetainedShard:
    """This process's :class:`RetainedShard` in the default group, initialising it from the
    environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; env://) when
    needed. ``backend``: "gloo" or "nccl" (default: nccl for a CUDA ``device``, else gloo)."""
    import torch.distributed as dist
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
                   if name not in os.environ]
        if missing:
            raise ValueError(f"no process group: start the ranks with torchrun, or set "
                             f"{', '.join(missing)} (env:// rendezvous)")
        dist.init_process_group(backend, init_method="env://")
    return RetainedShard(dist.get_rank(), dist.get_world_size(), device=device)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the spawned group's store)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class _Job:
    """What every spawned rank runs: ``function(shard, *args, on_progress=...)``."""
    function: Callable
    args: tuple
    workers: int
    port: int
    backend: str
    device: str
    threads: int
    out: str


def _rank_main(rank: int, job: _Job, events) -> None:
    """Body of one spawned process: join the group, run, send rank 0's result back."""
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job.port), RANK=str(rank),
                      WORLD_SIZE=str(job.workers), LOCAL_RANK=str(rank))
    torch.set_num_threads(job.threads)
    device = torch.device("cuda", rank) if job.device == "cuda" else torch.device("cpu")
    try:
        shard = join_group(job.backend, device)
        progress = (lambda event: events.put(("progress", event))) if rank == 0 else None
        result = job.function(shard, *job.args, on_progress=progress)
        if rank == 0:
            torch.save(result, job.out)
        dist.barrier()
        events.put(("done", rank))
    except BaseException as error:          # the launcher stops the other ranks and re-raises
        try:
            events.put(("error", error))
        except Exception:                   # an exception that does not pickle
            events.put(("error", RuntimeError(f"{type(error).__name__}: {error}")))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_on_workers(function: Callable, args: tuple, workers: int, *,
                   on_progress: ProgressFn | None = None, backend: str | None = None,
                   device: str = "cpu", threads: int | None = None):
    """Spawn ``workers`` processes that run ``function(shard, *args, on_progress=...)`` in
    one gloo (or NCCL) group on this machine, and return rank 0's return value.

    ``function`` must be importable by name (a module-level function) and its return value
    picklable; ``on_progress`` receives rank 0's events in this process. ``threads``: torch
    threads per worker (default: this process's count divided among the workers).
    An exception in any rank stops all of them and is raised here.
    """
    import torch.multiprocessing as mp
    threads = threads or max(1, torch.get_num_threads() // workers)
    backend = backend or ("nccl" if device == "cuda" else "gloo")
    context = mp.get_context("spawn")
    events = context.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="lcodec-workers-") as folder:
        out = str(Path(folder) / "rank0.pt")
        job = _Job(function, tuple(args), workers, free_port(), backend, device, threads, out)
        processes = mp.start_processes(_rank_main, args=(job, events), nprocs=workers,
                                       join=False, start_method="spawn")
        finished = 0
        try:
            while finished < workers:
                while events.empty():
                    if processes.join(timeout=0.05) and events.empty():
                        raise RuntimeError("the workers exited without reporting a result")
                kind, value = events.get()
                if kind == "error":
                    raise value
                if kind == "progress" and on_progress is not None:
                    on_progress(value)
                finished += kind == "done"
        except BaseException:
            for process in processes.processes:
                if process.is_alive():
                    process.terminate()
            raise
        processes.join()
        # Not a checkpoint: rank 0's whole UnlearnResult, pickled by our own worker into the
        # private temporary folder this call created (mode 0700) a moment ago, so it is
        # trusted as the queue's pickles are. User checkpoints load only with weights_only=True.
        return torch.load(out, weights_only=False)


def _unlearn_on_rank(shard: RetainedShard, model, forget, retain, config, options,
                     on_progress=None):
    """One rank of :func:`unlearn_distributed` (module-level so spawned processes find it)."""
    from ..unlearning.unlearn import unlearn
    if shard.device.type == "cuda" and next(model.parameters()).device != shard.device:
        model = copy.deepcopy(model).to(shard.device)      # this rank's GPU; the caller's stays
    return unlearn(model, forget, retain, config, on_progress, shard=shard, **options)


def unlearn_distributed(model: nn.Module, forget: ImageDataset, retain: ImageDataset,
                        config: UnlearnConfig = UnlearnConfig(),
                        on_progress: ProgressFn | None = None, *, workers: int | None = None,
                        weight_decay: float | None = None, recipe=None,
                        held_out: ImageDataset | None = None, backend: str | None = None,
                        threads: int | None = None):
    """:func:`lcodec_core.unlearn` with the retained set's sums split over ``workers``
    processes; the result equals the one-process result up to summation order (1e-5
    relative on the weights, the same slices, the same accuracies).

    Parameters
    ----------
    model, forget, retain, config, on_progress, weight_decay, recipe, held_out :
        as :func:`lcodec_core.unlearn` (every rank must pass the same values).
    workers : W. 1 runs :func:`~lcodec_core.unlearn` in this process, unchanged; W > 1 spawns
        W processes here. Inside a process group (torchrun) it must be None or the group's
        size. At most the number of retained rows the objective reads.
    backend : "gloo" (CPU, default) or "nccl" (a CUDA model; one GPU per worker).
    threads : torch threads per spawned worker (default: this process's, divided by W).

    Returns
    -------
    UnlearnResult: rank 0's (spawned), or this rank's (in a group; every rank's is the same).
    ``result.diagnostics["parallel"]`` gives W and the bytes each rank contributed to
    collectives, by what was reduced.

    Raises
    ------
    ValueError for a bad ``workers`` (0, negative, not an int, more than the retained rows)
    or a baseline method with W > 1, and whatever :func:`~lcodec_core.unlearn` raises.
    """
    options = {"weight_decay": weight_decay, "recipe": recipe, "held_out": held_out}
    rows = retained_rows(retain, config)
    if _in_group() or _launched():
        device = "cuda" if next(model.parameters()).is_cuda else "cpu"   # cuda: cuda:LOCAL_RANK
        shard = join_group(backend, device)
        if workers is not None and workers != shard.world_size:
            raise ValueError(f"workers={workers} but the process group has {shard.world_size} "
                             f"ranks; pass workers=None under torchrun")
        check_workers(shard.world_size, rows)
        return _with_traffic(_unlearn_on_rank(shard, model, forget, retain, config, options,
                                              on_progress if shard.rank == 0 else None), shard)
    workers = check_workers(1 if workers is None else workers, rows)
    if workers == 1:
        from ..unlearning.unlearn import unlearn
        return unlearn(model, forget, retain, config, on_progress, **options)
    device = "cuda" if next(model.parameters()).is_cuda else "cpu"
    if device == "cuda" and torch.cuda.device_count() < workers:
        raise ValueError(f"workers={workers} with NCCL needs one GPU per worker; "
                         f"{torch.cuda.device_count()} visible")
    return run_on_workers(_unlearn_on_rank_with_traffic,
                          (copy.deepcopy(model).cpu() if device == "cuda" else model, forget, retain,
                           config, options),
                          workers, on_progress=on_progress, backend=backend, device=device,
                          threads=threads)


def removal_engine(workers: int | None = None):
    """The ``engine`` for :func:`lcodec_core.removal.remove` (``lcodec unlearn --workers W``):
    None (the plain one-process engine) for W = 1 outside a process group, else a callable
    with :func:`lcodec_core.unlearn`'s signature that runs :func:`unlearn_distributed`.

    Under torchrun every rank runs the command; the ranks other than 0 leave the program
    (``SystemExit(0)``) as soon as the removal is done, so only rank 0 evaluates the result,
    saves it and records it in the ledger.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"--workers must be a whole number >= 1; got {workers!r}")
    launched = _in_group() or _launched()
    if not launched and workers in (None, 1):
        return None

    def engine(model, forget, retain, config=UnlearnConfig(), on_progress=None, **options):
        result = unlearn_distributed(model, forget, retain, config, on_progress,
                                     workers=None if launched else workers, **options)
        import torch.distributed as dist
        if launched and dist.get_rank() != 0:
            dist.destroy_process_group()
            raise SystemExit(0)
        return result
    return engine


def _unlearn_on_rank_with_traffic(shard, model, forget, retain, config, options, on_progress=None):
    return _with_traffic(_unlearn_on_rank(shard, model, forget, retain, config, options,
                                          on_progress), shard)


def _with_traffic(result, shard: RetainedShard):
    """``result`` with ``diagnostics["parallel"]``: W and the bytes this rank communicated."""
    result.diagnostics["parallel"] = {"workers": shard.world_size, "rank": shard.rank,
                                      "bytes": shard.bytes_communicated,
                                      "bytes_by_what": dict(shard.traffic),
                                      "calls_by_what": dict(shard.calls)}
    return result
