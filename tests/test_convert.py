"""PyTorch checkpoints -> Flax: outputs equal the PyTorch reference; mismatches are named."""

import argparse
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from cerebro_jax.models import checkpoints, convert, model as model_lib, torch_files
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.models.torch_files import CheckpointReadError, read_state_dict
from conftest import REPO_ROOT, jitted_apply

torch = pytest.importorskip('torch', reason='torch is not installed (pip install -e ".[torch]")')
import safetensors.torch  # pylint: disable=wrong-import-position
import torch_reference  # pylint: disable=wrong-import-position

# Float32 PyTorch vs float32 XLA on outputs of about 100 mmHg (measured: at most 1e-4).
TOLERANCE_MMHG = 2.5e-4
# Encoder tokens after the final LayerNorm are of order 1.
TOLERANCE_TOKENS = 1e-4
# base and large keep their width and heads but only 2 blocks, to stay fast.
SIZES_AND_DEPTHS = [('small', 8), ('base', 2), ('large', 2)]
FORMATS = ['lightning', 'fine-tuned', 'safetensors']


def reference(size, depth, attention_type='alternating', seed=0):
  config = ModelConfig.from_size(size, depth=depth, attention_type=attention_type)
  ref = torch_reference.BPModel(config.embed_dim, config.depth, config.num_heads,
                                attention_type)
  torch_reference.randomize(ref, seed)
  return config, ref.eval()


def windows(n=4, channels=2, seed=1):
  return np.random.default_rng(seed).random((n, channels, 1250), dtype=np.float32)


def save_checkpoint(state_dict, fmt, directory: pathlib.Path) -> pathlib.Path:
  """Writes `state_dict` (keys model.* / model_head.*) in one of the three formats."""
  if fmt == 'lightning':  # pre-trained encoder: no BP head, plus the decoder
    encoder = {k: v for k, v in state_dict.items() if k.startswith('model.')}
    dim = encoder['model.norm.weight'].shape[0]
    encoder['model_head.decoder_pred.weight'] = torch.randn(64, dim)
    encoder['model_head.decoder_pred.bias'] = torch.randn(64)
    path = directory / 'pretrained.ckpt'
    torch.save({'state_dict': encoder, 'epoch': 9, 'global_step': 1234,
                'pytorch-lightning_version': '2.4.0',
                'hyper_parameters': {'args': argparse.Namespace(lr=1e-4)}}, path)
  elif fmt == 'fine-tuned':  # saved from nn.DataParallel
    path = directory / 'finetuned.ckpt'
    torch.save({'model_state_dict': {f'module.{k}': v for k, v in state_dict.items()},
                'epoch': 3}, path)
  else:
    path = directory / 'model.safetensors'
    safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
  return path


def flax_outputs(params, config, x, channel_mask=None):
  return jitted_apply(model_lib.CerebroBP(config), params, x, channel_mask)


def torch_outputs(ref, x, channel_mask=None):
  mask = None if channel_mask is None else torch.from_numpy(channel_mask)
  with torch.no_grad():
    return ref(torch.from_numpy(x), mask).numpy()


def head_from(ref):
  fc = ref.model_head.mlp[0].fc
  return {'kernel': fc.weight.detach().numpy().T, 'bias': fc.bias.detach().numpy()}


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('size,depth', SIZES_AND_DEPTHS)
def test_converted_model_reproduces_reference(size, depth, fmt, tmp_path):
  config, ref = reference(size, depth)
  path = save_checkpoint(ref.state_dict(), fmt, tmp_path)
  params, report = convert.convert_checkpoint(path, config)
  assert report.ok and report.source_format == fmt
  if fmt == 'lightning':
    assert report.is_encoder_only
    assert sorted(report.skipped) == sorted(convert.PRETRAINING_DECODER_KEYS)
    params = {**params, 'head': head_from(ref)}  # the file has no head to compare
  else:
    assert not report.is_encoder_only and not report.skipped
  x = windows()
  expected = torch_outputs(ref, x)
  assert expected.min() > 10 and expected.std(axis=0).min() > 1  # mmHg-like, input-driven
  np.testing.assert_allclose(flax_outputs(params, config, x), expected, rtol=0,
                             atol=TOLERANCE_MMHG)
  with torch.no_grad():
    expected_tokens = ref.model(torch.from_numpy(x)).numpy()
  tokens = jitted_apply(model_lib.Encoder(config), params['encoder'], x)
  np.testing.assert_allclose(tokens.reshape(expected_tokens.shape), expected_tokens,
                             rtol=0, atol=TOLERANCE_TOKENS)


