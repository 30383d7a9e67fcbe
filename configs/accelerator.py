r"""The paper's recipe on a GPU/TPU: bfloat16 compute and a 4x larger batch.

  python -m cerebro_jax.main --config=configs/accelerator.py:vitaldb,large,unfrozen \
      --config.data.dir=data/vitaldb --config.init_from=models/cerebro_large --workdir=...

Not the paper's exact recipe: the batch is 4096 with the learning rate scaled linearly
(4e-4); parameters and optimizer state stay float32. Why (docs/benchmarks.md, roofline:
an estimate, no accelerator measured yet): the train step is memory-bound on an H100 and
a TPU v5e for every size (13-60 FLOP per byte accessed, against ridge points of 240-295),
its bytes are activations, so bfloat16 saves time by saving bytes, and a larger batch
does not raise the intensity: 4096 only has to fill the chip.
"""

from configs import paper


def get_config(arg: str = 'mimic3,small,unfrozen'):
  config = paper.get_config(arg)
  config.model.dtype = 'bfloat16'  # compute dtype: memory-bound steps gain from fewer bytes
  config.batch_size = 4096  # global batch, split over the devices; fills an H100 / TPU
  config.eval_batch_size = 4096  # evaluation windows per step
  config.learning_rate = 4e-4  # the paper's 1e-4 scaled with the 4x batch
  return config
