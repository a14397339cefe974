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
    if _one_process(workers, rows):
        from ..unlearning.unlearn import unlearn
        return unlearn(model, forget, retain, config, on_progress, **options)
    return _run_split(_unlearn_on_rank_with_traffic, (model, forget, retain, config, options),
                      model, rows, workers, on_progress, backend=backend, threads=threads)


def remove_distributed(model: nn.Module, bundle, request, config: UnlearnConfig = UnlearnConfig(),
                       on_progress: ProgressFn | None = None, *, workers: int | None = None,
                       before_needed: bool = True, weight_decay: float | None = None, recipe=None,
                       held_out: ImageDataset | None = None, backend: str | None = None,
                       threads: int | None = None) -> tuple:
    """:func:`unlearn_distributed` of ``request`` plus the evaluation that
    :func:`lcodec_core.removal.remove` reads (:func:`lcodec_core.audit.evaluation.evaluate`),
    with the retained images classified by the same W processes, each its share.

    Returns (result, before, after): the UnlearnResult, the accuracies of ``model`` on the
    request (None unless ``before_needed``) and those of ``result.model``. Arguments and
    errors as :func:`unlearn_distributed`; ``bundle`` gives the held-out split.
    """
    options = {"weight_decay": weight_decay, "recipe": recipe, "held_out": held_out}
    rows = retained_rows(request.retain, config)
    if _one_process(workers, rows):
        from ..audit.evaluation import evaluate
        from ..unlearning.unlearn import unlearn
        before = evaluate(model, bundle, request) if before_needed else None
        result = unlearn(model, request.forget, request.retain, config, on_progress, **options)
        return result, before, evaluate(result.model, bundle, request)
    return _run_split(_remove_on_rank, (model, bundle, request, config, options, before_needed),
                      model, rows, workers, on_progress, backend=backend, threads=threads)


def _one_process(workers, rows: int) -> bool:
    """Whether this call runs in this process alone: no process group and W = 1 (W checked
    first, so a bad W is refused before anything runs)."""
    if _in_group() or _launched():
        return False
    return check_workers(1 if workers is None else workers, rows) == 1


def _run_split(rank_function: Callable, args: tuple, model: nn.Module, rows: int,
               workers: int | None, on_progress: ProgressFn | None, *, backend: str | None,
               threads: int | None):
    """``rank_function(shard, *args, on_progress=...)`` on every rank of the group this process
    belongs to (torchrun), or on ``workers`` processes spawned here; rank 0's return value.
    ``rows``: the retained rows the removal reads (at least one per worker)."""
    if _in_group() or _launched():
        device = "cuda" if next(model.parameters()).is_cuda else "cpu"   # cuda: cuda:LOCAL_RANK
        shard = join_group(backend, device)
        if workers is not None and workers != shard.world_size:
            raise ValueError(f"workers={workers} but the process group has {shard.world_size} "
                             f"ranks; pass workers=None under torchrun")
        check_workers(shard.world_size, rows)
        return rank_function(shard, *args, on_progress=on_progress if shard.rank == 0 else None)
    workers = check_workers(1 if workers is None else workers, rows)
    device = "cuda" if next(model.parameters()).is_cuda else "cpu"
    if device == "cuda" and torch.cuda.device_count() < workers:
        raise ValueError(f"workers={workers} with NCCL needs one GPU per worker; "
                         f"{torch.cuda.device_count()} visible")
    if device == "cuda":
        args = (copy.deepcopy(model).cpu(),) + tuple(args[1:])    # each rank moves it to its GPU
    return run_on_workers(rank_function, args, workers, on_progress=on_progress,
                          backend=backend, device=device, threads=threads)


def removal_engine(workers: int | None = None):
    """The ``engine`` for :func:`lcodec_core.removal.remove` (``lcodec unlearn --workers W``):
    None (the plain one-process engine) for W = 1 outside a process group, else a callable
    with :func:`lcodec_core.unlearn`'s signature that runs :func:`unlearn_distributed`, and
    whose ``remove_and_evaluate`` (what ``remove`` calls) runs :func:`remove_distributed`.

    Under torchrun every rank runs the command; the ranks other than 0 leave the program
    (``SystemExit(0)``) once the removal and its evaluation are done, so only rank 0 saves
    the result and records it in the ledger.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"--workers must be a whole number >= 1; got {workers!r}")
    launched = _in_group() or _launched()
    if not launched and workers in (None, 1):
        return None
    return _SplitEngine(None if launched else workers, launched)


class _SplitEngine:
    """:func:`lcodec_core.unlearn`'s signature on W processes; ``remove_and_evaluate`` also
    splits the before/after evaluation of :func:`lcodec_core.removal.remove` over them."""

    def __init__(self, workers: int | None, launched: bool):
        self.workers, self.launched = workers, launched

    def __call__(self, model, forget, retain, config=UnlearnConfig(), on_progress=None, **options):
        return self._leave_unless_rank0(unlearn_distributed(
            model, forget, retain, config, on_progress, workers=self.workers, **options))

    def remove_and_evaluate(self, model, bundle, request, config=UnlearnConfig(),
                            on_progress=None, **options):
        """(result, before or None, after): see :func:`remove_distributed`."""
        return self._leave_unless_rank0(remove_distributed(
            model, bundle, request, config, on_progress, workers=self.workers, **options))

    def _leave_unless_rank0(self, value):
        import torch.distributed as dist
        if self.launched and dist.get_rank() != 0:
            dist.destroy_process_group()
            raise SystemExit(0)
        return value


def _unlearn_on_rank_with_traffic(shard, model, forget, retain, config, options, on_progress=None):
    return _with_traffic(_unlearn_on_rank(shard, model, forget, retain, config, options,
                                          on_progress), shard)


def _remove_on_rank(shard, model, bundle, request, config, options, before_needed,
                    on_progress=None):
    """One rank of :func:`remove_distributed`: evaluate, remove, evaluate, each split."""
    from ..audit.evaluation import evaluate
    if shard.device.type == "cuda" and next(model.parameters()).device != shard.device:
        model = copy.deepcopy(model).to(shard.device)
    before = evaluate(model, bundle, request, shard) if before_needed else None
    result = _unlearn_on_rank_with_traffic(shard, model, request.forget, request.retain, config,
                                           options, on_progress)
    return result, before, evaluate(result.model, bundle, request, shard)


def _with_traffic(result, shard: RetainedShard):
    """``result`` with ``diagnostics["parallel"]``: W and the bytes this rank communicated."""
    result.diagnostics["parallel"] = {"workers": shard.world_size, "rank": shard.rank,
                                      "bytes": shard.bytes_communicated,
                                      "bytes_by_what": dict(shard.traffic),
                                      "calls_by_what": dict(shard.calls)}
    return result