@pytest.mark.parametrize('attention_type', ['alternating', 'full'])
def test_padded_channels_reproduce_reference(attention_type):
  config, ref = reference('small', 4, attention_type)
  params, _ = convert.convert_state_dict(
      {k: v.numpy() for k, v in ref.state_dict().items()}, config)
  x = windows(n=3, channels=4)
  mask = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], bool)
  np.testing.assert_allclose(flax_outputs(params, config, x, mask),
                             torch_outputs(ref, x, mask), rtol=0, atol=TOLERANCE_MMHG)


def test_full_attention_reproduces_reference():
  config, ref = reference('small', 8, 'full')
  params, _ = convert.convert_state_dict(
      {k: v.numpy() for k, v in ref.state_dict().items()}, config)
  x = windows()
  np.testing.assert_allclose(flax_outputs(params, config, x), torch_outputs(ref, x),
                             rtol=0, atol=TOLERANCE_MMHG)


def _swap_blocks(state_dict, a, b):
  swapped = dict(state_dict)
  for key in state_dict:
    if key.startswith(f'model.blocks.{a}.'):
      other = key.replace(f'.blocks.{a}.', f'.blocks.{b}.')
      swapped[key], swapped[other] = state_dict[other], state_dict[key]
  return swapped


@pytest.mark.parametrize('corruption', ['transposed proj', 'swapped blocks 1 and 3'])
def test_comparison_catches_a_wrongly_mapped_tensor(corruption):
  """A mapping error that keeps every shape passes conversion; the comparison fails."""
  config, ref = reference('small', 8)
  state_dict = {k: v.numpy() for k, v in ref.state_dict().items()}
  if corruption == 'transposed proj':
    state_dict['model.blocks.2.attn.proj.weight'] = state_dict[
        'model.blocks.2.attn.proj.weight'].T.copy()
  else:
    state_dict = _swap_blocks(state_dict, 1, 3)
  params, report = convert.convert_state_dict(state_dict, config)
  assert report.ok
  x = windows()
  error = np.abs(flax_outputs(params, config, x) - torch_outputs(ref, x)).max()
  assert error > 10 * TOLERANCE_MMHG


def _small_state_dict(depth=2):
  config, ref = reference('small', depth)
  return config, {k: v.numpy() for k, v in ref.state_dict().items()}


def test_missing_unexpected_and_misshaped_keys_are_named():
  config, state_dict = _small_state_dict()
  del state_dict['model.blocks.1.mlp.fc1.bias']
  state_dict['model.blocks.0.attn.extra'] = np.zeros(3, np.float32)
  state_dict['model.norm.weight'] = np.ones(7, np.float32)
  with pytest.raises(convert.CheckpointMismatchError) as info:
    convert.convert_state_dict(state_dict, config)
  message = str(info.value)
  assert 'missing 1 keys: model.blocks.1.mlp.fc1.bias' in message
  assert 'unexpected 1 keys: model.blocks.0.attn.extra' in message
  assert 'mis-shaped model.norm.weight: expected (192,), found (7,)' in message


def test_wrong_size_and_depth_fail_with_keys_named():
  config, state_dict = _small_state_dict(depth=2)
  with pytest.raises(convert.CheckpointMismatchError, match='missing .*model.blocks.7.norm1.weight'):
    convert.convert_state_dict(state_dict, ModelConfig.from_size('small'))  # depth 8
  with pytest.raises(convert.CheckpointMismatchError,
                     match=r'mis-shaped model.blocks.0.attn.qkv.weight: expected \(1728, 576\)'):
    convert.convert_state_dict(state_dict, ModelConfig.from_size('base', depth=2))
  with pytest.raises(convert.CheckpointMismatchError, match='unexpected .*model.blocks.1.norm1'):
    convert.convert_state_dict(state_dict, ModelConfig.from_size('small', depth=1))


def test_allowed_patterns_and_non_finite_values():
  config, state_dict = _small_state_dict()
  del state_dict['model.pad_token']
  state_dict['model.something_new'] = np.zeros(2, np.float32)
  params, report = convert.convert_state_dict(
      state_dict, config, allow_missing=['model.pad_token'],
      allow_unexpected=['model.something_*'])
  assert report.initialised == ['model.pad_token']
  assert report.skipped == ['model.something_new']
  assert params['encoder']['pad_token'].shape == (1, 1, 192)

  _, state_dict = _small_state_dict()
  state_dict['model.blocks.0.mlp.fc2.weight'][0, 0] = np.nan
  with pytest.raises(convert.CheckpointMismatchError,
                     match='non-finite values in 1 keys: model.blocks.0.mlp.fc2.weight'):
    convert.convert_state_dict(state_dict, config)


