"""Masked-patch pre-training: the masking rule, the encoder's order, the loss, a tiny run
against the baselines, resume, fine-tuning from it, export to the Lightning layout."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import wfdb
from flax import traverse_util

from cerebro_jax.models import checkpoints, convert, model as model_lib, torch_files
from cerebro_jax.models.model_config import ModelConfig
from cerebro_jax.trainers import masked_patches, pretrain, train
from configs import pretrain as pretrain_configs
from conftest import REPO_ROOT, jitted_apply
from input_pipeline import synthetic
from test_train import tiny_config

TINY = ModelConfig(embed_dim=48, depth=2, num_heads=4, drop_path_rate=0.0,
                   head='reconstruction')


def test_mask_counts_padding_and_keys():
  channel_mask = np.array([[True, True, True], [True, False, False], [True, True, False]])
  patches, ratio = 7, 0.75
  key = jax.random.PRNGKey(0)
  mask = np.asarray(masked_patches.random_token_mask(key, channel_mask, patches, ratio))
  assert mask.shape == (3, 3, 7)
  for row, channels in zip(mask, channel_mask):
    valid = channels.sum() * patches
    assert row.sum() == valid - np.floor(valid * (1 - ratio))  # 16, 6 and 11 masked
    assert not row[~channels].any()  # padded channels never masked
  np.testing.assert_array_equal(
      mask, masked_patches.random_token_mask(key, channel_mask, patches, ratio))
  other = masked_patches.random_token_mask(jax.random.PRNGKey(1), channel_mask, patches, ratio)
  assert not np.array_equal(mask, other)
  # Which tokens are masked is random over positions, not the first ones in channel order.
  many = masked_patches.random_token_mask(key, np.ones((400, 2), bool), 19, 0.5)
  assert 0.4 < float(np.mean(many[:, 0, 0])) < 0.6 and 0.4 < float(np.mean(many[:, 1, -1])) < 0.6


def test_mask_token_then_encodings_then_blocks():
  """The first block's input: pad token on padded channels, mask token on masked tokens,
  the patch embedding elsewhere, and the channel + patch encodings added to all of them."""
  config = ModelConfig.from_size('small', depth=2, head='reconstruction')
  params = model_lib.init_params(config, jax.random.PRNGKey(0), channels=3, samples=640)
  x = np.random.default_rng(0).random((2, 3, 640), dtype=np.float32)
  channel_mask = np.array([[True, True, False], [True, True, True]])
  token_mask = np.zeros((2, 3, 10), bool)
  token_mask[0, 0, 2] = token_mask[1, 2, 9] = True
  seen = {}

  def capture(next_fun, args, kwargs, context):
    if context.module.name == 'blocks_0' and context.method_name == '__call__':
      seen['x'] = np.asarray(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    model_lib.CerebroPretrain(config).apply({'params': params}, x, channel_mask, token_mask)
  enc = params['encoder']
  half = config.embed_dim // 2
  encoding = lambda c, p: np.concatenate([enc['channel_encoding'][0, c],
                                          enc['patch_encoding'][0, p]])
  embed = lambda b, c, p: (x[b, c, p * 64:(p + 1) * 64] @ enc['patch_embed']['kernel']
                           + enc['patch_embed']['bias'])
  got = seen['x']
  assert encoding(0, 0).shape == (2 * half,)
  np.testing.assert_allclose(got[0, 0, 2], enc['mask_token'][0, 0] + encoding(0, 2), atol=1e-6)
  np.testing.assert_allclose(got[1, 2, 9], enc['mask_token'][0, 0] + encoding(2, 9), atol=1e-6)
  np.testing.assert_allclose(got[0, 2, 4], enc['pad_token'][0, 0] + encoding(2, 4), atol=1e-6)
  np.testing.assert_allclose(got[0, 1, 3], embed(0, 1, 3) + encoding(1, 3), atol=1e-5)
  # A masked patch's samples cannot reach the output.
  changed = x.copy()
  changed[0, 0, 2 * 64:3 * 64] += 5.0
  run = lambda v: jitted_apply(model_lib.CerebroPretrain(config), params, v, channel_mask,
                               token_mask)
  np.testing.assert_array_equal(run(x), run(changed))


@pytest.mark.parametrize('kind', ['l2', 'smooth_l1'])
def test_loss_against_a_hand_computation(kind):
  rng = np.random.default_rng(1)
  prediction = rng.normal(size=(2, 3, 4, 5)) * 2
  target = rng.normal(size=(2, 3, 4, 5))
  channel_mask = np.array([[True, True, False], [True, True, True]])
  token_mask = rng.random((2, 3, 4)) < 0.5
  alpha = 0.1
  masked, visible = [], []
  for b in range(2):
    for c in range(3):
      if not channel_mask[b, c]:
        continue
      for p in range(4):
        d = prediction[b, c, p] - target[b, c, p]
        per = np.mean(d**2) if kind == 'l2' else np.mean(
            [0.5 * v * v if abs(v) < 1 else abs(v) - 0.5 for v in d])
        (masked if token_mask[b, c, p] else visible).append(per)
  expected = np.mean(masked) + alpha * np.mean(visible)
  got = masked_patches.reconstruction_loss(jnp.asarray(prediction, jnp.float32),
                                           jnp.asarray(target, jnp.float32), token_mask,
                                           channel_mask, alpha, kind)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def tiny_pretrain_config(**overrides):
  """configs/pretrain.py shrunk: CEReBrO small with 2 blocks on 6 synthetic subjects."""
  config = pretrain_configs.get_config()
  config.model.depth = 2
  config.data.num_subjects, config.data.minutes_per_subject = 6, 1.0
  config.batch_size, config.eval_batch_size = 8, 16
  config.num_epochs = config.patience = 3
  config.log_every_steps = 2
  config.update(overrides)
  return config


def synthetic_recordings(directory) -> str:
  """The synthetic cohort's ECG + PPG (6 subjects x 2 min) as unlabelled WFDB records."""
  for record, _ in synthetic.cohort(synthetic.CohortConfig(num_subjects=6,
                                                           minutes_per_subject=2)):
    wfdb.wrsamp(record.record, fs=125, units=['mV', 'NU'], sig_name=['II', 'PLETH'],
                p_signal=np.nan_to_num(np.stack([record.ecg[0], record.ppg], 1)),
                fmt=['16', '16'], write_dir=str(directory))
  return str(directory)


