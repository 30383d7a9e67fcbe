"""INT8 post-training quantization, as in the paper (PyTorch dynamic INT8), in JAX.

The linear layers the paper quantizes (attn.qkv, attn.proj, mlp.fc1, mlp.fc2, the head)
get symmetric INT8 weights: q = round(w / s) in [-127, 127], s = max|w| / 127 per output
channel (or per tensor). Everything else (patch projection, LayerNorms, tables, softmax,
attention products, biases) stays float32.

Modes (`QuantSpec.mode`):
  float32       the float model.
  int8_weights  weight-only: the model runs with dequantized weights (simulation).
  int8_dynamic  the paper's dynamic quantization: weights as above, and the input of each
                quantized layer quantized to 8 bits on the fly with a scale from the current
                batch (per tensor), from each window, or from each token. With
                integer=True the layer computes integer products summed in int32 and
                applies the scales after (the real integer path); with integer=False it
                runs dequantized values in float (the simulation). The two agree to float
                rounding.
  int8_static   static post-training quantization: as int8_dynamic, but each layer's input
                scale and zero point were fixed beforehand from calibration windows
                (calibration.py) and are stored beside its weights; inputs outside the
                calibrated range are clipped.

Schemes (`QuantSpec.scheme`):
  symmetric  int8 activations in [-127, 127] with scale max|x| / 127 (zero point 0), and
             weights likewise: half the codes are wasted on inputs that are never
             negative (GELU outputs), one code on the weights.
  pytorch    exactly what torch.ao.quantization.quantize_dynamic runs: activations uint8
             with a zero point, scale (max - min) / 255 from the range extended to hold 0
             (ATen's ChooseQuantizationParams; reduce_range: 0..127, the fbgemm engine
             on x86; qnnpack, the ARM engine, uses 0..255), inputs rounded after
             multiplying by 1 / scale; weights int8 in [-128, 127] with scale
             max|w| / 127.5 (MinMaxObserver, symmetric).

Quantized parameters keep the float tree's layout; each quantized layer holds
{'kernel': int8 (in, out), 'scale': float32 (out,) or (1,), 'bias': float32 (out,)}, and
for int8_static also 'input_scale' and 'input_zero' (float32 (1,)).
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

from cerebro_jax.models import model as model_lib
from cerebro_jax.models.model_config import ModelConfig

QMAX = 127
_QUANTIZED_LAYER = re.compile(r'^(encoder/blocks_\d+/(attn/(qkv|proj)|mlp/(fc1|fc2))|head)$')
MODES = ('float32', 'int8_weights', 'int8_dynamic', 'int8_static')
STATIC_LEAVES = ('input_scale', 'input_zero')


SCHEMES = ('symmetric', 'pytorch')
ACTIVATION_GRANULARITIES = ('tensor', 'window', 'token')
# ATen's smallest activation scale (quant_utils.h SMALL_SCALE_THRESHOLD).
_SMALL_SCALE = 6.1e-5


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """How a model runs: mode, scheme, weight and activation scale granularities."""
  mode: str = 'float32'
  weights: str = 'channel'  # 'channel' (per output channel) or 'tensor'
  # int8_dynamic: one activation scale per 'tensor' (the batch: PyTorch's), per 'window'
  # (a window's outputs then do not depend on the rest of its batch), or per 'token'.
  activations: str = 'tensor'
  integer: bool = True  # int8_dynamic/static: integer products (True) or simulation (False)
  # 'symmetric' or 'pytorch' (module docstring); int8_static: 'pytorch' = affine uint8
  # activations with a zero point, as torch's static quantization with quint8 observers.
  scheme: str = 'symmetric'
  reduce_range: bool = False  # pytorch scheme: 7-bit activations, as fbgemm runs them

  def __post_init__(self):
    if self.mode not in MODES or self.weights not in ('channel', 'tensor') or (
        self.activations not in ACTIVATION_GRANULARITIES or self.scheme not in SCHEMES
        or (self.reduce_range and self.scheme != 'pytorch')):
      raise ValueError(f'bad quantization spec {self}')
    if self.mode == 'int8_static' and self.activations != 'tensor':
      raise ValueError('bad quantization spec: static INT8 has one calibrated input range '
                       f'per layer (activations=tensor), not per {self.activations}')

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


def quantize_weight(w, axis=None, scheme: str = 'symmetric'):
  """A kernel to (int8 values, float32 scale) as `scheme` does it (module docstring);
  axis as in quantize_tensor.

  The pytorch scheme runs in numpy float32, operation for operation as torch does:
  every channel's largest weight lands on +-127.5 steps, where one rounding decides
  the code, so XLA's freedom to rewrite the arithmetic would change codes.
  """
  if scheme == 'symmetric':
    return quantize_tensor(w, axis)
  w = np.asarray(w, np.float32)
  amax = np.max(np.abs(w), axis=axis, keepdims=axis is not None)
  scale = np.maximum(amax / np.float32(127.5), np.finfo(np.float32).eps).astype(np.float32)
  codes = np.rint(w * (np.float32(1) / scale))
  return np.clip(codes, -128, 127).astype(np.int8), scale


def _range_over(x_max, x_min, qmax: int):
  """float32((x_max - x_min) / qmax) rounded once, as ATen computes it in double, with
  float32 operations only: the difference and the quotient each carry their exact
  rounding error along (TwoSum; a 12-bit split of the quotient makes its products with
  qmax <= 255 exact). A scale one ulp off would move codes that sit on a boundary."""
  diff = x_max - x_min
  back = diff - x_max
  diff_error = (x_max - (diff - back)) + (-x_min - back)
  quotient = diff / qmax
  high = (quotient * 4097) - ((quotient * 4097) - quotient)  # Veltkamp split
  low = quotient - high
  remainder = ((diff - high * qmax) - low * qmax) + diff_error
  return quotient + remainder / qmax


def choose_qparams(x_min, x_max, qmax: int):
  """ATen's ChooseQuantizationParams for uint8 codes 0..qmax: (scale, zero point), both
  float32, from a range that is first extended to hold 0. qmax 127 is fbgemm's reduced
  range, whose scale torch computes in float32 (measured against torch 2.13)."""
  x_min, x_max = jnp.minimum(x_min, 0.0), jnp.maximum(x_max, 0.0)
  # fbgemm (7-bit, x86) divides in float32; ATen's own code (qnnpack, 8-bit) in double.
  scale = (x_max - x_min) / qmax if qmax == 127 else _range_over(x_max, x_min, qmax)
  scale = jnp.where((scale == 0) | jnp.isinf(1 / scale), 0.1, scale)
  small = scale < _SMALL_SCALE  # tiny ranges: the scale is raised and the range with it
  grow = jnp.where(small, _SMALL_SCALE / scale, 1.0)
  x_min, x_max = (jnp.where(small & (x_max == 0), -_SMALL_SCALE * qmax, x_min * grow),
                  jnp.where(small & (x_min == 0), _SMALL_SCALE * qmax, x_max * grow))
  scale = jnp.maximum(scale, _SMALL_SCALE)
  from_min_error = jnp.abs(x_min / scale)  # |qmin| = 0
  from_max_error = qmax + jnp.abs(x_max / scale)
  zero = jnp.where(from_min_error < from_max_error, -x_min / scale, qmax - x_max / scale)
  return scale.astype(jnp.float32), jnp.clip(jnp.round(zero), 0, qmax).astype(jnp.float32)


def activation_qparams(x_min, x_max, spec: QuantSpec):
  """(scale, zero point), float32, of activations in [x_min, x_max] under `spec.scheme`:
  symmetric max(|x_min|, |x_max|) / 127 and zero 0, or ATen's affine uint8 parameters."""
  if spec.scheme == 'symmetric':
    amax = jnp.maximum(-x_min, x_max)
    return jnp.where(amax > 0, amax / QMAX, 1.0).astype(jnp.float32), jnp.zeros_like(amax)
  return choose_qparams(x_min, x_max, 127 if spec.reduce_range else 255)


