"""A windowing job: its units of work, the pure function run on each, and what is kept.

A source's job (`prepare.window_job`) lists its units of work up front from names alone
(records of MIMIC-III / VitalDB / the synthetic cohort, blocks of PulseDB's files), with
the split each unit's windows go to when it is decided by subject. `process(unit)` reads,
judges and splits one unit; it never raises: a unit that cannot be used comes back with
its `failure`. Its result offers

  examples()     (split, key, example) of each accepted window: the dataset's features
  verdicts()     (reject reason or '', split or '', subject) of every candidate window
  report_rows()  windows.csv rows (windows.REPORT_COLUMNS) of every candidate window

input_pipeline/beam_prepare.py maps `process` over the units with Apache Beam and merges
their `Summary`s; `summarise` turns the merged Summary into summary.json, checking there
that no subject has windows in two splits where the protocol keeps subjects apart.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Sequence

from input_pipeline import splits


@dataclasses.dataclass(frozen=True)
class WindowJob:
  """What beam_prepare runs: units of work and the functions of them (picklable)."""
  units: Sequence[Any]  # each with .index (report order) and .name
  process: Callable[[Any], Any]  # unit -> result (see the module docstring)
  summarise: Callable[['Summary'], dict]  # merged Summary -> summary.json's content
  split_names: tuple[str, ...]  # every split a window can land in
  unit: str  # what a unit is, for progress bars ('record', 'block')


@dataclasses.dataclass
class Summary:
  """Counts over units of work, mergeable (a Beam combiner's accumulator)."""
  units_read: int = 0
  failures: list = dataclasses.field(default_factory=list)  # (unit index, name, reason)
  candidates: int = 0
  rejects: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  windows: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  # split -> {subject: accepted windows}
  subject_windows: dict = dataclasses.field(default_factory=dict)

  def add(self, result) -> 'Summary':
    if result.failure:
      self.failures.append((result.task.index, result.task.name, result.failure))
      return self
    self.units_read += 1
    for reject, split, subject in result.verdicts():
      self.candidates += 1
      if reject:
        self.rejects[reject] += 1
      if split:
        self.windows[split] += 1
        self.subject_windows.setdefault(split, collections.Counter())[subject] += 1
    return self

  def merge(self, other: 'Summary') -> 'Summary':
    self.units_read += other.units_read
    self.failures += other.failures
    self.candidates += other.candidates
    self.rejects += other.rejects
    self.windows += other.windows
    for split, counts in other.subject_windows.items():
      self.subject_windows.setdefault(split, collections.Counter()).update(counts)
    return self

  def subjects(self, split: str) -> set[str]:
    """The subjects with accepted windows in `split`."""
    return set(self.subject_windows.get(split, ()))

  def to_dict(self, options, split_names: Sequence[str], reject_reasons: Sequence[str]) -> dict:
    """summary.json's common keys (options: prepare.PrepareOptions); under the subject
    protocol, checks that no subject is in two splits (splits.SubjectLeakError)."""
    if options.protocol == 'subject':
      splits.check_disjoint({name: self.subjects(name) for name in split_names})
    return {
        'source': options.source, 'input_dir': options.input_dir,
        'protocol': options.protocol, 'fractions': list(options.fractions),
        'seed': options.seed,
        'records_read': self.units_read, 'records_failed': len(self.failures),
        'failures': [{'record': name, 'reason': why} for _, name, why in sorted(self.failures)],
        'candidate_windows': self.candidates, 'windows_kept': sum(self.windows.values()),
        'rejects': {reason: self.rejects.get(reason, 0) for reason in reject_reasons},
        'splits': {name: {'windows': self.windows.get(name, 0),
                          'subjects': len(self.subject_windows.get(name, ()))}
                   for name in split_names},
    }


def total(results) -> Summary:
  """The Summary of results computed in this process (`job.summarise` of it: summary.json)."""
  summary = Summary()
  for result in results:
    summary.add(result)
  return summary
