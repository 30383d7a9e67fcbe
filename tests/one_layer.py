"""One Dense layer named 'head' (a layer the paper quantizes), for per-layer INT8 tests."""

import flax.linen as nn
import numpy as np

from cerebro_jax.quant import quantization


class OneLayer(nn.Module):
  """Dense(576) named 'head': (..., D) -> (..., 576)."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(576, name='head')(x)


def run(params, x, spec: quantization.QuantSpec = quantization.QuantSpec()) -> np.ndarray:
  """OneLayer on x with params as `spec` runs them (float, or quantized through the same
  interceptor as the model)."""
  if spec.mode == 'float32':
    return np.asarray(OneLayer().apply({'params': params}, x))
  with nn.intercept_methods(quantization._quantizing_interceptor(spec)):  # pylint: disable=protected-access
    return np.asarray(OneLayer().apply({'params': params}, x))
