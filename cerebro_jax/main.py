r"""Trains and evaluates CEReBrO BP models: flags only; the logic is in train.py.

  python -m cerebro_jax.main --config=configs/default.py --workdir=runs/default
  python -m cerebro_jax.main --config=configs/paper.py:mimic3,small,unfrozen \
      --config.data.dir=data/mimic3 --config.init_from=models/cerebro_small --workdir=...
  python -m cerebro_jax.main --mode=evaluate --config=... --workdir=runs/default

Any config field can be overridden on the command line, e.g. --config.num_epochs=5.
"""

import sys

from absl import flags
from ml_collections import config_flags

from cerebro_jax import cli, datasets, evaluation, report, train
from input_pipeline import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A config file (configs/*.py[:argument]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, the model, metrics, '
                               'plots and TensorBoard logs.', required=True)
_MODE = flags.DEFINE_enum('mode', 'train_and_evaluate', ['train_and_evaluate', 'evaluate'],
                          'Train then evaluate the best model, or only evaluate a model.')
_MODEL = flags.DEFINE_string('model', '', '--mode=evaluate: the model directory to evaluate '
                             '(default: <workdir>/model).')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {argv[1:]}')
  try:
    if _MODE.value == 'train_and_evaluate':
      reports = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    else:
      reports = evaluation.evaluate(_CONFIG.value, _WORKDIR.value, _MODEL.value)
  except (datasets.ProtocolMismatchError, pipeline.DatasetNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(report.markdown_table(reports))
  print(f'Metrics, tables and plots in {_WORKDIR.value}/eval')


if __name__ == '__main__':
  cli.run(main)
