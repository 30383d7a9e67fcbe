"""One job over several processes (TPU pod hosts, GPU nodes, or CPU processes).

JAX runs one process per host; `initialize` joins them into one runtime before anything
touches a device. Afterwards `jax.devices()` lists every process's devices, the data mesh
spans them all, and each process feeds its own devices. The rest of the project asks
this module who writes files (`is_main`), runs one-time work on process 0 while the
others wait (`on_main_process`), and gathers host-local rows from every process
(`gather_rows`). With one process all of this is a no-op.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

# The messages jax.distributed.initialize() raises when it detects no cluster (no TPU pod,
# SLURM or Open MPI environment) and no coordinator was given.
_UNDETECTED = ('coordinator_address should be defined', 'must be defined')


class ProcessFlagsError(ValueError):
  """Flags that do not describe a job of several processes."""


def initialize(coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1) -> None:
  """Joins the distributed runtime when this job has more than one process.

  With `coordinator_address` (HOST:PORT of process 0) the three arguments say everything.
  Without it, JAX's own cluster detection (Cloud TPU, SLURM, Open MPI) decides; where it
  detects nothing the job is one process and nothing happens. Must run before any other
  JAX call. CPU devices exchange data with gloo collectives.
  """
  if coordinator_address and not (num_processes >= 1 and 0 <= process_id < num_processes):
    raise ProcessFlagsError(
        f'--coordinator_address={coordinator_address} needs --num_processes >= 1 and '
        f'0 <= --process_id < --num_processes (got {num_processes} and {process_id})')
  if not coordinator_address and (num_processes > 0 or process_id >= 0):
    raise ProcessFlagsError('--num_processes and --process_id need --coordinator_address='
                            'HOST:PORT (process 0\'s address, the same on every process)')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return
  try:
    jax.distributed.initialize()
  except ValueError as e:
    if not any(text in str(e) for text in _UNDETECTED):
      raise


def is_main() -> bool:
  """True on the process that writes files, logs and shows progress (process 0)."""
  return jax.process_index() == 0


def log(message: str) -> None:
  """Prints `message` on process 0 only (one copy of each line, not one per process)."""
  if is_main():
    print(message)


def on_main_process(fn: Callable[[], None], what: str) -> None:
  """Runs `fn` on process 0 while the others wait; every process must call this.

  A failure on process 0 is raised there and reported on every other process too, so no
  process waits forever for one that has stopped.
  """
  if jax.process_count() == 1:
    fn()
    return
  error = None
  if is_main():
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except  (re-raised below)
      error = e
  failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
  if error is not None:
    raise error
  if int(failed):
    raise RuntimeError(f'process 0 failed while {what}; its log says why')


def gather_rows(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every process's rows of each array, concatenated in process order.

  local: {name: (N, ...) array}, N the same on every process; byte strings (dtype
  object or 'S') travel as fixed-width bytes. Returns {name: (process_count * N, ...)}.
  """
  if jax.process_count() == 1:
    return local
  texts = sorted(k for k, v in local.items() if v.dtype == object or v.dtype.kind == 'S')
  widths = {}
  if texts:  # the widest name anywhere, so that every process sends one shape
    mine = [np.asarray(local[k], dtype=bytes).dtype.itemsize for k in texts]
    widths = dict(zip(texts, np.max(multihost_utils.process_allgather(
        np.array(mine, np.int32)), axis=0)))
  numeric = {k: (np.asarray(v, dtype=f'S{widths[k]}').view(np.uint8).reshape(len(v), -1)
                 if k in widths else v) for k, v in local.items()}
  gathered = multihost_utils.process_allgather(numeric, tiled=True)
  return {k: (np.ascontiguousarray(v).view(f'S{widths[k]}').reshape(-1).astype(object)
              if k in widths else np.asarray(v)) for k, v in gathered.items()}
