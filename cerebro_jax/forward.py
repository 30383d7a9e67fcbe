"""The jitted forward pass of a BP model for prediction and evaluation, compiled with the
XLA options that make it faster on CPUs.

On jaxlib 0.10's CPU backend, XLA's YNNPACK fusions (its default for matmuls) run
CEReBrO's float forward pass slower than XLA's other kernels: turning them off made
batch-1 latency 1.35x and batch 256 1.28x faster here, and weight-only INT8 (float
matmuls on dequantized weights) 1.32x and 1.22x (docs/benchmarks.md). 512-bit vectors
(LLVM's preference is 256 bits) and, where a device has one XLA thread (serving a window
at a time with --cpu_threads=1, or one device per core), Eigen's matmuls on the calling
thread made batch-1 latency on one thread 1.06x faster again (2.63 against 2.78 ms,
alternated in one process; batch 256 on two devices 1.04x). Without XLA's tree rewrite of
reductions the pass has 194 operations instead of 246 at batch 1, and batch 1 on one
thread ran 1.03x faster (2.36 against 2.44 ms, faster in 10 of 10 rounds alternated in
one process), batch 256 1.02-1.03x. The integer INT8 paths gained nothing and keep XLA's
defaults. For inference the options move outputs by about 3e-8 mmHg. Training steps have
their own (trainers/steps.py).
"""

from __future__ import annotations

import functools

import jax

from cerebro_jax import sharding
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.quant import quantization
from cerebro_jax.quant.quantization import QuantSpec

CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': '',  # YNNPACK fusions off
               # LayerNorm's 192-wide sums as one reduction each, not XLA's tree of
               # 32-wide partial sums plus a reduction (three thunks more per norm).
               'xla_disable_hlo_passes': 'tree_reduction_rewriter',
               **sharding.WIDE_VECTORS}
FLOAT_MATMUL_MODES = ('float32', 'int8_weights')  # the modes CPU_OPTIONS speed up


def compiler_options(spec: QuantSpec = QuantSpec()) -> dict:
  """CPU_OPTIONS, plus sharding.ONE_THREAD_MATMULS where each device has one XLA thread,
  for the float-matmul modes when the default backend is a CPU whose XLA knows them; {}
  otherwise (integer INT8 paths, a GPU or TPU, or another jaxlib where an experimental
  option is gone)."""
  if spec.mode not in FLOAT_MATMUL_MODES:
    return {}
  return sharding.cpu_compile_options(CPU_OPTIONS)


def jit(config: ModelConfig, spec: QuantSpec = QuantSpec(), **jit_kwargs):
  """jax.jit of quantization.make_apply(config, spec): (params, signals (B, C, 1250)) ->
  (B, 2) [DBP, SBP] mmHg, with compiler_options(spec); jit_kwargs go to jax.jit."""
  return jax.jit(quantization.make_apply(config, spec),
                 compiler_options=compiler_options(spec), **jit_kwargs)


@functools.lru_cache(maxsize=8)
def predict_fn(model_config, mesh, spec: QuantSpec = QuantSpec()):
  """Jitted (params, signals (B, 2, 1250)) -> (B, 2) outputs, batch split over `mesh`;
  params as `spec` says (float32, or quantized)."""
  return jit(model_config, spec,
             in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
             out_shardings=sharding.batch_sharded(mesh))
