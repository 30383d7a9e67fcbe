"""Unlabelled multi-channel recordings (EDF, WFDB) -> normalised windows for pre-training.

A recording is any EDF file (EEG; read with pyedflib) or WFDB record (any channels, e.g.
ECG + PPG without pressure). Each recording: the chosen channels (by name, in the order
asked, case-insensitively; all channels when none are asked), each resampled to one rate,
cut into non-overlapping windows, every channel of every window normalised on its own,
and padded with zero channels (channel_mask False) up to a common channel count.
Windows with a gap (NaN) or a flat channel are skipped and counted; a recording that
cannot be read, or lacks an asked channel, is skipped and named. Nothing here knows JAX.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os

import numpy as np
import pyedflib
import wfdb

from input_pipeline.records import RecordError, resample
from input_pipeline.windows import minmax_scale

NORMALISATIONS = ('minmax', 'minmax_symmetric', 'zscore')
MAX_CHANNELS = 64  # the model's channel table


@dataclasses.dataclass(frozen=True)
class UnlabelledOptions:
  """How recordings become windows.

  Attributes:
    channels: channel names to keep, in this order; () keeps every channel of each file.
    sample_rate_hz: rate every channel is resampled to (Hz).
    window_seconds: window length (s); windows do not overlap.
    normalisation: per channel per window: 'minmax' to [0, 1] (the BP model's input),
      'minmax_symmetric' to [-1, 1], or 'zscore' (mean 0, standard deviation 1).
    pad_channels: channels of every window, padding included; 0 = the largest channel
      count among the recordings read (at most 64, the model's limit).
    validation_fraction: the last part of each recording's windows (in time) held out.
  """

  channels: tuple[str, ...] = ()
  sample_rate_hz: float = 125.0
  window_seconds: float = 10.0
  normalisation: str = 'minmax'
  pad_channels: int = 0
  validation_fraction: float = 0.1

  def __post_init__(self):
    if self.normalisation not in NORMALISATIONS:
      raise ValueError(f'normalisation must be one of {NORMALISATIONS}, got '
                       f'{self.normalisation!r}')
    if not 0 <= self.pad_channels <= MAX_CHANNELS:
      raise ValueError(f'pad_channels must be 0 to {MAX_CHANNELS}, got {self.pad_channels}')
    if not 0.0 <= self.validation_fraction < 1.0:
      raise ValueError(f'validation_fraction must be in [0, 1), got {self.validation_fraction}')

  @property
  def window_samples(self) -> int:
    return int(round(self.window_seconds * self.sample_rate_hz))


@dataclasses.dataclass
class UnlabelledWindows:
  """Windows of every recording read, split by time within each recording.

  Attributes:
    splits: {'train', 'validation'} -> (signals (N, C, T) float32, channel_mask (N, C)
      bool, False on padded channels).
    channel_names: per recording, the names of its real channels (rows 0..k-1).
    skipped_windows: reason -> count of windows left out.
    failed: (path, reason) of every recording left out.
  """

  splits: dict[str, tuple[np.ndarray, np.ndarray]]
  channel_names: dict[str, tuple[str, ...]]
  skipped_windows: dict[str, int]
  failed: list[tuple[str, str]]

  def summary(self) -> str:
    counts = ', '.join(f'{len(v[0])} {k}' for k, v in self.splits.items())
    lines = [f'{len(self.channel_names)} recordings read: {counts} windows']
    if self.skipped_windows:
      lines.append('windows skipped: ' + ', '.join(
          f'{n} {why}' for why, n in sorted(self.skipped_windows.items())))
    for path, why in self.failed:
      lines.append(f'skipped {path}: {why}')
    return '\n'.join(lines)


def find_recordings(patterns: str) -> list[str]:
  """Comma-separated glob patterns ('**' spans folders) -> sorted EDF files and WFDB
  headers they match (a pattern may name a directory: every .edf and .hea in it)."""
  found = set()
  for pattern in (p.strip() for p in patterns.split(',') if p.strip()):
    if os.path.isdir(pattern):
      pattern = os.path.join(pattern, '*')
    found.update(p for p in glob.glob(pattern, recursive=True)
                 if p.lower().endswith('.edf') or p.endswith('.hea'))
  return sorted(found)


def read_channels(path: str) -> tuple[list[str], list[np.ndarray], list[float]]:
  """(names, physical signals (T_i,), rates in Hz) of every channel of an EDF file or a
  WFDB record (`path` ends in .edf or .hea). Raises RecordError naming the file."""
  try:
    if path.lower().endswith('.edf'):
      reader = pyedflib.EdfReader(path)
      try:
        names = [n.strip() for n in reader.getSignalLabels()]
        rates = [float(r) for r in reader.getSampleFrequencies()]
        signals = [reader.readSignal(i) for i in range(reader.signals_in_file)]
      finally:
        reader.close()
      return names, signals, rates
    record = wfdb.rdrecord(path[:-len('.hea')], smooth_frames=False)
  except (OSError, ValueError, IndexError, KeyError, TypeError) as e:
    raise RecordError(f'{path}: cannot read: {e}') from e
  if record.e_p_signal is None:
    raise RecordError(f'{path}: no signals')
  names = [n.strip() for n in record.sig_name or []]
  rates = [record.fs * n for n in record.samps_per_frame]
  return names, list(record.e_p_signal), rates


def normalise(window: np.ndarray, how: str) -> np.ndarray:
  """(C, T) -> the same, each row scaled on its own (see UnlabelledOptions)."""
  if how == 'zscore':
    return (window - window.mean(1, keepdims=True)) / window.std(1, keepdims=True)
  unit = minmax_scale(window)
  return unit if how == 'minmax' else 2 * unit - 1


def recording_windows(path: str, options: UnlabelledOptions,
                      skipped: collections.Counter) -> tuple[tuple[str, ...], np.ndarray]:
  """(channel names, windows (N, C, T) float32) of one recording; windows with a gap or a
  flat channel are counted in `skipped` by reason. Raises RecordError."""
  names, signals, rates = read_channels(path)
  if options.channels:
    lower = [n.lower() for n in names]
    absent = [c for c in options.channels if c.lower() not in lower]
    if absent:
      raise RecordError(f'{path}: no channel {", ".join(absent)} (it has {", ".join(names)})')
    chosen = [lower.index(c.lower()) for c in options.channels]
  else:
    chosen = list(range(len(names)))
  if not chosen or len(chosen) > MAX_CHANNELS:
    raise RecordError(f'{path}: {len(chosen)} channels; the model takes 1 to {MAX_CHANNELS}')
  channels = [resample(signals[i], rates[i], options.sample_rate_hz) for i in chosen]
  length = min(len(c) for c in channels)
  data = np.stack([c[:length] for c in channels])
  size = options.window_samples
  windows = []
  for start in range(0, length - size + 1, size):
    window = data[:, start:start + size]
    if not np.all(np.isfinite(window)):
      skipped['gap (NaN)'] += 1
    elif np.any(np.ptp(window, axis=1) <= 1e-6 * max(1.0, float(np.abs(window).max()))):
      skipped['flat channel'] += 1
    else:
      windows.append(normalise(window, options.normalisation).astype(np.float32))
  out = np.stack(windows) if windows else np.zeros((0, len(chosen), size), np.float32)
  return tuple(names[i] for i in chosen), out


def read_windows(patterns: str, options: UnlabelledOptions, progress=None) -> UnlabelledWindows:
  """Every recording matching `patterns` -> windows, padded to a common channel count,
  train / validation by time within each recording. `progress` wraps the file list (tqdm).

  Raises RecordError when no recording gives a window.
  """
  paths = find_recordings(patterns)
  if not paths:
    raise RecordError(f'no .edf file or WFDB header (.hea) matches {patterns!r}')
  skipped, failed, names, parts = collections.Counter(), [], {}, []
  for path in (progress(paths) if progress else paths):
    try:
      names[path], windows = recording_windows(path, options, skipped)
    except RecordError as e:
      failed.append((path, str(e).removeprefix(f'{path}: ')))
      continue
    held_out = int(np.ceil(options.validation_fraction * len(windows))) if len(windows) > 1 else 0
    parts.append((windows[:len(windows) - held_out], windows[len(windows) - held_out:]))
  if not any(len(t) for t, _ in parts):
    raise RecordError(f'no training window in {len(paths)} recordings matching {patterns!r}: '
                      + '; '.join(f'{p}: {why}' for p, why in failed) + f' {dict(skipped)}')
  width = options.pad_channels or max(w.shape[1] for w, _ in parts)
  too_wide = [p for p, n in names.items() if len(n) > width]
  if too_wide:
    raise RecordError(f'{too_wide}: more channels than pad_channels={width}')
  splits = {}
  for index, split in enumerate(('train', 'validation')):
    chunks = [part[index] for part in parts]
    signals = np.zeros((sum(len(c) for c in chunks), width, options.window_samples), np.float32)
    mask = np.zeros(signals.shape[:2], bool)
    row = 0
    for chunk in chunks:
      signals[row:row + len(chunk), :chunk.shape[1]] = chunk
      mask[row:row + len(chunk), :chunk.shape[1]] = True
      row += len(chunk)
    splits[split] = (signals, mask)
  return UnlabelledWindows(splits, names, dict(skipped), failed)
