r"""Writes a freshly initialised CEReBrO model directory (no training).

  python scripts/init_model.py --size small --head reconstruction --output models/random

The control of a pre-training experiment: fine-tuning from this directory (frozen or
unfrozen, config.init_from) starts from a random encoder where fine-tuning from a
pre-trained directory starts from learned weights, everything else equal.
"""

import sys

from absl import flags

from cerebro_jax import cli
from cerebro_jax.models import checkpoints, model as model_lib

_MODEL_CONFIG = cli.define_model_flags(
    'small', 'CEReBrO size.', 'reconstruction',
    'bp: the BP head; reconstruction: the pre-training decoder (a pre-trained model\'s '
    'layout).')
_SEED = flags.DEFINE_integer('seed', 42, 'Initialisation seed (configs/pretrain.py uses 42).')
_OUTPUT = flags.DEFINE_string('output', None, 'Model directory to create.', required=True)
flags.adopt_module_key_flags(cli)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace --output if it exists.')


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  config = _MODEL_CONFIG()
  params = model_lib.init_params(config, jax.random.PRNGKey(_SEED.value))
  try:
    out = checkpoints.save_model(_OUTPUT.value, params, config,
                                 {'source': f'random initialisation, seed {_SEED.value}'},
                                 overwrite=_OVERWRITE.value)
  except FileExistsError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {out}: CEReBrO {config.size} (depth {config.depth}, {config.head} head), '
        f'{model_lib.count_params(params):,} parameters, seed {_SEED.value}')
  return 0


if __name__ == '__main__':
  cli.run(main)
