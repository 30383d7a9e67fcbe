"""Run with JAX_NUM_CPU_DEVICES=4 (tests/test_train.py does):
three train steps on a 4-device data-parallel mesh equal the same steps on one device,
for fine-tuning and for masked-patch pre-training (whose token masks are drawn on the
sharded batch), and for fine-tuning split into 2 parts per device.

Plain SGD, not Adam: the key bias's gradient is zero in exact arithmetic (softmax ignores
a constant added to every key), and Adam's first steps scale that round-off to +-lr,
so Adam would compare reduction orders, not the sharding.
"""

import re

import jax
import numpy as np
import optax

from cerebro_jax import sharding
from cerebro_jax.models import model as model_lib
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.trainers import masked_patches, steps


def run(mesh, head: str, num_steps=3, splits=1, drop_path_rate=0.2):
  # Two blocks (one of each attention) for fine-tuning; one for pre-training, whose
  # masking and decoder are what it adds.
  model_config = ModelConfig(embed_dim=48, depth=2 if head == 'bp' else 1, num_heads=4,
                             drop_path_rate=drop_path_rate, head=head)
  params = model_lib.init_params(model_config, jax.random.PRNGKey(0), channels=3)
  tx = optax.sgd(1e-4 if head == 'bp' else 1e-2)
  state = jax.device_put(steps.init_state(params, tx, 1), sharding.replicated(mesh))
  if head == 'bp':
    step = steps.make_train_step(model_config, tx, mesh, splits)
  else:
    step = steps.make_pretrain_step(model_config, masked_patches.Objective(), tx, mesh)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(num_steps):
    if head == 'bp':
      batch = {'signals': rng.random((8, 2, 1250), dtype=np.float32),
               'sbp': rng.uniform(100, 160, 8).astype(np.float32),
               'dbp': rng.uniform(60, 90, 8).astype(np.float32)}
    else:  # three channels, the third padded in half of the windows
      batch = {'signals': rng.random((8, 3, 1250), dtype=np.float32),
               'channel_mask': np.array([[True, True, i % 2 == 0] for i in range(8)])}
    batch = sharding.put_batch(batch, mesh)
    if splits > 1 and not losses:  # the parts stay on their devices: no rows move
      hlo = step.lower(state, batch).compile().as_text()
      assert not re.search(r'all-gather|all-to-all|collective-permute', hlo)
    state, loss = step(state, batch)
    losses.append(float(loss))
  return jax.device_get(state['params']), losses


def main():
  assert jax.device_count() == 4, jax.devices()
  four = sharding.data_mesh()
  one = jax.make_mesh((1,), (sharding.DATA_AXIS,), devices=jax.devices()[:1])
  for head in ('bp', 'reconstruction'):
    params4, losses4 = run(four, head)
    params1, losses1 = run(one, head)
    np.testing.assert_allclose(losses4, losses1, rtol=1e-6)
    assert losses1[0] != losses1[-1]  # the steps really moved the parameters
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params4,
                                         params1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 params4, params1)
    print(f'{head}: devices={jax.device_count()} losses={losses4} '
          f'max_param_diff={max(diffs):.3g}')
  # Split steps (2 parts of each device's rows) on 4 devices equal whole-batch steps on
  # one, without drop path (drawn per part).
  params4, losses4 = run(four, 'bp', splits=2, drop_path_rate=0.0)
  params1, losses1 = run(one, 'bp', drop_path_rate=0.0)
  np.testing.assert_allclose(losses4, losses1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               params4, params1)
  print(f'bp in 2 parts: devices={jax.device_count()} losses={losses4}')


if __name__ == '__main__':
  main()