def activation_codes(x, scale, zero, spec: QuantSpec):
  """x (..., D) to integer codes minus the zero point (int8 for symmetric, int16 for
  pytorch), clipped to the scheme's range."""
  if spec.scheme == 'symmetric':
    return jnp.clip(jnp.round(x / scale), -QMAX, QMAX).astype(jnp.int8)
  codes = jnp.clip(jnp.round(x * (1 / scale)) + zero, 0, 127 if spec.reduce_range else 255)
  return (codes - zero).astype(jnp.int16)


def quantize_activations(x, spec: QuantSpec):
  """Dynamic activation quantization of a layer input (..., D) as `spec` says:
  (activation_codes, scale float32 broadcastable to x)."""
  axis = {'tensor': None, 'window': tuple(range(1, x.ndim)), 'token': -1}[spec.activations]
  keep = axis is not None
  scale, zero = activation_qparams(jnp.min(x, axis=axis, keepdims=keep),
                                   jnp.max(x, axis=axis, keepdims=keep), spec)
  return activation_codes(x, scale, zero, spec), scale


def quantize_params(params, weights: str = 'channel', scheme: str = 'symmetric') -> dict:
  """Float params -> quantized params (kernels of the paper's layers to INT8)."""
  flat = traverse_util.flatten_dict(params, sep='/')
  out = {}
  for path, value in flat.items():
    layer, _, name = path.rpartition('/')
    if name == 'kernel' and is_quantized_layer(layer):
      q, scale = quantize_weight(jnp.asarray(value), 0 if weights == 'channel' else None,
                                 scheme)
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
    if name in ('scale', *STATIC_LEAVES) and is_quantized_layer(layer):
      continue
    if name == 'kernel' and f'{layer}/scale' in flat:
      value = value.astype(jnp.float32) * flat[f'{layer}/scale']
    out[path] = value
  return traverse_util.unflatten_dict(out, sep='/')