def test_a_checkpoint_that_is_not_cerebro_is_rejected():
  with pytest.raises(convert.CheckpointMismatchError, match='expected exactly one CEReBrO'):
    convert.convert_state_dict({'fc.weight': np.zeros((2, 2))}, ModelConfig())


def test_unreadable_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.ckpt'):
    read_state_dict(tmp_path / 'nope.ckpt')
  garbage = tmp_path / 'garbage.ckpt'
  garbage.write_bytes(b'\x00not a checkpoint' * 10)
  with pytest.raises(CheckpointReadError, match='garbage.ckpt'):
    read_state_dict(garbage)
  _, state_dict = _small_state_dict()
  good = save_checkpoint({k: torch.from_numpy(v) for k, v in state_dict.items()},
                         'fine-tuned', tmp_path)
  truncated = tmp_path / 'truncated.ckpt'
  truncated.write_bytes(good.read_bytes()[:5000])
  with pytest.raises(CheckpointReadError, match='truncated.ckpt'):
    read_state_dict(truncated)
  bad_safetensors = tmp_path / 'bad.safetensors'
  bad_safetensors.write_bytes(b'{}garbage')
  with pytest.raises(CheckpointReadError, match='bad.safetensors'):
    read_state_dict(bad_safetensors)


class _Exploit:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_checkpoints_are_never_unpickled_as_code(tmp_path):
  """A pickled os.system call is refused, not run, and the file is named."""
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.ckpt'
  torch.save({'state_dict': {'model.norm.weight': torch.ones(2)},
              'hyper_parameters': _Exploit(marker)}, path)
  assert b'system' in path.read_bytes()  # the payload is really in the file
  with pytest.raises(CheckpointReadError, match='evil.ckpt: cannot be read safely .*posix.system'):
    read_state_dict(path)
  assert not marker.exists()


def test_float16_checkpoints_are_widened(tmp_path):
  config, ref = reference('small', 2)
  half = {k: v.half() for k, v in ref.state_dict().items()}
  path = save_checkpoint(half, 'fine-tuned', tmp_path)
  params, _ = convert.convert_checkpoint(path, config)
  kernel = params['encoder']['blocks_0']['attn']['qkv']['kernel']
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, half['model.blocks.0.attn.qkv.weight'].float().numpy().T)
  assert jax.tree.all(jax.tree.map(lambda a: a.dtype == np.float32, params))


@pytest.mark.parametrize('size,depth', SIZES_AND_DEPTHS)
def test_export_then_convert_gives_the_same_parameters(size, depth, tmp_path):
  """Our parameters -> the original's fine-tuned file (.ckpt and .safetensors) -> back:
  every array identical, for all three sizes."""
  config = ModelConfig.from_size(size, depth=depth)
  params = model_lib.init_params(config, jax.random.PRNGKey(3))
  state = convert.export_state_dict(params, config)
  assert all(k.startswith(('module.model.', 'module.model_head.')) for k in state)
  for suffix in ('ckpt', 'safetensors'):
    path = tmp_path / f'bp.{suffix}'
    torch_files.write_state_dict(state, path)
    back, report = convert.convert_checkpoint(path, config)
    assert report.prefix == 'module.' and not report.initialised and not report.skipped
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


def test_export_is_the_original_layout():
  """The reference model's own state dict -> our parameters -> exported (no prefix): the
  same names, shapes and values as the PyTorch model had."""
  config, ref = reference('small', 2)
  original = {k: v.numpy() for k, v in ref.state_dict().items()}
  params, _ = convert.convert_state_dict(original, config)
  exported = convert.export_state_dict(params, config, prefix='')
  assert exported.keys() == original.keys()
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value)


def test_export_weights_command(tmp_path):
  config = ModelConfig.from_size('small', depth=2)
  params = model_lib.init_params(config, jax.random.PRNGKey(5))
  model_dir = checkpoints.save_model(tmp_path / 'model', params, config)
  out = tmp_path / 'bp.safetensors'
  command = [sys.executable, 'scripts/export_weights.py', f'--checkpoint={model_dir}',
             f'--output={out}', '--format=safetensors']
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'the fine-tuned layout' in result.stdout
  back, _ = convert.convert_checkpoint(out, config)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
