"""Data-parallel removal: the retained set's sums split over W processes (torch.distributed).

- :class:`RetainedShard` (:mod:`.shard`): this process's contiguous share of the retained rows
  and the all-reduce / gather that add the shares up; the identity in one process
  (``ONE_PROCESS``), so the single-process engine runs the same lines at no extra cost.
- :func:`unlearn_distributed` (:mod:`.launch`): :func:`lcodec_core.unlearn` on W processes,
  spawned here (gloo on 127.0.0.1) or started by torchrun (env:// rendezvous);
  :func:`remove_distributed` the same plus the before/after evaluation that
  :func:`lcodec_core.removal.remove` reports, split over the same processes.

See docs/SCALING.md for the user-facing how-to and what is and is not split.
"""
from .launch import (check_workers, join_group, removal_engine, remove_distributed,
                     run_on_workers, unlearn_distributed)
from .shard import ONE_PROCESS, RetainedShard

__all__ = ["RetainedShard", "ONE_PROCESS", "unlearn_distributed", "remove_distributed", "run_on_workers",
           "join_group", "check_workers", "removal_engine"]