def is_quantized(params) -> bool:
  return any(leaf.dtype == jnp.int8 for leaf in jax.tree.leaves(params))


def spec_problems(params, spec: QuantSpec) -> list[str]:
  """Why params cannot run as `spec` says (empty when they can): float params for an INT8
  mode or the reverse, or a static layer without its calibrated input range."""
  if is_quantized(params) != (spec.mode != 'float32'):
    return [f'{"INT8" if is_quantized(params) else "float"} parameters, but the recorded '
            f'quantization mode is {spec.mode}']
  if spec.mode != 'int8_static':
    return []
  flat = traverse_util.flatten_dict(params, sep='/')
  layers = {path.rpartition('/')[0] for path in flat}
  return [f'{layer} has no calibrated {leaf}' for layer in sorted(layers)
          if is_quantized_layer(layer) for leaf in STATIC_LEAVES
          if f'{layer}/{leaf}' not in flat]


def _quantizing_interceptor(spec: QuantSpec):
  """Quantizes the input of the paper's Dense layers to 8 bits: on the fly (int8_dynamic)
  or with the layer's calibrated input_scale and input_zero (int8_static)."""

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if not (isinstance(module, nn.Dense) and context.method_name == '__call__'
            and is_quantized_layer('/'.join(module.path))):
      return next_fun(*args, **kwargs)
    x = jnp.asarray(args[0], jnp.float32)
    params = module.variables['params']
    if spec.mode == 'int8_static':
      x_scale = params['input_scale']
      x_q = activation_codes(x, x_scale, params['input_zero'], spec)
    else:
      x_q, x_scale = quantize_activations(x, spec)
    if not spec.integer:  # the simulation: dequantized values, float products
      kernel = params['kernel'].astype(jnp.float32) * params['scale']
      return jnp.dot(x_q.astype(jnp.float32) * x_scale, kernel) + params['bias']
    products = jax.lax.dot_general(x_q, params['kernel'].astype(x_q.dtype),
                                   (((x.ndim - 1,), (0,)), ((), ())),
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
  interceptor = _quantizing_interceptor(spec)

  def apply(qparams, x):
    with nn.intercept_methods(interceptor):
      return module.apply({'params': qparams}, x)

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
