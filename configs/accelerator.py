r"""The paper's recipe on a GPU/TPU: bfloat16 compute and a 4x larger batch.

  python -m cerebro_jax.main --config=configs/accelerator.py:vitaldb,large,unfrozen \
      --config.data.dir=data/vitaldb --config.init_from=models/cerebro_large --workdir=...

Not the paper's exact recipe: the batch is 4096 with the learning rate scaled linearly
(4e-4); parameters and optimizer state stay float32. Measured on one NVIDIA H200
(docs/benchmarks.md, `scripts/accelerator_benchmarks.sh`; speed only, not accuracy):
bfloat16 trains base and large 1.65x and 1.72x faster than float32 at batch 256 (which
runs TF32 matmuls). Small, since its attention core computes in float32 (2026-11-30),
also gains: 4.49 against 6.33 ms a step at 256, and at 4096 36.1 ms, 113k windows/s
(before: 103 ms). Small is overhead-bound and wants the large batch; base gains 1.37x
from 256 to 1024. XLA's scratch at 4096 is about 15 GB for small and, by proportion,
43 GB for base and 71 GB for large: on an 80-GB H100 give large
--config.batch_size=2048 (and learning_rate=2e-4).
"""

from configs import paper


def get_config(arg: str = 'mimic3,small,unfrozen'):
  config = paper.get_config(arg)
  config.model.dtype = 'bfloat16'  # compute dtype: 1.4-1.7x float32 (TF32) on an H200
  config.batch_size = 4096  # global batch, split over the devices; fills an H100 / H200
  config.eval_batch_size = 4096  # evaluation windows per step
  config.learning_rate = 4e-4  # the paper's 1e-4 scaled with the 4x batch
  return config
