"""The interim main job: builds CEReBrO, saves a model directory, predicts a few windows.

Until training lands this is what `scripts/demo.sh` runs. It prints the parameter count
and float32 size of every published size, initialises CEReBrO small (random weights, or
a converted checkpoint given with --checkpoint), writes it as a model directory, and runs
`python -m cerebro_jax.predict` on a few windows, timing each step. Predictions from
random weights are meaningless numbers: this shows the mechanics, not a trained model.
"""

import os
import subprocess
import sys
import time

import jax
import numpy as np
from absl import flags

from cerebro_jax import checkpoints, cli, model as model_lib
from cerebro_jax.model_config import SIZES, ModelConfig

_WORKDIR = flags.DEFINE_string('workdir', 'runs/demo', 'Folder for the model, windows and CSV.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'A converted model directory to use '
                                  'instead of random weights.')
_WINDOWS = flags.DEFINE_integer('windows', 8, 'How many windows to predict.', lower_bound=1)


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  print('CEReBrO sizes (parameters, float32 MiB):')
  for size in SIZES:
    config = ModelConfig.from_size(size)
    abstract = jax.eval_shape(lambda c=config: model_lib.init_params(c, jax.random.PRNGKey(0)))
    count = model_lib.count_params(abstract)
    print(f'  {size:5s}  encoder {model_lib.count_params(abstract["encoder"]):>11,}  '
          f'+ BP head {count:>11,}  {count * 4 / 1024**2:7.2f} MiB')

  if _CHECKPOINT.value:
    model_dir = _CHECKPOINT.value
    print(f'Using the model in {model_dir}')
  else:
    start = time.perf_counter()
    config = ModelConfig.from_size('small')
    params = model_lib.init_params(config, jax.random.PRNGKey(0))
    model_dir = checkpoints.save_model(os.path.join(_WORKDIR.value, 'model_small_random'),
                                       params, config, {'source': 'random init, seed 0'},
                                       overwrite=True)
    print(f'Initialised CEReBrO small with random weights and saved it to {model_dir} '
          f'({time.perf_counter() - start:.1f} s)')

  # Placeholder windows: a 1.2 Hz pulse-like ECG/PPG pair scaled to [0, 1].
  t = np.arange(1250) / 125.0
  phase = 2 * np.pi * 1.2 * (t[None, :] + np.arange(_WINDOWS.value)[:, None] * 0.1)
  ecg = np.exp(8 * (np.cos(phase) - 1))
  ppg = 0.5 + 0.5 * np.sin(phase - 1.0)
  windows = np.stack([ecg, ppg], axis=1).astype(np.float32)
  windows_path = os.path.join(_WORKDIR.value, 'windows.npy')
  np.save(windows_path, windows)
  output = os.path.join(_WORKDIR.value, 'predictions.csv')
  start = time.perf_counter()
  subprocess.run([sys.executable, '-m', 'cerebro_jax.predict', f'--checkpoint={model_dir}',
                  f'--windows={windows_path}', f'--output={output}'], check=True)
  print(f'predict command: {time.perf_counter() - start:.1f} s including start-up')
  with open(output) as f:
    print(''.join(f.readlines()[:4]), end='')
  print(f'... ({_WINDOWS.value} rows) in {output}')
  return 0


if __name__ == '__main__':
  cli.run(main)
