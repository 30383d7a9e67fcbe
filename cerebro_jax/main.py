r"""Trains and evaluates CEReBrO BP models, or pre-trains CEReBrO: flags only; the logic
is in trainers/train.py and trainers/pretrain.py (config.objective chooses).

  python -m cerebro_jax.main --config=configs/default.py --workdir=runs/default
  python -m cerebro_jax.main --config=configs/paper.py:mimic3,small,unfrozen \
      --config.data.dir=data/mimic3 --config.init_from=models/cerebro_small --workdir=...
  python -m cerebro_jax.main --mode=evaluate --config=... --workdir=runs/default
  python -m cerebro_jax.main --config=configs/pretrain.py --workdir=runs/pretrain

Several processes (hosts): run the same command on each. On Cloud TPU, SLURM (srun) and
Open MPI (mpirun) JAX finds the others itself; elsewhere add --coordinator_address=HOST:PORT
(process 0's), --num_processes=N and --process_id=I. The workdir (and config.data.dir)
must be on storage every process can read and write.

Any config field can be overridden on the command line, e.g. --config.num_epochs=5.
"""

import sys

from absl import flags
from ml_collections import config_flags

from cerebro_jax import cli, datasets, distributed, sharding
from cerebro_jax.evaluators import evaluation, report
from cerebro_jax.models import checkpoints
from cerebro_jax.trainers import pretrain, train
from input_pipeline import pipeline, records

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A config file (configs/*.py[:argument]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, the model, metrics, '
                               'plots and TensorBoard logs.', required=True)
_MODE = flags.DEFINE_enum('mode', 'train_and_evaluate', ['train_and_evaluate', 'evaluate'],
                          'Train then evaluate the best model, or only evaluate a model.')
_MODEL = flags.DEFINE_string('model', '', '--mode=evaluate: the model directory to evaluate '
                             '(default: <workdir>/model).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'Several processes without a cluster JAX detects: HOST:PORT '
    'of process 0, the same on every process. Empty: detect (Cloud TPU, SLURM, Open MPI) '
    'or run as one process.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'With --coordinator_address: '
                                      'the number of processes of the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'With --coordinator_address: this '
                                   'process\'s index, 0 to num_processes - 1.')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', 0, 'On a CPU: split it into this many JAX devices, so that each works '
    'on its share of the batch (2 on 2 cores: batch-256 evaluation 1.25-1.46x faster, '
    'training at batch 64 1.01-1.10x, at 32 0.88-0.98x the speed of one device; batch '
    'sizes must divide by it). 0: one CPU device, JAX\'s default. '
    'Other digits than with one device: the batch is summed in another order.',
    lower_bound=0)
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {argv[1:]}')
  try:
    sharding.use_cpu_devices(_CPU_DEVICES.value)
    sharding.use_synchronous_cpu_dispatch()
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _MODE.value == 'train_and_evaluate' and _CONFIG.value.objective == 'masked_patches':
      results = pretrain.pretrain_and_evaluate(_CONFIG.value, _WORKDIR.value)
      distributed.log(pretrain.metrics_markdown(results, _CONFIG.value.pretrain.loss))
      distributed.log(f'Pre-trained model in {_WORKDIR.value}/model; fine-tune it with '
                      f'--config.init_from={_WORKDIR.value}/model')
      return
    if _MODE.value == 'train_and_evaluate':
      reports = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    else:
      reports = evaluation.evaluate(_CONFIG.value, _WORKDIR.value, _MODEL.value)
  except (datasets.ProtocolMismatchError, pipeline.DatasetNotFoundError,
          distributed.ProcessFlagsError, records.RecordError,
          checkpoints.ModelCheckpointError, sharding.BatchSplitError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  distributed.log(report.markdown_table(reports))
  distributed.log(f'Metrics, tables and plots in {_WORKDIR.value}/eval')


if __name__ == '__main__':
  cli.run(main)
