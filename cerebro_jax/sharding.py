"""A 1-D data-parallel device mesh: parameters replicated, batches split on axis 0; and
the XLA CPU runtime's settings (devices, threads, dispatch, compile options)."""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax._src import xla_bridge  # backends_are_initialized: no public equivalent
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

DATA_AXIS = 'data'

# XLA CPU compile option for programs whose every thread works alone (a pool of one thread
# per device, or a train step cut into a part per thread): Eigen's matmuls on the calling
# thread instead of going through the pool.
ONE_THREAD_MATMULS = {'xla_cpu_multi_thread_eigen': False}
# XLA CPU compile option: 512-bit vectors where the CPU has AVX-512 (LLVM prefers 256).
WIDE_VECTORS = {'xla_cpu_prefer_vector_width': 512}


class BatchSplitError(ValueError):
  """A batch size that does not split evenly over the devices."""


def use_cpu_devices(count: int) -> None:
  """Splits this process's CPU into `count` JAX devices, so that the data mesh runs a
  batch's shards side by side on the cores (0: JAX's default, one CPU device).

  XLA runs one operation at a time, and few of them keep two cores busy. On 2 cores, 2
  devices ran batch-256 inference 1.25-1.46x faster than one device; they trained
  CEReBrO small 1.10-1.16x faster before one device's steps ran without page faults
  (use_synchronous_cpu_dispatch), and since then 1.01-1.10x at batch 64 and 0.88-0.98x
  at 32 (docs/benchmarks.md). Batches must then divide by `count`. Only the CPU backend
  is affected (a GPU or TPU job keeps its devices). Must run before anything touches a
  JAX device.
  """
  if count < 0:
    raise ValueError(f'cpu_devices must be >= 0, got {count}')
  if count:
    jax.config.update('jax_num_cpu_devices', count)


def use_cpu_threads(count: int) -> None:
  """Gives XLA's CPU runtime a pool of `count` threads (0: XLA's default, one per core;
  with use_cpu_devices(N) at least N).

  One thread gives the lowest latency for a window at a time: on 2 cores, batch-1
  prediction took 2.5-2.9 ms with one thread against 3.4-5.0 ms with two
  (docs/benchmarks.md): spreading its small operations over two threads costs more than
  it gains. Large batches and training want every core (the default).
  With one thread the computations also run on the calling thread
  (use_synchronous_cpu_dispatch), not handed to the pool's one thread and waited for:
  batch 1 took 2.12-2.29 ms against 2.29-2.36 (four processes each, in turn).
  Sets PJRT_NPROC, which XLA reads when the CPU backend starts: must run before
  anything touches a JAX device.
  """
  if count < 0:
    raise ValueError(f'cpu_threads must be >= 0, got {count}')
  if count:
    _require_backends_not_started('cpu_threads')
    os.environ['PJRT_NPROC'] = str(count)
  if count == 1:
    use_synchronous_cpu_dispatch()


def cpu_threads_per_device() -> int:
  """XLA's CPU threads per local CPU device: its pool's size (PJRT_NPROC or NPROC, else
  the cores this process may use) over the local devices, at least 1."""
  pool = os.environ.get('PJRT_NPROC') or os.environ.get('NPROC')
  if pool:
    threads = int(pool)
  elif hasattr(os, 'sched_getaffinity'):  # Linux
    threads = len(os.sched_getaffinity(0))
  else:
    threads = os.cpu_count() or 1
  return max(1, threads // jax.local_device_count())


def cpu_compile_options(options: dict, parts_per_device: int = 1) -> dict:
  """XLA compile options of a program whose device batches are cut into
  `parts_per_device` independent parts: `options`, plus ONE_THREAD_MATMULS when every
  one of XLA's threads per device has a part of its own (parts >= threads; a forward
  pass, one part, where a device has one thread), through _known_cpu_options."""
  options = dict(options)
  if parts_per_device >= cpu_threads_per_device():
    options.update(ONE_THREAD_MATMULS)
  return _known_cpu_options(options)


def _known_cpu_options(options: dict) -> dict:
  """`options` (XLA compile options) when the default backend is a CPU whose XLA knows
  them all, else {}: a GPU or TPU, or a jaxlib that dropped an experimental option."""
  if jax.default_backend() != 'cpu' or not _xla_knows(tuple(sorted(options.items()))):
    return {}
  return dict(options)


@functools.cache
def _xla_knows(options: tuple) -> bool:
  """Whether this XLA compiles with `options` (the items of an options dict)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(0.0).compile()
  except jax.errors.JaxRuntimeError:  # 'No such compile option'
    return False
  return True


def use_synchronous_cpu_dispatch() -> None:
  """Runs each CPU computation on the calling thread (jax_cpu_enable_async_dispatch off).

  XLA's CPU runtime allocates a step's scratch memory afresh at each call (192 MiB for
  CEReBrO small's train step at 32 windows). On a worker thread glibc serves it from a
  fresh mapping, which page-faults on first touch at every step; on the main thread,
  with scripts/setup_venv.sh's GLIBC_TUNABLES (mmap_max=0, a high trim_threshold), it
  reuses the heap and the step runs without page faults: one device trained 1.02-1.17x
  faster on 2 cores (docs/benchmarks.md). The training loop keeps its losses on the
  device, so it loses nothing by waiting. Only the CPU backend is affected. Must run
  before anything touches a JAX device.
  """
  _require_backends_not_started('synchronous CPU dispatch')
  jax.config.update('jax_cpu_enable_async_dispatch', False)


def _require_backends_not_started(setting: str) -> None:
  """Raises if JAX's backends already run: `setting` is read when they start."""
  if xla_bridge.backends_are_initialized():
    raise RuntimeError(f'{setting}: JAX\'s backends are already running; set it before '
                       'anything touches a JAX device (first thing in the process)')


def data_mesh() -> jax.sharding.Mesh:
  """All devices (of every process) on one 'data' axis."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch(global_batch: int, what: str = 'batch_size') -> int:
  """This process's share of a global batch; it must split evenly over the devices."""
  if global_batch % jax.device_count():
    raise BatchSplitError(f'{what} {global_batch} does not divide over '
                          f'{jax.device_count()} devices')
  return global_batch // jax.process_count()


def put_batch(batch: dict, mesh) -> dict:
  """Host-local numpy arrays -> global arrays sharded over the data axis."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def local_rows(array: jax.Array, mesh) -> np.ndarray:
  """This process's rows of a global array sharded over the data axis (put_batch's
  inverse): all of it with one process."""
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      array, mesh, PartitionSpec(DATA_AXIS)))


def local_shards(mesh) -> tuple[list[int], int]:
  """(positions of this process's devices on the data axis, number of devices).

  Position k holds rows [k * B / D, (k + 1) * B / D) of every global batch of B rows;
  a process's positions are consecutive, in the order put_batch expects them.
  """
  devices = list(mesh.devices.flat)
  mine = [k for k, d in enumerate(devices) if d.process_index == jax.process_index()]
  if mine != list(range(mine[0], mine[0] + len(mine))):
    raise ValueError(f'process {jax.process_index()} holds data-axis positions {mine}: '
                     'expected consecutive ones')
  return mine, len(devices)
