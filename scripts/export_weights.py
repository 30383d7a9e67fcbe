r"""Writes a cerebro-bp model directory in the original PyTorch code's layout.

  python scripts/export_weights.py --checkpoint runs/default/model \
      --output cerebro_bp_small.ckpt
  python scripts/export_weights.py --checkpoint runs/default/model \
      --output cerebro_bp_small.safetensors --format=safetensors

A fine-tuned BP model becomes the original's fine-tuned file: {'model_state_dict':
{'module.model.*', 'module.model_head.*'}} (nn.DataParallel names), loadable with
`model.load_state_dict(ckpt['model_state_dict'])` after wrapping the original model in
DataParallel. A pre-trained model (configs/pretrain.py's <workdir>/model) becomes the
original's Lightning pre-training file: {'state_dict': {'model.*',
'model_head.decoder_pred.*'}}. `--format=safetensors` writes the same tensors (names
with the prefix) as a safetensors file instead, readable without pickle.
`scripts/convert_weights.py` reads both back into identical parameters (`--head
reconstruction` for a pre-trained file). .ckpt needs torch installed.
"""

import os
import sys

from absl import flags

from cerebro_jax import cli
from cerebro_jax.models import checkpoints, convert, torch_files
from cerebro_jax.models.torch_files import CheckpointReadError
from cerebro_jax.quant import quantization

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Float model directory: a BP model or a '
                                  'pre-trained one.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'File to write (.ckpt or .safetensors).',
                              required=True)
_FORMAT = flags.DEFINE_enum('format', 'ckpt', ['ckpt', 'safetensors'],
                            'ckpt: torch.save of the fine-tuned layout (needs torch); '
                            'safetensors: the same tensors in a safetensors file.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace --output if it exists.')


def main(argv):
  del argv
  if not _OUTPUT.value.endswith(f'.{_FORMAT.value}'):
    print(f'error: --output {_OUTPUT.value} should end in .{_FORMAT.value} for '
          f'--format={_FORMAT.value}', file=sys.stderr)
    return 1
  if os.path.exists(_OUTPUT.value) and not _OVERWRITE.value:
    print(f'error: {_OUTPUT.value} exists; pass --overwrite to replace it', file=sys.stderr)
    return 1
  try:
    params, config, _ = checkpoints.load_model(_CHECKPOINT.value)
  except checkpoints.ModelCheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if quantization.is_quantized(params):
    print(f'error: {_CHECKPOINT.value} is an INT8 model; export its float model (the '
          'original code quantizes with torch.ao.quantization.quantize_dynamic)',
          file=sys.stderr)
    return 1
  try:
    layout = convert.layout_of(config)
    torch_files.write_state_dict(convert.export_state_dict(params, config), _OUTPUT.value,
                                 layout.entry)
  except CheckpointReadError as e:  # torch missing for .ckpt
    print(f'error: {e}; or use --format=safetensors', file=sys.stderr)
    return 1
  print(f'{_OUTPUT.value}: {len(convert.tensor_mappings(config))} tensors of CEReBrO '
        f'{config.size} (depth {config.depth}), {layout.name}, '
        f'{os.path.getsize(_OUTPUT.value) / 2**20:.2f} MiB')
  return 0


if __name__ == '__main__':
  cli.run(main)