def test_tiny_pretraining_beats_the_baselines_and_fine_tunes_frozen(tmp_path_factory, tmp_path,
                                                                    tiny_dataset):
  """A tiny pre-training from raw recordings: 2.56-s windows (5 patches per channel), 18
  epochs of 15 steps at a constant learning rate (25 s on 2 cores); then frozen
  fine-tuning from it: the decoder is dropped, a BP head added, and only the patch
  embedding and the head train, so every other encoder parameter stays pre-trained."""
  records = synthetic_recordings(tmp_path_factory.mktemp('records'))
  config = tiny_pretrain_config(num_epochs=18, patience=18, batch_size=16, eval_batch_size=64,
                                schedule='constant', learning_rate=1e-3, weight_decay=0.0,
                                log_every_steps=15)
  config.model.drop_path_rate = 0.0
  config.data.recordings, config.data.window_seconds = records, 2.56
  workdir = tmp_path / 'pretrain'
  results = pretrain.pretrain_and_evaluate(config, str(workdir))
  held_out = results['validation']
  assert held_out['model']['loss'] < 0.95 * held_out['mean_patch']['loss']
  assert held_out['model']['loss'] < 0.5 * held_out['zeros']['loss']
  assert held_out['model']['masked'] < held_out['mean_patch']['masked']
  written = json.loads((workdir / 'eval' / 'pretrain_metrics.json').read_text())
  assert written['results'] == results and set(results) == {'validation'}
  params, config, metadata = checkpoints.load_model(workdir / 'model', head='reconstruction')
  assert config.head == 'reconstruction' and set(params) == {'encoder', 'decoder_pred'}
  assert metadata['objective'] == 'masked_patches' and metadata['input']['samples'] == 320
  assert list((workdir / 'tensorboard').iterdir())
  with pytest.raises(checkpoints.ModelCheckpointError, match='fine-tune it first'):
    checkpoints.load_model(workdir / 'model', head='bp')

  fine_tuning = tiny_config(train_mode='frozen', init_from=str(workdir / 'model'), num_epochs=1)
  fine_tuning.data.dir = tiny_dataset
  reports = train.train_and_evaluate(fine_tuning, str(tmp_path / 'ft'))
  assert reports['test']['sbp']['n'] > 0
  tuned, tuned_config, _ = checkpoints.load_model(tmp_path / 'ft' / 'model', head='bp')
  assert tuned_config.head == 'bp' and set(tuned) == {'encoder', 'head'}
  before = traverse_util.flatten_dict(params['encoder'], sep='/')
  after = traverse_util.flatten_dict(tuned['encoder'], sep='/')
  moved = sorted(k for k in before if not np.array_equal(before[k], after[k]))
  assert moved == ['patch_embed/bias', 'patch_embed/kernel']


class _Stop(Exception):
  pass


def test_pretraining_resumes_to_the_same_parameters(tiny_dataset, tmp_path):
  """On a prepared dataset's windows (labels unused): a run stopped after its first epoch
  and restarted ends where an uninterrupted run ends."""

  def config():
    built = tiny_pretrain_config(num_epochs=2, patience=2)
    built.model.depth = 1
    built.data.dir = tiny_dataset
    return built

  uninterrupted = tmp_path / 'a'
  results = pretrain.pretrain_and_evaluate(config(), str(uninterrupted))
  assert set(results) == {'validation', 'test'}
  assert set(results['test']) == {'model', 'zeros', 'mean_patch'}

  def stop_after_first(epoch, logs):
    assert set(logs) == {'train_loss', 'val_loss', 'best_val_loss'}
    if epoch == 1:
      raise _Stop

  stopped = tmp_path / 'b'
  with pytest.raises(_Stop):
    pretrain.pretrain_and_evaluate(config(), str(stopped), stop_after_first)
  assert not (stopped / 'model').exists()
  pretrain.pretrain_and_evaluate(config(), str(stopped))
  params_a, _, meta_a = checkpoints.load_model(uninterrupted / 'model')
  params_b, _, meta_b = checkpoints.load_model(stopped / 'model')
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  assert meta_a == meta_b and tiny_dataset in meta_a['input']['dataset']


