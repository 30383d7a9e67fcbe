r"""Quantizes a cerebro-bp model to INT8 and reports sizes and the accuracy change.

  python scripts/quantize.py --checkpoint runs/default/model --output runs/default/model_int8 \
      --eval_data runs/default/data

Writes an INT8 model directory (INT8 kernels of qkv, proj, fc1, fc2 and the head with
per-channel or per-tensor scales; everything else float32; activations quantized per
batch at run time, as in the paper, or with ranges calibrated beforehand: --mode=static)
that `python -m cerebro_jax.predict` takes, with sizes.json; given --eval_data (a folder
from scripts/prepare_data.py, or a training workdir's data/), also metrics.json and
quantization.md comparing float32, weight-only INT8 and weight+activation INT8 on the
same windows; --compare_schemes and --compare_static add the tables of the dynamic
schemes and of the static configurations.
"""

import sys

from absl import flags

from cerebro_jax import cli
from cerebro_jax.models import checkpoints
from cerebro_jax.quant import ptq
from input_pipeline.pipeline import DatasetNotFoundError

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Float model directory.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'INT8 model directory to create.', required=True)
_WEIGHTS = flags.DEFINE_enum('weights', 'channel', ['channel', 'tensor'],
                             'One weight scale per output channel, or per tensor.')
_ACTIVATIONS = flags.DEFINE_enum(
    'activations', 'tensor', ['tensor', 'window', 'token'],
    'Dynamic activation scale per tensor (the whole batch: PyTorch\'s dynamic quantization), '
    'per window (a window\'s estimate then does not depend on its batch) or per token.')
_SCHEME = flags.DEFINE_enum(
    'activation_scheme', 'pytorch', ['pytorch', 'symmetric'],
    'pytorch: exactly torch\'s quantize_dynamic (uint8 activations with a zero point, int8 '
    'weights with scale max|w|/127.5), the paper\'s scheme; symmetric: int8 activations and '
    'weights with scale max|x|/127 and no zero point.')
_REDUCE_RANGE = flags.DEFINE_bool(
    'reduce_range', False, 'pytorch scheme: 7-bit activations (0..127), as PyTorch\'s fbgemm '
    'engine runs them on x86; default: all 8 bits, as its qnnpack engine (ARM) does.')
_MODE = flags.DEFINE_enum(
    'mode', 'dynamic', ['dynamic', 'static'],
    'dynamic: activation ranges from each batch at run time (the paper\'s); static: '
    'ranges calibrated on training windows (--calibration_data), then fixed.')
_OBSERVER = flags.DEFINE_enum(
    'observer', 'minmax', ['minmax', 'percentile'],
    'Static: each layer\'s input range is the extremes of the calibration windows\' '
    'values (minmax) or their --percentile (percentile, from a histogram).')
_PERCENTILE = flags.DEFINE_float('percentile', 99.99, 'Percentile observer: the range is '
                                 'from the (100 - p)-th to the p-th percentile.')
_CALIBRATION_DATA, _CALIBRATION_WINDOWS = cli.define_calibration_flags(
    'Static INT8 (--mode=static, --compare_static)', '--eval_data')
flags.adopt_module_key_flags(cli)  # --help lists them
_EVAL_DATA = flags.DEFINE_string('eval_data', '', 'Prepared dataset to compare accuracy on.')
_SPLIT = flags.DEFINE_string('split', '', 'Split of --eval_data to compare on (default: its '
                             'test split; test_calbased first for PulseDB\'s official files).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Evaluation batch.', lower_bound=1)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace --output if it exists.')
_SCHEMES = flags.DEFINE_bool('compare_schemes', False, 'With --eval_data: also evaluate the '
                             'dynamic INT8 schemes side by side (schemes.md): symmetric, '
                             'PyTorch fbgemm and qnnpack, per-window scales.')
_STATIC = flags.DEFINE_bool('compare_static', False, 'With --eval_data: also evaluate static '
                            'INT8 for every observer x activation scheme (affine, symmetric) x '
                            'weight granularity (static.md).')


def main(argv):
  del argv
  try:
    result = ptq.quantize_checkpoint(
        _CHECKPOINT.value, _OUTPUT.value, weights=_WEIGHTS.value,
        activations=_ACTIVATIONS.value, scheme=_SCHEME.value, reduce_range=_REDUCE_RANGE.value,
        mode=_MODE.value, observer=_OBSERVER.value, percentile=_PERCENTILE.value,
        calibration_data=_CALIBRATION_DATA.value, calibration_count=_CALIBRATION_WINDOWS.value,
        eval_data=_EVAL_DATA.value, split=_SPLIT.value, batch_size=_BATCH_SIZE.value,
        overwrite=_OVERWRITE.value, schemes=_SCHEMES.value, static=_STATIC.value)
  except (checkpoints.ModelCheckpointError, DatasetNotFoundError, FileExistsError,
          ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(result['markdown'])
  print(f'INT8 model: {result["output"]}')
  return 0


if __name__ == '__main__':
  cli.run(main)
