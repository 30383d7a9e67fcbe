"""The Flax CEReBrO model: sizes, padding, attention types, dtype, drop path, init."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from cerebro_jax import sharding
from cerebro_jax.models import gelu, row_matmul, model as model_lib
from cerebro_jax.models.model_config import ConfigError, ModelConfig
from conftest import jitted_apply

# ../shared/spec/cerebro.md, "Sizes".
SPEC_COUNTS = {'small': (3_587_904, 3_588_290), 'base': (39_974_976, 39_976_130),
               'large': (85_170_432, 85_171_970)}


def abstract_params(config):
  return jax.eval_shape(lambda: model_lib.init_params(config, jax.random.PRNGKey(0)))


@pytest.mark.parametrize('size', sorted(SPEC_COUNTS))
def test_parameter_counts_match_the_spec_table(size):
  params = abstract_params(ModelConfig.from_size(size))
  assert (model_lib.count_params(params['encoder']), model_lib.count_params(params)) == (
      SPEC_COUNTS[size])


def test_attention_type_does_not_change_the_parameters():
  alternating = abstract_params(ModelConfig(depth=2))
  full = abstract_params(ModelConfig(depth=2, attention_type='full'))
  assert jax.tree.structure(alternating) == jax.tree.structure(full)


@pytest.fixture(scope='module')
def small4():
  config = ModelConfig(depth=4)
  return config, model_lib.init_params(config, jax.random.PRNGKey(3), channels=5)


def _encode(config, params, x, mask=None):
  return jitted_apply(model_lib.Encoder(config), params['encoder'], x, mask)


@pytest.mark.parametrize('attention_type', ['alternating', 'full'])
def test_real_channels_ignore_padded_channels(small4, attention_type):
  config, params = small4
  config = ModelConfig(depth=4, attention_type=attention_type)
  rng = np.random.default_rng(0)
  x = rng.random((2, 5, 1250), dtype=np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], bool)
  padded = _encode(config, params, x, mask)
  x_other = np.where(mask[:, :, None], x, rng.normal(size=x.shape) * 100).astype(np.float32)
  np.testing.assert_array_equal(_encode(config, params, x_other, mask), padded)
  # Real channels' tokens equal a run on the real channels alone (row 0: channels 0-2).
  alone = _encode(config, params, x[:1, :3])
  np.testing.assert_allclose(padded[0, :3], alone[0], atol=1e-5)
  # Without the mask the padded content does leak in: the mask is what protects.
  assert np.abs(_encode(config, params, x_other) - _encode(config, params, x)).max() > 1e-2


def test_alternating_and_full_attention_differ(small4):
  _, params = small4
  x = np.random.default_rng(1).random((2, 2, 1250), dtype=np.float32)
  alternating = _encode(ModelConfig(depth=4), params, x)
  full = _encode(ModelConfig(depth=4, attention_type='full'), params, x)
  assert np.abs(alternating - full).max() > 1e-2


def test_alternating_blocks_attend_across_channels_then_time():
  config = ModelConfig(depth=4)
  assert [model_lib.block_mode(config, i) for i in range(4)] == [
      'channels', 'time', 'channels', 'time']
  full = ModelConfig(depth=2, attention_type='full')
  assert [model_lib.block_mode(full, i) for i in range(2)] == ['full', 'full']


def test_one_block_across_channels_keeps_patches_apart():
  """Block 0 mixes channels at a fixed patch only: patch p is blind to other patches."""
  config = ModelConfig(depth=1)
  params = model_lib.init_params(config, jax.random.PRNGKey(0))
  x = np.random.default_rng(2).random((1, 2, 1250), dtype=np.float32)
  changed = x.copy()
  changed[:, 1, 64 * 5:64 * 6] += 1.0  # PPG, patch 5 only
  diff = np.abs(_encode(config, params, changed) - _encode(config, params, x)).max(axis=-1)[0]
  assert diff[:, 5].min() > 1e-3  # both channels at patch 5 change
  assert diff[:, np.arange(19) != 5].max() == 0.0  # nothing else does


def test_bp_output_shape_dtype_and_names():
  config = ModelConfig(depth=2)
  params = model_lib.init_params(config, jax.random.PRNGKey(0))
  out = jitted_apply(model_lib.CerebroBP(config), params, jnp.zeros((3, 2, 1250)))
  assert out.shape == (3, 2) and out.dtype == jnp.float32
  named = model_lib.named_outputs(np.array([[80.0, 120.0]]))
  assert named == {'dbp_mmhg': 80.0, 'sbp_mmhg': 120.0}


def test_the_last_34_samples_are_dropped():
  config = ModelConfig(depth=1)
  params = model_lib.init_params(config, jax.random.PRNGKey(0))
  x = np.random.default_rng(3).random((1, 2, 1250), dtype=np.float32)
  tail = x.copy()
  tail[..., 19 * 64:] = 5.0
  apply = lambda v: jitted_apply(model_lib.CerebroBP(config), params, v)
  np.testing.assert_array_equal(apply(x), apply(tail))


def test_bfloat16_compute_keeps_float32_parameters_and_stays_close():
  f32 = ModelConfig(depth=2)
  bf16 = ModelConfig(depth=2, dtype='bfloat16')
  params = model_lib.init_params(bf16, jax.random.PRNGKey(0))
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  params = {**params, 'head': {'kernel': params['head']['kernel'] * 500,
                               'bias': jnp.array([80.0, 120.0])}}
  x = np.random.default_rng(4).random((4, 2, 1250), dtype=np.float32)
  ref = jitted_apply(model_lib.CerebroBP(f32), params, x)
  low = jitted_apply(model_lib.CerebroBP(bf16), params, x)
  assert low.dtype == np.float32
  error = np.abs(low - ref).max()
  assert 0 < error < 2.0  # bfloat16 has 8 bits of mantissa: different, but close


def test_drop_path_is_random_in_training_only():
  config = ModelConfig(depth=4, drop_path_rate=0.5)
  params = model_lib.init_params(config, jax.random.PRNGKey(0))
  x = np.random.default_rng(5).random((8, 2, 1250), dtype=np.float32)
  module = model_lib.CerebroBP(config)
  train_fn = jax.jit(lambda key: module.apply({'params': params}, x, deterministic=False,
                                              rngs={'dropout': key}))
  train = lambda seed: np.asarray(train_fn(jax.random.PRNGKey(seed)))
  evaluation = jitted_apply(module, params, x)
  np.testing.assert_array_equal(jitted_apply(module, params, x), evaluation)
  np.testing.assert_array_equal(train(1), train(1))
  assert np.abs(train(1) - train(2)).max() > 0
  assert np.abs(train(1) - evaluation).max() > 0


def test_drop_path_draws_each_sample_branch_and_block_independently():
  keep = np.asarray(model_lib.drop_path_keep(jax.random.PRNGKey(0), 0.25, 8, 512))
  assert keep.shape == (8, 2, 512) and keep.dtype == bool
  assert abs(keep.mean() - 0.75) < 0.03  # 8,192 draws; the standard error is 0.005
  rows = keep.reshape(16, 512)
  assert len({row.tobytes() for row in rows}) == 16  # no two branches share their draws


def test_a_dropped_branch_adds_nothing_and_a_kept_one_is_rescaled():
  config = ModelConfig(depth=1, drop_path_rate=0.5)
  block = model_lib.Block(config, 0, 'time')
  x = jnp.asarray(np.random.default_rng(6).standard_normal((3, 2, 19, 192)), jnp.float32)
  mask = jnp.ones((3, 2), bool)
  params = block.init(jax.random.PRNGKey(0), x, mask, None)
  apply = lambda keep: np.asarray(block.apply(params, x, mask, keep))
  # Sample 0 drops both branches, sample 1 keeps both, sample 2 only the attention.
  keep = jnp.array([[False, True, True], [False, True, False]])
  out = apply(keep)
  np.testing.assert_array_equal(out[0], x[0])
  assert np.abs(out[1] - x[1]).max() > 0.1
  # Keeping the attention only: x + 2 attn(x) (rate 0.5), the MLP left out.
  doubled = jax.tree.map(lambda p: p, params)
  doubled['params']['attn']['proj'] = jax.tree.map(lambda p: 2 * p,
                                                   params['params']['attn']['proj'])
  no_mlp = jax.tree.map(jnp.zeros_like, params['params']['mlp'])
  doubled['params']['mlp'] = no_mlp
  np.testing.assert_allclose(out[2], np.asarray(block.apply(doubled, x, mask, None))[2],
                             rtol=1e-5, atol=1e-5)


def test_attention_core_computes_in_float32_under_bfloat16():
  """qkv and proj multiply in bfloat16; q k^T and weights v in float32 (the GPU speed of
  CEReBrO small's 16-wide heads, see model.Attention)."""
  layer = model_lib.Attention(num_heads=12, dtype=jnp.bfloat16, proj_scale=1.0)
  x = jnp.ones((2, 19, 192), jnp.bfloat16)
  params = layer.init(jax.random.PRNGKey(0), x, None)
  jaxpr = jax.make_jaxpr(lambda p: layer.apply(p, x, None))(params)
  dots = [tuple(str(v.aval.dtype) for v in eqn.invars)
          for eqn in jaxpr.eqns if eqn.primitive.name == 'dot_general']
  assert sorted(dots) == sorted([('bfloat16', 'bfloat16')] * 2 + [('float32', 'float32')] * 2)


def test_initialisation_follows_the_original():
  config = ModelConfig(depth=4)
  params = model_lib.init_params(config, jax.random.PRNGKey(0))
  enc = params['encoder']
  for name in ('mask_token', 'pad_token', 'channel_encoding', 'patch_encoding'):
    assert np.abs(enc[name]).max() <= 0.02
  assert np.abs(params['head']['kernel']).max() <= 0.02
  assert np.all(params['head']['bias'] == 0)
  np.testing.assert_array_equal(enc['norm']['scale'], 1.0)
  # Xavier-uniform bound for (192, 192) is sqrt(6/384); block i proj is scaled by
  # 1/sqrt(2(i+1)).
  bound = np.sqrt(6 / 384)
  for i in range(4):
    proj = np.abs(enc[f'blocks_{i}']['attn']['proj']['kernel']).max()
    assert bound / np.sqrt(2 * (i + 1)) * 0.95 < proj <= bound / np.sqrt(2 * (i + 1))


def test_bad_configurations_and_inputs_are_refused():
  with pytest.raises(ConfigError, match='num_heads'):
    ModelConfig(embed_dim=192, num_heads=7)
  with pytest.raises(ConfigError, match='attention_type'):
    ModelConfig(attention_type='local')
  with pytest.raises(ConfigError, match='unknown model size'):
    ModelConfig.from_size('huge')
  with pytest.raises(ConfigError, match='unknown model configuration fields'):
    ModelConfig.from_dict({'size': 'small', 'colour': 'red'})
  assert ModelConfig.from_dict(ModelConfig(depth=3).to_dict()) == ModelConfig(depth=3)
  config = ModelConfig(depth=1)
  with pytest.raises(ValueError, match='patches'):
    model_lib.init_params(config, jax.random.PRNGKey(0), samples=64 * 101)
  with pytest.raises(ValueError, match='channels'):
    model_lib.init_params(config, jax.random.PRNGKey(0), channels=65)


def test_gelu_is_the_exact_gelu_with_its_exact_gradient():
  x = np.linspace(-12, 12, 200_001, dtype=np.float32)
  exact = x.astype(np.float64)
  np.testing.assert_allclose(jax.jit(gelu.erf)(x), scipy.special.erf(exact), rtol=0, atol=7e-7)
  phi = 0.5 * scipy.special.erfc(-exact / np.sqrt(2))
  density = np.exp(-exact**2 / 2) / np.sqrt(2 * np.pi)
  # Measured on this grid: torch.nn.GELU() in float32 is within 1.7e-7 max(|x|, 1) of
  # x Phi(x), this GELU within 3.3e-7.
  error = np.abs(np.asarray(jax.jit(gelu.gelu)(x), np.float64) - exact * phi)
  assert np.max(error / np.maximum(np.abs(exact), 1)) < 4e-7
  np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(gelu.gelu)))(x), phi + exact * density,
                             rtol=0, atol=1e-6)
  half = jax.jit(gelu.gelu)(x.astype(jnp.bfloat16))
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), exact * phi, rtol=1e-2, atol=1e-2)