@pytest.mark.parametrize('size,depth', [('small', 2), ('base', 2), ('large', 1)])
def test_pretrained_export_to_the_lightning_layout_and_back(size, depth, tmp_path):
  config = ModelConfig.from_size(size, depth=depth, head='reconstruction')
  params = jax.tree.map(np.asarray, model_lib.init_params(config, jax.random.PRNGKey(4)))
  state = convert.export_state_dict(params, config)
  assert all(k.startswith(('model.', 'model_head.decoder_pred.')) for k in state)
  assert state['model_head.decoder_pred.weight'].shape == (64, config.embed_dim)
  for suffix in ('ckpt', 'safetensors'):
    path = tmp_path / f'pre.{suffix}'
    torch_files.write_state_dict(state, path, convert.LIGHTNING.entry)
    back, report = convert.convert_checkpoint(path, config)
    assert report.prefix == '' and not report.skipped and not report.initialised
    jax.tree.map(np.testing.assert_array_equal, back, params)
  # Read as a BP model (the default), the decoder is skipped and a head initialised.
  _, report = convert.convert_checkpoint(path, ModelConfig.from_size(size, depth=depth))
  assert report.skipped and report.is_encoder_only


def test_init_model_then_export_weights_to_the_lightning_checkpoint(tmp_path):
  torch = pytest.importorskip('torch')
  run = lambda *args: subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True,
                                     text=True, timeout=300, check=False)
  random_dir = tmp_path / 'random'
  result = run('scripts/init_model.py', '--depth=2', f'--output={random_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  original, config, _ = checkpoints.load_model(random_dir, head='reconstruction')
  assert config.depth == 2
  out = tmp_path / 'pre.ckpt'
  result = run('scripts/export_weights.py', f'--checkpoint={random_dir}', f'--output={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Lightning' in result.stdout
  state = torch.load(out, weights_only=True)['state_dict']
  assert 'model_head.decoder_pred.bias' in state and 'model.norm.weight' in state
  back, report = convert.convert_checkpoint(out, config)
  assert report.source_format == 'lightning' and not report.skipped
  jax.tree.map(np.testing.assert_array_equal, original, back)


def test_main_runs_pretraining(tmp_path):
  """The same main runs configs/pretrain.py (here on two CPU devices) and says how to
  fine-tune the result."""
  workdir = tmp_path / 'w'
  tiny = ['--config.model.depth=1', '--config.data.num_subjects=4',
          '--config.data.minutes_per_subject=0.5', '--config.batch_size=4',
          '--config.eval_batch_size=8']
  run = lambda *args: subprocess.run([sys.executable, '-m', 'cerebro_jax.main', *args, *tiny],
                                     cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                                     check=False)
  result = run('--config=configs/pretrain.py', f'--workdir={workdir}', '--config.num_epochs=1',
               '--cpu_devices=2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert '2 cpu device(s) in 1 process(es)' in result.stderr + result.stdout
  assert '| validation | mean_patch |' in result.stderr + result.stdout
  assert f'--config.init_from={workdir}/model' in result.stderr + result.stdout
  # A batch the CPU devices cannot split: a one-line error before any work.
  result = run('--config=configs/pretrain.py', f'--workdir={tmp_path / "odd"}',
               '--cpu_devices=3')
  assert result.returncode == 1
  assert 'error: batch_size 4 does not divide over 3 devices' in result.stderr
  assert 'Traceback' not in result.stderr


def test_pretraining_can_start_from_a_bp_model(tmp_path):
  """init_from a BP model: its encoder under a fresh decoder (its head dropped); with
  train_mode 'scratch' the weights would be ignored, which is refused."""
  bp_config = ModelConfig.from_size('small', depth=1)
  bp_params = model_lib.init_params(bp_config, jax.random.PRNGKey(2))
  model_dir = checkpoints.save_model(tmp_path / 'bp', bp_params, bp_config)
  config = tiny_pretrain_config(init_from=model_dir, train_mode='unfrozen')
  params, model_config = pretrain.initial_params(config, 3, 640)
  assert model_config.head == 'reconstruction' and model_config.depth == 1
  assert set(params) == {'encoder', 'decoder_pred'}
  jax.tree.map(np.testing.assert_array_equal, params['encoder'],
               jax.tree.map(np.asarray, bp_params['encoder']))
  with pytest.raises(ValueError, match='ignores weights'):
    pretrain.initial_params(tiny_pretrain_config(init_from=model_dir), 3, 640)
