"""A PyTorch CEReBrO BP model written from ../shared/spec/cerebro.md, for tests only.

Module attribute names reproduce the spec's state-dict keys (`model.blocks.{i}.attn.qkv`,
`model_head.mlp.0.fc`, ...). Tokens are kept flat (B, C*P, D) in channel-major order and
regrouped by reshapes in each block, unlike the Flax port's (B, C, P, D) grid, so the
two implementations check each other.
"""

import torch
from torch import nn


class Attention(nn.Module):

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x, key_mask=None):  # x (G, L, D), key_mask (G, L) bool
    g, l, d = x.shape
    hd = d // self.heads
    q, k, v = self.qkv(x).reshape(g, l, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
    attn = (q * hd**-0.5) @ k.transpose(-2, -1)
    if key_mask is not None:
      attn = attn.masked_fill(~key_mask[:, None, None, :], float('-inf'))
      attn = attn.softmax(-1).nan_to_num(0.0)  # a query with no valid key gives 0
    else:
      attn = attn.softmax(-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(g, l, d))


class Mlp(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


def drop_path(x, rate: float, training: bool):
  """Stochastic depth as the spec's blocks apply it during fine-tuning: each sample's
  residual branch x (B, ...) is zeroed with probability `rate`, else scaled by
  1 / (1 - rate); the identity in eval mode or at rate 0."""
  if not training or rate == 0.0:
    return x
  keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
  return x * keep.bernoulli_(1.0 - rate) / (1.0 - rate)


class Block(nn.Module):

  def __init__(self, dim, heads, mode, drop_path_rate=0.0):
    super().__init__()
    self.mode = mode
    self.drop_path_rate = drop_path_rate
    self.norm1 = nn.LayerNorm(dim)
    self.attn = Attention(dim, heads)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, 4 * dim)

  def _attend(self, x, mask, channels):
    b, n, d = x.shape
    p = n // channels
    if self.mode == 'full':
      return self.attn(x, mask.repeat_interleave(p, dim=1))
    if self.mode == 'channels':
      groups = x.reshape(b, channels, p, d).transpose(1, 2).reshape(b * p, channels, d)
      out = self.attn(groups, mask[:, None, :].expand(b, p, channels).reshape(b * p, channels))
      return out.reshape(b, p, channels, d).transpose(1, 2).reshape(b, n, d)
    groups = x.reshape(b * channels, p, d)
    out = self.attn(groups, mask[:, :, None].expand(b, channels, p).reshape(b * channels, p))
    return out.reshape(b, n, d)

  def forward(self, x, mask, channels):
    rate = self.drop_path_rate
    x = x + drop_path(self._attend(self.norm1(x), mask, channels), rate, self.training)
    return x + drop_path(self.mlp(self.norm2(x)), rate, self.training)


class _PatchProj(nn.Module):

  def __init__(self, dim, patch):
    super().__init__()
    self.proj = nn.Conv2d(1, dim, kernel_size=(1, patch), stride=(1, patch))


class _PatchEmbed(nn.Module):

  def __init__(self, dim, patch):
    super().__init__()
    self.patch_embed = _PatchProj(dim, patch)


class Encoder(nn.Module):

  def __init__(self, dim, depth, heads, attention_type='alternating', patch=64,
               drop_path_rate=0.0):
    super().__init__()
    self.patch = patch
    self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pad_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.channel_encoding = nn.Parameter(torch.zeros(1, 64, dim // 2))
    self.patch_encoding = nn.Parameter(torch.zeros(1, 100, dim // 2))
    self.patch_embed = _PatchEmbed(dim, patch)
    modes = ['full'] * depth if attention_type == 'full' else [
        'channels' if i % 2 == 0 else 'time' for i in range(depth)]
    self.blocks = nn.ModuleList([Block(dim, heads, m, drop_path_rate) for m in modes])
    self.norm = nn.LayerNorm(dim)

  def forward(self, x, channel_mask=None):  # x (B, C, T)
    b, c, t = x.shape
    p = t // self.patch
    tokens = self.patch_embed.patch_embed.proj(x[:, None, :, :p * self.patch])  # (B, D, C, P)
    tokens = tokens.permute(0, 2, 3, 1)  # (B, C, P, D)
    half = tokens.shape[-1] // 2
    enc = torch.cat([self.channel_encoding[:, :c, None, :].expand(1, c, p, half),
                     self.patch_encoding[:, None, :p, :].expand(1, c, p, half)], dim=-1)
    tokens = tokens + enc
    if channel_mask is None:
      channel_mask = torch.ones(b, c, dtype=torch.bool, device=x.device)
    else:
      tokens = torch.where(channel_mask[:, :, None, None], tokens, self.pad_token)
    tokens = tokens.reshape(b, c * p, -1)
    for block in self.blocks:
      tokens = block(tokens, channel_mask, c)
    return self.norm(tokens)


class _HeadLayer(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.fc = nn.Linear(dim, 2)
    self.act = nn.GELU()

  def forward(self, x):
    return self.act(self.fc(x))


class _Head(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.mlp = nn.Sequential(_HeadLayer(dim))

  def forward(self, x):
    return self.mlp(x)


class BPModel(nn.Module):
  """(B, 2, T) -> (B, 2) [DBP, SBP]; state-dict keys `model.*` and `model_head.*`.
  drop_path_rate: the blocks' stochastic depth in training mode (the paper's fine-tuning
  uses 0.2); eval mode, what the conversion tests compare, never drops."""

  def __init__(self, dim, depth, heads, attention_type='alternating', drop_path_rate=0.0):
    super().__init__()
    self.model = Encoder(dim, depth, heads, attention_type, drop_path_rate=drop_path_rate)
    self.model_head = _Head(dim)

  def forward(self, x, channel_mask=None):
    return self.model_head(self.model(x, channel_mask).mean(dim=1))


def randomize(module: nn.Module, seed: int) -> None:
  """Sets every parameter far from its initial value, deterministically from `seed`."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith('norm1.weight') or name.endswith('norm2.weight') or name.endswith(
          'norm.weight'):
        p.copy_(1.0 + 0.3 * noise)
      elif name.endswith('.weight') and p.ndim >= 2:
        fan_in = p[0].numel()
        p.copy_(noise * 1.5 / fan_in**0.5)
      else:
        p.copy_(0.3 * noise)
    # Head: outputs that move by several mmHg with the input, centred near DBP 80 and
    # SBP 120 mmHg on uniform [0, 1) probe windows.
    fc = module.model_head.mlp[0].fc
    fc.weight.copy_(5.0 * torch.randn(fc.weight.shape, generator=gen))
    probe = torch.rand(16, 2, 1250, generator=gen)
    pooled = module.model(probe).mean(dim=1)
    fc.bias.copy_(torch.tensor([80.0, 120.0]) - (pooled @ fc.weight.T).mean(dim=0))