def test_dense_layers_multiply_rows_with_the_grid_products_and_gradients():
  """The Dense layers flatten the token grid into rows (for a faster kernel gradient):
  outputs and gradients are those of the product over the last axis, for widening and
  narrowing kernels, and interceptors (the INT8 paths, calibration) still see each layer
  once, with its (B, C, P, D) input."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 2, 5, 8)).astype(np.float32)
  numbers = (((3,), (0,)), ((), ()))
  grid = lambda a, w: jax.lax.dot_general(a, w, numbers)
  rows = lambda a, w: row_matmul.rows_dot(a, w, numbers)
  for out in (12, 4):  # widening (fc1, qkv) and narrowing (fc2) kernels
    kernel = rng.normal(size=(8, out)).astype(np.float32)
    np.testing.assert_allclose(rows(x, kernel), grid(x, kernel), rtol=1e-6, atol=1e-6)
    cotangent = rng.normal(size=(3, 2, 5, out)).astype(np.float32)
    for a, b in zip(jax.vjp(rows, x, kernel)[1](cotangent),
                    jax.vjp(grid, x, kernel)[1](cotangent)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

  config = ModelConfig.from_size('small', depth=1)
  params = model_lib.init_params(config, jax.random.PRNGKey(0))
  seen = []

  def intercept(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == '__call__':
      seen.append(('/'.join(context.module.path), args[0].shape))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(intercept):
    model_lib.CerebroBP(config).apply({'params': params}, np.zeros((1, 2, 1250), np.float32))
  assert seen == [('encoder/patch_embed', (1, 2, 19, 64)),
                  ('encoder/blocks_0/attn/qkv', (1, 19, 2, 192)),
                  ('encoder/blocks_0/attn/proj', (1, 19, 2, 192)),
                  ('encoder/blocks_0/mlp/fc1', (1, 2, 19, 192)),
                  ('encoder/blocks_0/mlp/fc2', (1, 2, 19, 768)), ('head', (1, 192))]


def test_narrowing_kernels_take_their_gradient_from_the_out_by_in_product():
  """On a CPU a kernel with in > out (fc2) gets its gradient as (g^T x)^T: the compiled
  gradient multiplies into an (out, in) matrix, which XLA's CPU matmul runs faster, where
  XLA folds plain autodiff's transpose into an (in, out) product (as it still does for a
  widening kernel). The same gradients with the rows sharded over the data mesh."""
  numbers = (((1,), (0,)), ((), ()))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 12)), jnp.float32)

  def kernel_grad(kernel, x=x):
    return jax.grad(lambda k: jnp.sum(row_matmul.rows_dot(x, k, numbers) ** 2))(kernel)

  def products(kernel):
    hlo = jax.jit(kernel_grad).lower(kernel).compile().as_text()
    return re.findall(r'f32\[(\d+,\d+)\]\S* dot\(', hlo)

  narrowing, widening = jnp.ones((12, 4)), jnp.ones((12, 16))
  assert '4,12' in products(narrowing) and '12,4' not in products(narrowing)
  assert '12,16' in products(widening)
  mesh = sharding.data_mesh()
  meshed = jax.jit(kernel_grad, in_shardings=(sharding.replicated(mesh),
                                              sharding.batch_sharded(mesh)))
  for kernel in (narrowing, widening):
    expected = 2 * x.T @ (x @ kernel)
    np.testing.assert_allclose(kernel_grad(kernel), expected, rtol=1e-5)
    np.testing.assert_allclose(meshed(kernel, x), expected, rtol=1e-5)
