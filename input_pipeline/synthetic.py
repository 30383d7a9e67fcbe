"""A seeded synthetic cohort: ECG, PPG and ABP at 125 Hz for N virtual subjects.

Each subject has its own physiology, drawn from the subject's seed:
- heart rate 55-100 bpm with beat-to-beat variability; BP level (SBP 100-165, pulse
  pressure 30-65 mmHg; beats kept within SBP 80-200, DBP 40-110 mmHg) with slow drifts (minutes), Mayer waves (~0.1 Hz) and
  respiratory modulation (0.2-0.3 Hz);
- a pulse arrival time PAT = PEP + L / PWV that shortens as mean pressure rises: PWV grows
  exponentially with MAP (Moens-Korteweg with an elastic modulus rising exponentially
  with pressure), with a subject-specific arterial stiffness, path length L and PEP, so
  PAT carries BP within a subject but maps differently across subjects;
- a PPG pulse that is a smoothed, delayed arterial pulse whose dicrotic notch fades with
  stiffness; an ECG whose P-QRS-T waves have the subject's own amplitudes and widths;
  noise, baseline wander, mains noise on the ECG;
- occasional artifacts the quality rules must reject: flat lines (sensor off), clipped
  PPG, arterial-line flushes (ABP > 250 mmHg), NaN gaps, motion on the PPG.

The waveforms go through the same windowing and labelling code as real records.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from input_pipeline.records import FS, Record


@dataclasses.dataclass(frozen=True)
class CohortConfig:
  """Size and seed of a synthetic cohort."""
  num_subjects: int = 48
  minutes_per_subject: float = 6.0
  seed: int = 0
  artifact_rate: float = 0.08  # expected artifacts per 10 s


@dataclasses.dataclass
class Beats:
  """Noise-free ground truth of one subject's ABP, per beat: foot and systolic-peak
  times (s), DBP at the foot and SBP at the peak (mmHg)."""
  foot_s: np.ndarray
  peak_s: np.ndarray
  sbp: np.ndarray
  dbp: np.ndarray


def _smooth_noise(rng, t: np.ndarray, period_s: float) -> np.ndarray:
  """Zero-mean, unit-std noise at the sample times t (s, from 0 at FS Hz), varying on
  time scales of about `period_s`."""
  knots = np.arange(0, len(t) / FS + 2 * period_s, period_s)
  values = rng.standard_normal(len(knots))
  out = np.interp(t, knots, values)
  out -= out.mean()
  return out / (np.sqrt(np.mean(out * out)) + 1e-9)  # out.std(), without its second mean


def _abp_shape(u: np.ndarray, t_peak: float, tau: float, notch: float) -> np.ndarray:
  """Arterial pulse over one beat, u in [0, 1): 0 at the foot, 1 at the systolic peak."""
  rising = u < t_peak
  falling = ~rising
  out = np.empty_like(u)
  out[rising] = np.sin(0.5 * np.pi * np.clip(u[rising] / t_peak, 0, 1)) ** 2
  u = u[falling]
  decay = np.exp(-(u - t_peak) / tau) + notch * np.exp(-((u - 0.45) / 0.06) ** 2)
  end = np.exp(-(1 - t_peak) / tau)
  at_peak = 1 + notch * np.exp(-((t_peak - 0.45) / 0.06) ** 2)
  fall = (decay - end * (u - t_peak) / (1 - t_peak)) / at_peak  # 1 at the peak, 0 at u=1
  out[falling] = np.minimum(fall, 1.0)
  return out


# P, Q, R, S, T waves: centre (s from the R peak), width (s), amplitude (mV).
_ECG_WAVES = ((-0.2, 0.025, 0.12), (-0.03, 0.01, -0.12), (0.0, 0.012, 1.1),
              (0.03, 0.01, -0.25), (0.28, 0.05, 0.3))


def _ecg_beat(t: np.ndarray, morphology: np.ndarray) -> np.ndarray:
  """P-QRS-T complex (mV) at time t (s) relative to the R peak; morphology (5, 2) scales
  each wave's amplitude and width (every person's ECG looks a little different)."""
  total = np.zeros_like(t)
  z = np.empty_like(t)  # each wave computed in place: no temporary arrays of len(t)
  for (c, w, a), (ka, kw) in zip(_ECG_WAVES, morphology):
    np.subtract(t, c, out=z)
    z /= w * kw
    np.square(z, out=z)
    z *= -0.5
    np.exp(z, out=z)
    total += z * (a * ka)
  return total


def _pulse_train(t, feet, shape_fn, values_low, values_amp):
  """Beat-wise waveform: low + amp * shape(u) between consecutive feet (NaN outside)."""
  k = np.searchsorted(feet, t, side='right') - 1
  valid = (k >= 0) & (k < len(feet) - 1)
  k = np.clip(k, 0, len(feet) - 2)
  u = (t - feet[k]) / np.diff(feet)[k]
  low = values_low[k] + np.diff(values_low)[k] * u
  return np.where(valid, low + values_amp[k] * shape_fn(u), np.nan)


def subject(index: int, config: CohortConfig) -> tuple[Record, Beats]:
  """Subject `index` of the cohort: its record and its beat-level ground truth."""
  rng = np.random.default_rng([config.seed, index])
  n = int(config.minutes_per_subject * 60 * FS)
  t = np.arange(n) / FS

  # Physiology of this subject.
  hr0 = rng.uniform(55, 100)
  sbp0, pp0 = rng.uniform(100, 165), rng.uniform(30, 65)
  stiffness = rng.uniform(0, 1)  # 0 compliant (young) .. 1 stiff (old)
  pwv90 = 5.5 + 4.0 * stiffness + 0.02 * (sbp0 - 130)  # m/s at MAP 90 mmHg
  gamma = rng.uniform(0.012, 0.022)  # 1/mmHg: PWV = pwv90 * exp(gamma (MAP - 90))
  path_m = rng.uniform(0.8, 1.1)
  pep = rng.uniform(0.06, 0.10)
  ppg_notch = 0.35 * (1 - stiffness)
  ppg_smooth = rng.uniform(0.15, 0.25)
  ppg_noise, ecg_noise = rng.uniform(0.005, 0.03), rng.uniform(0.01, 0.05)

  # Beat times with variability; BP trends sampled at each beat.
  rr = []
  time_s = 0.0
  hr_drift = _smooth_noise(rng, t, 90.0)
  while time_s < t[-1] + 4:
    i = min(int(time_s * FS), n - 1)
    rr.append(60.0 / (hr0 * (1 + 0.06 * hr_drift[i])) * (1 + 0.03 * rng.standard_normal()))
    time_s += rr[-1]
  r_peaks = np.cumsum(rr) - 1.5 - rng.uniform(0, 0.5)  # beats from before t = 0
  slow = 10.0 * _smooth_noise(rng, t, 120.0) + 4.0 * _smooth_noise(rng, t, 25.0)
  resp_f, mayer_f = rng.uniform(0.2, 0.3), rng.uniform(0.08, 0.12)
  sbp_wave = (sbp0 + slow + 3.0 * np.sin(2 * np.pi * resp_f * t)
              + 2.5 * np.sin(2 * np.pi * mayer_f * t + rng.uniform(0, 6)))
  idx = np.clip((r_peaks * FS).astype(int), 0, n - 1)
  sbp = sbp_wave[idx] + rng.normal(0, 1.0, len(idx))
  sbp = np.clip(sbp, 80, 200)
  dbp = np.clip(sbp - pp0 - 0.35 * (sbp - sbp0) + rng.normal(0, 1.0, len(idx)), 40, 110)
  pp = sbp - dbp
  mean_ap = dbp + pp / 3
  pwv = pwv90 * np.exp(gamma * (mean_ap - 90))
  pat = pep + path_m / pwv  # R peak to PPG foot, s

  # Waveforms.
  abp_feet = r_peaks + pep + 0.03
  t_peak = 0.15 + 0.05 * stiffness
  abp = _pulse_train(t, abp_feet, lambda u: _abp_shape(u, t_peak, 0.35, 0.15 * (1 - stiffness)),
                     dbp, pp)
  abp = abp + rng.normal(0, 0.3, n)
  ppg_feet = r_peaks + pat
  ppg = _pulse_train(t, ppg_feet, lambda u: _abp_shape(u, ppg_smooth + 0.1, 0.4, ppg_notch),
                     np.zeros(len(pp)), 0.5 + 0.005 * (pp - 45))
  ppg = (ppg + 0.1 * np.sin(2 * np.pi * resp_f * t + 1.0)
         + 0.05 * _smooth_noise(rng, t, 4.0) + rng.normal(0, ppg_noise, n))
  nearest = np.clip(np.searchsorted(r_peaks, t), 1, len(r_peaks) - 1)
  closest = np.where(np.abs(t - r_peaks[nearest - 1]) < np.abs(t - r_peaks[nearest]),
                     r_peaks[nearest - 1], r_peaks[nearest])
  # Drawn from a stream of its own, so the rest of the subject does not depend on it.
  morphology = np.random.default_rng([config.seed, index, 1]).uniform(0.6, 1.4, (5, 2))
  ecg = (_ecg_beat(t - closest, morphology) + 0.15 * _smooth_noise(rng, t, 3.0)
         + 0.02 * np.sin(2 * np.pi * 50 * t) + rng.normal(0, ecg_noise, n))

  _add_artifacts(rng, t, ecg, ppg, abp, config.artifact_rate)
  rise = np.diff(abp_feet)
  record = Record(record=f'synthetic_{index:04d}', subject=f's{index:04d}', source='synthetic',
                  ecg=ecg[None], ppg=ppg, abp=abp, leads=('II',))
  return record, Beats(foot_s=abp_feet[:-1], peak_s=abp_feet[:-1] + t_peak * rise,
                       sbp=dbp[:-1] + np.diff(dbp) * t_peak + pp[:-1], dbp=dbp[:-1])


def _add_artifacts(rng, t, ecg, ppg, abp, rate):
  """Adds artifacts in place at random times, `rate` per 10 s on average."""
  n = len(t)
  for _ in range(rng.poisson(rate * t[-1] / 10.0)):
    kind = rng.choice(['flat', 'clip', 'flush', 'gap', 'motion'])
    start = int(rng.uniform(0, n - 3 * FS))
    span = slice(start, start + int(rng.uniform(1.5, 3.0) * FS))
    if kind == 'flat':
      ppg[span] = ppg[span.start]
    elif kind == 'clip':  # the PPG amplifier saturates for 10-25 s
      wide = slice(start, min(n, start + int(rng.uniform(10, 25) * FS)))
      ppg[wide] = np.minimum(ppg[wide], np.nanpercentile(ppg[wide], 80))
    elif kind == 'flush':
      abp[span] = 300.0 + rng.normal(0, 2, span.stop - span.start)
    elif kind == 'gap':
      (ecg, ppg, abp)[rng.integers(3)][span] = np.nan
    else:
      ppg[span] += 1.5 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t[span]) + rng.normal(
          0, 0.3, span.stop - span.start)


def cohort(config: CohortConfig):
  """Yields (Record, Beats) for every subject, in order."""
  for index in range(config.num_subjects):
    yield subject(index, config)
