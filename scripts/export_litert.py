r"""Writes a LiteRT (TensorFlow Lite) file of a cerebro-bp model for phones and wearables.

  python scripts/export_litert.py --checkpoint runs/default/model \
      --output runs/default/model.tflite --quantization=dynamic_int8
  python scripts/export_litert.py --checkpoint runs/default/model \
      --output runs/default/model_static.tflite --quantization=static_int8 \
      --calibration_data runs/default/data

The file's signature `serving_default` takes `windows` (batch, 2, 1250) float32 (ECG and
PPG, each min-max scaled to [0, 1]) and returns `sbp_mmhg` and `dbp_mmhg` (batch,).
`python -m cerebro_jax.predict --checkpoint FILE.tflite` runs it. Prints the file size
beside the float32 model's arrays, and the largest difference from the JAX model on
random windows.
"""

import os
import sys

import numpy as np
from absl import flags

from cerebro_jax import cli, inference
from cerebro_jax.models import checkpoints, model as model_lib
from cerebro_jax.quant import litert, ptq
from input_pipeline.pipeline import DatasetNotFoundError

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Float model directory.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'The .tflite file to write.', required=True)
_QUANTIZATION = flags.DEFINE_enum(
    'quantization', 'none', list(litert.QUANTIZATIONS), 'none: float32; dynamic_int8: the '
    'LiteRT converter\'s dynamic-range INT8 (int8 weights, activations quantized on the '
    'fly); static_int8: int8 weights and inputs of the fully connected layers with input '
    'ranges calibrated on --calibration_data, every other op float32.')
_CALIBRATION_DATA, _CALIBRATION_WINDOWS = cli.define_calibration_flags('static_int8')
flags.adopt_module_key_flags(cli)  # --help lists them
_BATCH = flags.DEFINE_integer('batch', 1, 'Windows per call of the file (fixed in it).',
                              lower_bound=1)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace --output if it exists.')


def main(argv):
  del argv
  if not _OUTPUT.value.endswith('.tflite'):
    print(f'error: --output {_OUTPUT.value} should end in .tflite', file=sys.stderr)
    return 1
  if os.path.exists(_OUTPUT.value) and not _OVERWRITE.value:
    print(f'error: {_OUTPUT.value} exists; pass --overwrite to replace it', file=sys.stderr)
    return 1
  if (_QUANTIZATION.value == 'static_int8') != bool(_CALIBRATION_DATA.value):
    print('error: --calibration_data goes with --quantization=static_int8, and only with it',
          file=sys.stderr)
    return 1
  try:
    params, config, _ = checkpoints.load_model(_CHECKPOINT.value, head='bp')
    calibration = ptq.calibration_windows(_CALIBRATION_DATA.value, _CALIBRATION_WINDOWS.value
                                          ) if _CALIBRATION_DATA.value else None
    size = litert.export(params, config, _OUTPUT.value, _QUANTIZATION.value, _BATCH.value,
                         calibration)
  except (checkpoints.ModelCheckpointError, litert.LiteRTError, DatasetNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  windows = np.random.default_rng(0).random((4, 2, 1250), dtype=np.float32)
  change = np.abs(litert.load_predictor(_OUTPUT.value)(windows)
                  - inference.predict_windows(params, config, windows)).max()
  float_mib = model_lib.count_params(params) * 4 / 2**20  # float32 arrays
  print(f'{_OUTPUT.value}: {size / 2**20:.2f} MiB ({_QUANTIZATION.value}; the float32 '
        f'arrays: {float_mib:.2f} MiB); largest difference from the JAX model on 4 random '
        f'windows: {change:.4f} mmHg')
  return 0


if __name__ == '__main__':
  cli.run(main)
