"""The PyTorch reference's stochastic depth (tests/torch_reference.py), which the
benchmark's PyTorch training step runs as the paper's fine-tuning does (rate 0.2)."""

import pytest

torch = pytest.importorskip('torch', reason='torch is not installed (pip install -e ".[torch]")')

import torch_reference  # pylint: disable=wrong-import-position


def test_drop_path_zeroes_or_rescales_whole_samples():
  torch.manual_seed(0)
  x = torch.ones(2000, 3, 4)
  y = torch_reference.drop_path(x, 0.25, training=True)
  per_sample = y.reshape(2000, -1)
  kept = per_sample[:, 0] > 0
  assert torch.equal(per_sample, per_sample[:, :1].expand_as(per_sample))  # whole samples
  assert torch.allclose(per_sample[kept], torch.tensor(1 / 0.75))
  assert 0.22 < 1 - kept.float().mean().item() < 0.28
  assert torch.equal(torch_reference.drop_path(x, 0.25, training=False), x)
  assert torch.equal(torch_reference.drop_path(x, 0.0, training=True), x)


def test_model_drops_in_training_mode_only():
  plain = torch_reference.BPModel(48, 2, 4)
  dropping = torch_reference.BPModel(48, 2, 4, drop_path_rate=0.5)
  torch_reference.randomize(plain, 0)
  dropping.load_state_dict(plain.state_dict())
  x = torch.rand(16, 2, 1250, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    assert torch.equal(dropping.eval()(x), plain.eval()(x))
    torch.manual_seed(2)
    first = dropping.train()(x)
    second = dropping(x)
  assert not torch.allclose(first, second)
  assert not torch.allclose(first, plain(x))
