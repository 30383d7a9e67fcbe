"""INT8 post-training quantization, as in the paper (PyTorch dynamic INT8), in JAX.

The linear layers the paper quantizes (attn.qkv, attn.proj, mlp.fc1, mlp.fc2, the head)
get symmetric INT8 weights: q = round(w / s) in [-127, 127], s = max|w| / 127 per output
channel (or per tensor). Everything else (patch projection, LayerNorms, tables, softmax,
attention products, biases) stays float32.

Modes (`QuantSpec.mode`):
  float32       the float model.
  int8_weights  weight-only: the model runs with dequantized weights (simulation).
  int8_dynamic  the paper's dynamic quantization: weights as above, and the input of each
                quantized layer quantized to INT8 on the fly with a scale from the current
                batch (per tensor, or per token). With integer=True the layer computes
                int8 x int8 -> int32 products and applies the scales after (the real
                integer path); with integer=False it runs dequantized values in float
                (the simulation). The two agree to float rounding.

Quantized parameters keep the float tree's layout; each quantized layer holds
{'kernel': int8 (in, out), 'scale': float32 (out,) or (1,), 'bias': float32 (out,)}.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cerebro_jax import model as model_lib
from cerebro_jax.model_config import ModelConfig

QMAX = 127
_QUANTIZED_LAYER = re.compile(r'^(encoder/blocks_\d+/(attn/(qkv|proj)|mlp/(fc1|fc2))|head)$')
MODES = ('float32', 'int8_weights', 'int8_dynamic')


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """How a model runs: mode, weight scale granularity, activation scale granularity."""
  mode: str = 'float32'
  weights: str = 'channel'  # 'channel' (per output channel) or 'tensor'
  activations: str = 'tensor'  # 'tensor' or 'token' (int8_dynamic only)
  integer: bool = True  # int8_dynamic: real int8 products (True) or simulation (False)

  def __post_init__(self):
    if self.mode not in MODES or self.weights not in ('channel', 'tensor') or (
        self.activations not in ('tensor', 'token')):
      raise ValueError(f'bad quantization spec {self}')

  @classmethod
  def from_metadata(cls, metadata: dict) -> 'QuantSpec':
    return cls(**metadata.get('quantization', {}))


def is_quantized_layer(path: str) -> bool:
  """Whether the Dense layer at '/'-joined `path` is one the paper quantizes."""
  return bool(_QUANTIZED_LAYER.match(path))


def quantize_tensor(x, axis=None):
  """Symmetric INT8: (int8 values, float32 scale with `axis` kept; max|x| / 127).

  axis=None: one scale for the tensor; otherwise the axes reduced to find each scale.
  """
  amax = jnp.max(jnp.abs(x), axis=axis, keepdims=axis is not None)
  scale = jnp.where(amax > 0, amax / QMAX, 1.0).astype(jnp.float32)
  return jnp.clip(jnp.round(x / scale), -QMAX, QMAX).astype(jnp.int8), scale


def quantize_params(params, weights: str = 'channel') -> dict:
  """Float params -> quantized params (kernels of the paper's layers to INT8)."""
  flat = traverse_util.flatten_dict(params, sep='/')
  out = {}
  for path, value in flat.items():
    layer, _, name = path.rpartition('/')
    if name == 'kernel' and is_quantized_layer(layer):
      q, scale = quantize_tensor(jnp.asarray(value), axis=0 if weights == 'channel' else None)
      out[path] = np.asarray(q)
      out[f'{layer}/scale'] = np.asarray(scale).reshape(-1)
    else:
      out[path] = np.asarray(value)
  return traverse_util.unflatten_dict(out, sep='/')


def dequantize_params(qparams) -> dict:
  """Quantized params -> float params (kernels = int8 x scale)."""
  flat = traverse_util.flatten_dict(qparams, sep='/')
  out = {}
  for path, value in flat.items():
    layer, _, name = path.rpartition('/')
    if name == 'scale' and is_quantized_layer(layer):
      continue
    if name == 'kernel' and f'{layer}/scale' in flat:
      value = value.astype(jnp.float32) * flat[f'{layer}/scale']
    out[path] = value
  return traverse_util.unflatten_dict(out, sep='/')


def is_quantized(params) -> bool:
  return any(leaf.dtype == jnp.int8 for leaf in jax.tree.leaves(params))


def _dynamic_interceptor(per_token: bool, integer: bool):
  """Quantizes the input of the paper's Dense layers to INT8 with a per-batch scale."""

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if not (isinstance(module, nn.Dense) and context.method_name == '__call__'
            and is_quantized_layer('/'.join(module.path))):
      return next_fun(*args, **kwargs)
    x = jnp.asarray(args[0], jnp.float32)
    x_q, x_scale = quantize_tensor(x, axis=-1 if per_token else None)
    if not integer:
      return next_fun(x_q.astype(jnp.float32) * x_scale, **kwargs)
    params = module.variables['params']
    products = jax.lax.dot_general(x_q, params['kernel'], (((x.ndim - 1,), (0,)), ((), ())),
                                   preferred_element_type=jnp.int32)
    return products.astype(jnp.float32) * x_scale * params['scale'] + params['bias']

  return intercept


@functools.lru_cache(maxsize=16)
def make_apply(model_config: ModelConfig, spec: QuantSpec = QuantSpec()):
  """(params, (B, C, T) windows) -> (B, 2) outputs, for params of `spec.mode`:
  float params for float32, quantized params for the INT8 modes. Not jitted."""
  module = model_lib.CerebroBP(model_config)
  if spec.mode == 'float32':
    return lambda params, x: module.apply({'params': params}, x)
  if spec.mode == 'int8_weights':
    return lambda qparams, x: module.apply({'params': dequantize_params(qparams)}, x)
  interceptor = _dynamic_interceptor(spec.activations == 'token', spec.integer)

  def apply(qparams, x):
    with nn.intercept_methods(interceptor):
      return module.apply({'params': qparams if spec.integer else dequantize_params(qparams)}, x)

  return apply


_COMPONENTS = (('BP head', r'^head/'), ('attention qkv + proj', r'/attn/'),
               ('MLP fc1 + fc2', r'/mlp/'), ('LayerNorms', r'/norm\d?/'),
               ('patch embedding', r'^encoder/patch_embed/'),
               ('encodings and tokens', r'^encoder/(mask_token|pad_token|channel_encoding|'
                                        r'patch_encoding)$'))


def _component(path: str) -> str:
  return next(name for name, pattern in _COMPONENTS if re.search(pattern, path))


def size_table(params, qparams) -> dict:
  """Bytes by component for the float32 and the quantized params, and totals in MiB
  (bytes / 1024^2): the arrays themselves, as a saved state dict holds them."""
  table = {name: {'float32_bytes': 0, 'int8_bytes': 0} for name, _ in _COMPONENTS}
  for column, tree in (('float32_bytes', params), ('int8_bytes', qparams)):
    for path, value in traverse_util.flatten_dict(tree, sep='/').items():
      table[_component(path)][column] += int(np.asarray(value).nbytes)
  total = {c: sum(row[c] for row in table.values()) for c in ('float32_bytes', 'int8_bytes')}
  return {'components': table, 'float32_mib': total['float32_bytes'] / 2**20,
          'int8_mib': total['int8_bytes'] / 2**20,
          'ratio': total['float32_bytes'] / total['int8_bytes']}
