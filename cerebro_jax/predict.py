"""Predicts SBP and DBP (mmHg) for ECG + PPG windows with a cerebro-bp model.

  python -m cerebro_jax.predict --checkpoint models/cerebro_small \
      --windows windows.npy --output predictions.csv

--windows: an (N, 2, 1250) float32 .npy array: channel 0 ECG, channel 1 PPG, 10 s at
125 Hz, each min-max scaled to [0, 1] as in PulseDB. The CSV has the header
`sbp_mmhg,dbp_mmhg` and one row per window, in the array's order.
"""

import sys
import time

from absl import flags

from cerebro_jax import checkpoints, cli, inference

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Model directory (from '
                                  'scripts/convert_weights.py or training).', required=True)
_WINDOWS = flags.DEFINE_string('windows', None, '(N, 2, 1250) float32 .npy file of '
                               'ECG + PPG windows.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'CSV file to write.', required=True)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Windows per forward pass.', lower_bound=1)


def main(argv):
  del argv
  try:
    params, config, _ = checkpoints.load_model(_CHECKPOINT.value)
    windows = inference.load_windows(_WINDOWS.value)
  except (checkpoints.ModelCheckpointError, inference.WindowsError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  start = time.perf_counter()
  predictions = inference.predict_windows(params, config, windows, _BATCH_SIZE.value)
  inference.write_predictions_csv(_OUTPUT.value, predictions)
  print(f'{len(predictions)} windows -> {_OUTPUT.value} '
        f'({time.perf_counter() - start:.2f} s, CEReBrO {config.size})')
  return 0


if __name__ == '__main__':
  cli.run(main)
