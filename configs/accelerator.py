r"""The paper's recipe on a GPU/TPU: bfloat16 compute and a 4x larger batch.

  python -m cerebro_jax.main --config=configs/accelerator.py:vitaldb,large,unfrozen \
      --config.data.dir=data/vitaldb --config.init_from=models/cerebro_large --workdir=...

Not the paper's exact recipe: the batch is 4096 with the learning rate scaled linearly
(4e-4); parameters and optimizer state stay float32.
"""

from configs import paper


def get_config(arg: str = 'mimic3,small,unfrozen'):
  config = paper.get_config(arg)
  config.model.dtype = 'bfloat16'
  config.batch_size = 4096
  config.eval_batch_size = 4096
  config.learning_rate = 4e-4
  return config
