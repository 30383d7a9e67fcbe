r"""Predicts SBP and DBP (mmHg) with a cerebro-bp model, from windows or from a record.

  python -m cerebro_jax.predict --checkpoint runs/default/model \
      --windows windows.npy --output predictions.csv
  python -m cerebro_jax.predict --checkpoint runs/default/model \
      --record mimic3wdb/p000020-2183-04-28-17-47 --output p000020.csv
  python -m cerebro_jax.predict --checkpoint model.tflite --windows windows.npy --output p.csv

--checkpoint: a model directory (float or INT8) or a LiteRT file from
scripts/export_litert.py, run with the ai-edge-litert interpreter.

--windows: an (N, 2, 1250) float32 .npy array: channel 0 ECG, channel 1 PPG, 10 s at
125 Hz, each min-max scaled to [0, 1] as in PulseDB (--scale does it for raw values;
other values are refused). The CSV has the header
`sbp_mmhg,dbp_mmhg` and one row per window, in the array's order.
--record: a WFDB record (II, PLETH; MIMIC-III style) or a .vital file (SNUADC tracks),
cut into 10-s windows with the data pipeline's filters and quality rules. The CSV has
`record,start_s,sbp_mmhg,dbp_mmhg,quality`, one row per window; quality is 'accepted'
or the rule the window failed (its prediction is still given when ECG and PPG are
present, and should not be trusted).
"""

import os
import sys
import time

from absl import flags

from cerebro_jax import cli, inference, sharding
from cerebro_jax.models import checkpoints
from cerebro_jax.quant import litert
from cerebro_jax.quant.quantization import QuantSpec
from input_pipeline.records import RecordError

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Model directory (from '
                                  'scripts/convert_weights.py or training), or a LiteRT '
                                  '.tflite file (scripts/export_litert.py).', required=True)
_WINDOWS = flags.DEFINE_string('windows', None, '(N, 2, 1250) float32 .npy file of '
                               'ECG + PPG windows (or give --record).')
_RECORD = flags.DEFINE_string('record', None, 'A WFDB record path or a .vital file to window '
                              'and predict (or give --windows).')
_OUTPUT = flags.DEFINE_string('output', None, 'CSV file to write.', required=True)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Windows per forward pass.', lower_bound=1)
_CPU_THREADS = flags.DEFINE_integer(
    'cpu_threads', 0, 'On a CPU: XLA\'s thread pool size. 1 gives the lowest latency for a '
    'few windows at a time, each call run on the calling thread (batch 1: 1.3-1.6x faster '
    'than with two threads on 2 cores); '
    '0: XLA\'s default, one thread per core, for large batches.', lower_bound=0)
_SCALE = flags.DEFINE_bool('scale', False, '--windows: min-max scale each channel of each '
                           'window to [0, 1] first (windows of raw ECG and PPG values).')


def main(argv):
  del argv
  if (_WINDOWS.value is None) == (_RECORD.value is None):
    print('error: give exactly one of --windows and --record', file=sys.stderr)
    return 1
  sharding.use_cpu_threads(_CPU_THREADS.value)
  start = time.perf_counter()
  try:
    predict, what = _predictor(_CHECKPOINT.value)
    if _RECORD.value:
      rows = inference.predict_record(predict, _RECORD.value)
      inference.write_record_csv(_OUTPUT.value, rows)
      accepted = sum(r['quality'] == 'accepted' for r in rows)
      summary = f'{len(rows)} windows ({accepted} passed the quality checks)'
    else:
      predictions = predict(inference.load_windows(_WINDOWS.value, _SCALE.value))
      inference.write_predictions_csv(_OUTPUT.value, predictions)
      summary = f'{len(predictions)} windows'
  except (checkpoints.ModelCheckpointError, inference.WindowsError, RecordError,
          litert.LiteRTError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{summary} -> {_OUTPUT.value} ({time.perf_counter() - start:.2f} s, {what})')
  return 0


def _predictor(checkpoint: str):
  """(windows -> outputs, a description) of a model directory or a .tflite file."""
  if checkpoint.endswith('.tflite'):
    if not os.path.isfile(checkpoint):
      raise FileNotFoundError(f'{checkpoint}: no such LiteRT file')
    return litert.load_predictor(checkpoint), f'LiteRT {os.path.basename(checkpoint)}'
  params, config, metadata = checkpoints.load_model(checkpoint, head='bp')
  spec = QuantSpec.from_metadata(metadata)
  return (inference.model_predictor(params, config, _BATCH_SIZE.value, spec),
          f'CEReBrO {config.size}, {spec.mode}')


if __name__ == '__main__':
  cli.run(main)
