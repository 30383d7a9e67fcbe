"""Static INT8 calibration: the input range of each quantized layer over chosen windows.

Observers of a layer's input (all its values over all calibration windows):
  minmax      the smallest and the largest value (torch's MinMaxObserver).
  percentile  the (100 - p)-th and the p-th percentile, read from a histogram of BINS bins
              over the min-max range (a second pass): a few extreme values then do not
              widen the steps for all the others; values beyond are clipped at inference.
The ranges become each layer's fixed input_scale and input_zero (quantization.py,
mode int8_static) under the scheme's rule, as torch's observers turn ranges into qparams.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cerebro_jax.models import model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.quant import quantization
from cerebro_jax.quant.quantization import QuantSpec

OBSERVERS = ('minmax', 'percentile')
BINS = 2048


def _min_max(x, _):
  return jnp.stack([jnp.min(x), jnp.max(x)])


def _histogram(x, value_range):
  low, high = value_range[0], value_range[1]
  width = jnp.where(high > low, high - low, 1.0)
  bins = jnp.clip(jnp.floor((x - low) / width * BINS), 0, BINS - 1).astype(jnp.int32)
  return jnp.bincount(bins.reshape(-1), length=BINS)


@functools.lru_cache(maxsize=8)
def _observe_fn(model_config: ModelConfig, measure):
  """Jitted (float params, windows (B, 2, 1250), {layer: range}) -> {layer: measure(input,
  that layer's range)} for every quantized layer, its input taken as the layer sees it."""
  module = model_lib.CerebroBP(model_config)

  def observe(params, windows, ranges):
    seen = {}

    def intercept(next_fun, args, kwargs, context):
      layer = '/'.join(context.module.path)
      if (isinstance(context.module, nn.Dense) and context.method_name == '__call__'
          and quantization.is_quantized_layer(layer)):
        seen[layer] = measure(jnp.asarray(args[0], jnp.float32), ranges.get(layer))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(intercept):
      module.apply({'params': params}, windows)
    return seen

  return jax.jit(observe)


def _over_batches(fn, params, windows, batch_size, ranges, combine):
  total = None
  for start in range(0, len(windows), batch_size):
    out = jax.tree.map(np.asarray, fn(params, windows[start:start + batch_size], ranges))
    total = out if total is None else jax.tree.map(combine, total, out)
  return total


def _percentile_range(counts: np.ndarray, low: float, high: float, percentile: float):
  cumulative = np.cumsum(counts)
  edges = np.linspace(low, high, BINS + 1)
  first = np.searchsorted(cumulative, cumulative[-1] * (1 - percentile / 100), side='right')
  last = np.searchsorted(cumulative, cumulative[-1] * percentile / 100, side='left')
  return np.float32(edges[min(first, BINS - 1)]), np.float32(edges[min(last, BINS - 1) + 1])


def layer_ranges(params, model_config: ModelConfig, windows: np.ndarray,
                 observer: str = 'minmax', percentile: float = 99.99,
                 batch_size: int = 64) -> dict[str, tuple[np.float32, np.float32]]:
  """{quantized layer path: (low, high)} of its input over `windows` (N, 2, 1250), as
  `observer` sees it (module docstring); float params."""
  return ranges_by_observer(params, model_config, windows, (observer,), percentile,
                            batch_size)[observer]


def ranges_by_observer(params, model_config: ModelConfig, windows: np.ndarray,
                       observers=OBSERVERS, percentile: float = 99.99,
                       batch_size: int = 64) -> dict[str, dict]:
  """{observer: layer_ranges} for each of `observers`, sharing the min-max pass."""
  unknown = [o for o in observers if o not in OBSERVERS]
  if unknown:
    raise ValueError(f'unknown observer {unknown[0]!r}; choose one of {OBSERVERS}')
  if not 50 < percentile <= 100:
    raise ValueError(f'percentile {percentile} must be in (50, 100]')
  if len(windows) == 0:
    raise ValueError('calibration needs at least one window')
  extremes = _over_batches(_observe_fn(model_config, _min_max), params, windows, batch_size,
                           {}, lambda a, b: np.stack([min(a[0], b[0]), max(a[1], b[1])]))
  ranges = {}
  if 'minmax' in observers:
    ranges['minmax'] = {layer: (np.float32(lo), np.float32(hi))
                        for layer, (lo, hi) in extremes.items()}
  if 'percentile' in observers:
    counts = _over_batches(_observe_fn(model_config, _histogram), params, windows,
                           batch_size, extremes, np.add)
    ranges['percentile'] = {layer: _percentile_range(counts[layer], *extremes[layer],
                                                     percentile) for layer in extremes}
  return ranges


def static_params(params, ranges: dict, spec: QuantSpec) -> dict:
  """Float params -> int8_static params: quantized kernels (spec.weights, spec.scheme) and
  each quantized layer's input_scale and input_zero (float32 (1,)) from its range."""
  if spec.mode != 'int8_static':
    raise ValueError(f'static parameters need an int8_static spec, got {spec.mode}')
  flat = traverse_util.flatten_dict(quantization.quantize_params(params, spec.weights,
                                                                 spec.scheme), sep='/')
  for layer, (low, high) in ranges.items():
    scale, zero = quantization.activation_qparams(jnp.float32(low), jnp.float32(high), spec)
    flat[f'{layer}/input_scale'] = np.asarray(scale, np.float32).reshape(1)
    flat[f'{layer}/input_zero'] = np.asarray(zero, np.float32).reshape(1)
  return traverse_util.unflatten_dict(flat, sep='/')
