r"""Converts a PyTorch CEReBrO checkpoint into a cerebro-bp model directory (orbax).

  python scripts/convert_weights.py --checkpoint cerebro_small.ckpt --size small \
      --output models/cerebro_small

Reads Lightning pre-trained `.ckpt`, DataParallel fine-tuned `.ckpt` and `.safetensors`
files. Every missing, unexpected or mis-shaped tensor is reported by name and stops the
conversion, except that a pre-trained encoder gets a freshly initialised BP head and its
pre-training decoder is skipped (both said). `--head reconstruction` keeps the decoder
instead: a pre-trained model directory (for more pre-training, or export_weights.py);
fine-tuning takes either kind as config.init_from.
"""

import sys

from absl import flags

from cerebro_jax import cli
from cerebro_jax.models import checkpoints, convert
from cerebro_jax.models.torch_files import CheckpointReadError

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'PyTorch checkpoint: .ckpt or .safetensors.',
                                  required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Model directory to create (orbax checkpoint).',
                              required=True)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for tensors initialised fresh (the BP head of '
                             'a pre-trained encoder).')
_ALLOW_MISSING = flags.DEFINE_multi_string(
    'allow_missing', [], 'fnmatch pattern of unprefixed keys that may be absent and are '
    'initialised fresh (repeatable), e.g. "model.pad_token".')
_ALLOW_UNEXPECTED = flags.DEFINE_multi_string(
    'allow_unexpected', [], 'fnmatch pattern of unprefixed keys that may be present and are '
    'ignored (repeatable).')
_MODEL_CONFIG = cli.define_model_flags(
    None, 'CEReBrO size the checkpoint holds.', 'bp',
    'bp: a BP model directory (a pre-trained file gets a fresh head); reconstruction: a '
    'pre-trained model directory with the file\'s pre-training decoder '
    '(model_head.decoder_pred.*).')
flags.adopt_module_key_flags(cli)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace --output if it exists.')


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  config = _MODEL_CONFIG()
  try:
    params, report = convert.convert_checkpoint(
        _CHECKPOINT.value, config, rng=jax.random.PRNGKey(_SEED.value),
        allow_missing=_ALLOW_MISSING.value, allow_unexpected=_ALLOW_UNEXPECTED.value)
    print(report.describe())
    if report.is_encoder_only:
      print('This is an encoder-only (pre-trained) checkpoint: the BP head was initialised '
            f'fresh (seed {_SEED.value}); fine-tune before trusting its predictions.')
    out = checkpoints.save_model(
        _OUTPUT.value, params, config,
        {'source': report.source, 'source_format': report.source_format,
         'encoder_only': report.is_encoder_only, 'skipped': report.skipped,
         'initialised': report.initialised}, overwrite=_OVERWRITE.value)
  except (convert.CheckpointMismatchError, CheckpointReadError, FileNotFoundError,
          FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {out} (CEReBrO {config.size}, depth {config.depth})')
  return 0


if __name__ == '__main__':
  cli.run(main)
