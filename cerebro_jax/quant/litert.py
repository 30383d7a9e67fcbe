"""LiteRT (TensorFlow Lite) files of a BP model, for phones and wearables, and running them.

Route (LiteRT's documented one for JAX): jax2tf.convert of the float model's forward
pass -> a TensorFlow SavedModel with the signature `serving_default` -> the TFLite
converter, which also quantizes:
  none          float32 weights and compute.
  dynamic_int8  the converter's dynamic-range quantization: int8 weights, activations
                quantized on the fly (the LiteRT counterpart of the paper's PyTorch INT8).
  static_int8   static INT8 of the fully connected layers: int8 weights (per channel) and
                int8 inputs whose ranges the converter calibrates on given windows, then
                fixed; every other op stays float32 (LiteRT's selective quantization,
                QuantizationDebugger with the other ops denylisted). Full-integer
                conversion (every op int8) is not offered: with jax.nn.gelu's erfc the
                interpreters aborted on the file (int8 LESS/SELECT/EXP); with the
                model's own erf (gelu.py) it runs, but on the main job's model it was
                6-14 mmHg off the float model on average and 3x slower at batch 1.
The signature takes `windows` (batch, 2, 1250) float32, min-max scaled as for the JAX
model, and returns `sbp_mmhg` and `dbp_mmhg` (batch,). Files run with the ai-edge-litert
interpreter (XNNPACK on CPUs).
"""

from __future__ import annotations

import tempfile

import numpy as np

from cerebro_jax import inference
from cerebro_jax.models import model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.quant import quantization

QUANTIZATIONS = ('none', 'dynamic_int8', 'static_int8')
_STATIC_OPS = ('FULLY_CONNECTED',)  # static_int8 quantizes these ops only
SIGNATURE = 'serving_default'
INPUT = 'windows'
WINDOW_SHAPE = inference.WINDOW_SHAPE  # (ECG, PPG) x 10 s at 125 Hz


class LiteRTError(ValueError):
  """A LiteRT export or file that cannot be used, with the reason."""


def export(params, config: ModelConfig, output: str, quantization_: str = 'none',
           batch: int = 1, calibration: np.ndarray | None = None) -> int:
  """Writes the LiteRT flatbuffer of float `params` to `output`; returns its size (bytes).

  calibration: static_int8's calibration windows (N, 2, 1250) float32, N >= batch (run in
  batches of `batch`, a remainder dropped).
  """
  if quantization_ not in QUANTIZATIONS:
    raise LiteRTError(f'quantization must be one of {QUANTIZATIONS}, got {quantization_!r}')
  if quantization.is_quantized(params):
    raise LiteRTError('this model directory is already INT8 (JAX); export the float model '
                      'and let the converter quantize it (--quantization)')
  if quantization_ == 'static_int8' and (calibration is None or len(calibration) < batch):
    raise LiteRTError(f'static_int8 needs at least {batch} calibration windows (one batch)')
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (export only)
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  module = model_lib.CerebroBP(config)
  forward = jax2tf.convert(lambda x: module.apply({'params': params}, x),
                           with_gradient=False)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec((batch, *WINDOW_SHAPE), tf.float32, name=INPUT)])
  def serve(windows):
    outputs = forward(windows)
    return {name: outputs[:, i] for i, name in enumerate(model_lib.OUTPUT_COLUMNS)}

  holder = tf.Module()
  holder.serve = serve
  with tempfile.TemporaryDirectory() as saved:
    tf.saved_model.save(holder, saved, signatures={SIGNATURE: serve})
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE])
    if quantization_ != 'none':
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization_ == 'static_int8':
      flatbuffer = _static_int8(tf, converter, calibration, batch)
    else:
      flatbuffer = converter.convert()
  with open(output, 'wb') as f:
    f.write(flatbuffer)
  return len(flatbuffer)


def _static_int8(tf, converter, calibration: np.ndarray, batch: int) -> bytes:
  """The converter's static INT8 of _STATIC_OPS alone, calibrated on `calibration`."""
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel

  def batches():
    for start in range(0, len(calibration) - batch + 1, batch):
      yield {INPUT: calibration[start:start + batch]}

  converter.representative_dataset = batches
  others = [name for name in vars(schema.BuiltinOperator)
            if name.isupper() and name not in _STATIC_OPS]
  debugger = tf.lite.experimental.QuantizationDebugger(
      converter=converter, debug_dataset=batches,
      debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=others))
  return debugger.get_nondebug_quantized_model()


def signature_runner(path: str, num_threads: int | None = None):
  """The ai-edge-litert runner of the file's `serving_default` signature, checked to take
  `windows` (batch, 2, 1250); num_threads: the interpreter's (None: its default)."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  try:
    runner = Interpreter(model_path=path, num_threads=num_threads).get_signature_runner(
        SIGNATURE)
  except (ValueError, RuntimeError) as e:
    raise LiteRTError(f'{path}: not a cerebro-bp LiteRT file ({e})') from e
  inputs = runner.get_input_details()
  if INPUT not in inputs or tuple(inputs[INPUT]['shape'][1:]) != WINDOW_SHAPE:
    raise LiteRTError(f'{path}: its {SIGNATURE} signature does not take {INPUT} '
                      f'(batch, 2, 1250) (it takes {sorted(inputs)})')
  return runner


def load_predictor(path: str):
  """A function (N, 2, 1250) float32 windows -> (N, 2) [DBP, SBP] mmHg running the LiteRT
  file at `path`, batch by batch at the file's batch size (the last batch padded)."""
  runner = signature_runner(path)
  batch = int(runner.get_input_details()[INPUT]['shape'][0])

  def forward(windows: np.ndarray) -> np.ndarray:
    out = runner(**{INPUT: windows})
    return np.stack([out[name] for name in model_lib.OUTPUT_COLUMNS], -1).astype(np.float32)

  return lambda windows: inference.in_batches(forward, windows, batch, fixed=True)
