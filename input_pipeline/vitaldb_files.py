"""VitalDB `.vital` files -> `Record`s at 125 Hz.

Wave tracks are read at their native rate from the file's own records (each a start time
and a block of samples) and resampled here with an anti-aliasing filter; the vitaldb
package's `to_numpy(interval=...)` would only pick samples. Gaps between blocks are NaN.

Open-dataset cases can be read over the network with `read_case(case_id)` (the vitaldb
package downloads them); the tests do not exercise it.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import vitaldb

from input_pipeline.records import FS, Record, RecordError, resample


@dataclasses.dataclass(frozen=True)
class TrackNames:
  """Track names of the three signals (VitalDB's SNUADC device, 500 Hz waves)."""
  ecg: str = 'SNUADC/ECG_II'
  ppg: str = 'SNUADC/PLETH'
  abp: str = 'SNUADC/ART'

  @property
  def lead(self) -> str:
    """The ECG lead named by the track ('SNUADC/ECG_II' -> 'II')."""
    return self.ecg.rsplit('/', 1)[-1].removeprefix('ECG_')


def _wave(vf: 'vitaldb.VitalFile', name: str, start: float, seconds: float) -> np.ndarray:
  """Track `name` at its native rate, resampled to 125 Hz on [start, start + seconds)."""
  track = vf.trks[name]
  if not track.srate:
    raise RecordError(f'track {name} is not a wave track (no sampling rate)')
  rate = float(track.srate)
  native = np.full(int(np.ceil(seconds * rate)), np.nan)
  for rec in track.recs:
    values = np.asarray(rec['val'], np.float64)
    first = int(round((rec['dt'] - start) * rate))
    lo, hi = max(first, 0), min(first + len(values), len(native))
    if hi > lo:
      native[lo:hi] = values[lo - first:hi - first]
  out = resample(native, rate)
  length = int(round(seconds * FS))
  return np.concatenate([out, np.full(max(0, length - len(out)), np.nan)])[:length]


def _to_record(vf, name: str, tracks: TrackNames, where: str, all_tracks) -> Record:
  """`all_tracks()` lists every track of the source, for the error message."""
  absent = [t for t in (tracks.ecg, tracks.ppg, tracks.abp) if t not in vf.trks]
  if absent:
    available = all_tracks()
    raise RecordError(f'{where}: unknown or missing track names {absent}; it has '
                      f'{available or "no tracks (not a readable .vital file?)"}')
  seconds = float(vf.dtend - vf.dtstart)
  if not seconds > 0:
    raise RecordError(f'{where}: holds no samples')
  ecg, ppg, abp = (_wave(vf, t, vf.dtstart, seconds) for t in (tracks.ecg, tracks.ppg,
                                                               tracks.abp))
  return Record(record=name, subject=name, source='vitaldb', ecg=ecg[None], ppg=ppg, abp=abp,
                leads=(tracks.lead,))


def read_vital(path: str, tracks: TrackNames = TrackNames()) -> Record:
  """Reads a local .vital file; the subject is the file name without extension."""
  if not os.path.isfile(path):
    raise RecordError(f'{path}: file not found')
  try:
    vf = vitaldb.VitalFile(path, [tracks.ecg, tracks.ppg, tracks.abp])
  except Exception as e:  # vitaldb raises many types for corrupt files
    raise RecordError(f'{path}: cannot read .vital file ({type(e).__name__}: {e})') from e
  return _to_record(vf, os.path.basename(path).removesuffix('.vital'), tracks, path,
                    lambda: vitaldb.VitalFile(path, header_only=True).get_track_names())


def read_case(case_id: int, tracks: TrackNames = TrackNames()) -> Record:
  """Downloads VitalDB open-dataset case `case_id` (needs network access)."""
  vf = vitaldb.VitalFile(case_id, [tracks.ecg, tracks.ppg, tracks.abp])
  return _to_record(vf, f'{case_id:04d}', tracks, f'VitalDB case {case_id}',
                    lambda: sorted(vf.trks))


def find_records(directory: str) -> list[str]:
  """All .vital files under `directory`, sorted."""
  found = []
  for root, _, files in os.walk(directory):
    found += [os.path.join(root, f) for f in files if f.endswith('.vital')]
  return sorted(found)
