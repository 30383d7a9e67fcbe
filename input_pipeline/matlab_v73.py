"""MATLAB v7.3 files (HDF5 with MATLAB's conventions): reading with h5py, and writing the
subset of the layout that PulseDB uses (for test files and benchmarks).

MATLAB's layout, as h5py sees it:
- a 512-byte user block holding the text header 'MATLAB 7.3 MAT-file, ...';
- dimensions reversed: a MATLAB [a b c] array is an (c, b, a) dataset, an N x 1 column
  is (1, N);
- every variable has the attribute MATLAB_class ('double', 'char', 'cell', 'struct', ...);
  'char' is uint16 UTF-16 code units of shape (k, 1) with MATLAB_int_decode=2;
- cells and the fields of struct arrays are datasets of object references into the
  hidden group '/#refs#';
- a 1 x 1 struct is a group whose fields are its members (MATLAB_fields keeps their
  order); an N x 1 struct array is a group with one (1, N) reference dataset per field;
- an empty array is the uint64 array of its dimensions with MATLAB_empty=1: never data.
"""

from __future__ import annotations

import datetime
import itertools

import h5py
import numpy as np

HEADER_BYTES = 512
_METADATA_CACHE_BYTES = 4 << 20
_REFS = '#refs#'


class MatFileError(ValueError):
  """A file that is not a MATLAB v7.3 file, or lacks what the reader expects."""


def open_file(path: str) -> h5py.File:
  """Opens a MATLAB v7.3 file read-only, or raises MatFileError saying what it is not."""
  if not h5py.is_hdf5(path):
    with open(path, 'rb') as f:
      head = f.read(128)
    what = ('a MATLAB file older than v7.3 (save it with -v7.3, or read it with '
            'scipy.io.loadmat)' if head.startswith(b'MATLAB 5.0') else 'not an HDF5 file')
    raise MatFileError(f'{path}: not a MATLAB v7.3 file: {what}, or truncated')
  try:
    file = h5py.File(path, 'r')
  except OSError as e:
    raise MatFileError(f'{path}: cannot open as HDF5 ({e})') from e
  # Every cell element is an HDF5 object of its own; HDF5 keeps the headers it has read
  # (about 5 kB of memory per string read, 500 MB for 100,000 subject keys) unless its
  # metadata cache is kept small: then memory stays flat whatever the number of cells.
  config = file.id.get_mdc_config()
  config.set_initial_size, config.initial_size = True, _METADATA_CACHE_BYTES // 4
  config.min_size, config.max_size = _METADATA_CACHE_BYTES // 4, _METADATA_CACHE_BYTES
  file.id.set_mdc_config(config)
  return file


def matlab_class(obj) -> str:
  """The MATLAB_class attribute ('' when absent)."""
  value = obj.attrs.get('MATLAB_class', b'')
  return value.decode() if isinstance(value, bytes) else str(value)


def is_empty(obj) -> bool:
  """True for MATLAB's stored empties (a dims array tagged MATLAB_empty)."""
  return bool(obj.attrs.get('MATLAB_empty', 0))


def read_string(dataset) -> str:
  """A 'char' dataset (uint16 code units) as text; '' for an empty char array."""
  if is_empty(dataset):
    return ''
  return ''.join(map(chr, np.asarray(dataset[()]).ravel()))


def read_column(dataset, length: int, name: str, start: int = 0,
                stop: int | None = None) -> np.ndarray:
  """Values start..stop of an N x 1 (or 1 x N) numeric MATLAB array of N = `length`
  values, as a (stop - start,) float64 array (all of them by default).

  Raises MatFileError when it is empty or does not hold `length` values.
  """
  if is_empty(dataset):
    raise MatFileError(f'{name} is empty')
  if dataset.ndim != 2 or 1 not in dataset.shape or dataset.size != length:
    raise MatFileError(f'{name} has shape {dataset.shape} in h5py, expected (1, {length}) '
                       f'(MATLAB {length} x 1)')
  return np.asarray(column_values(dataset, start, length if stop is None else stop),
                    np.float64)


def column_values(dataset, start: int, stop: int) -> np.ndarray:
  """Elements start..stop of an N x 1 or 1 x N MATLAB array (numbers or references), as
  stored, without reading the rest."""
  return np.asarray(dataset[0, start:stop] if dataset.shape[0] == 1 else
                    dataset[start:stop, 0]).ravel()


def read_strings(file: h5py.File, refs, name: str) -> list[str]:
  """The 'char' arrays that references point to (a cell of strings), as strings.

  refs: an h5py dataset of references, or an array of them. Uses h5py's low-level calls:
  about 10x faster than file[ref] per string, which matters for a million cells.
  """
  refs = np.asarray(refs[()] if isinstance(refs, h5py.Dataset) else refs)
  if refs.dtype != h5py.ref_dtype:
    raise MatFileError(f'{name} is not a cell array (dtype {refs.dtype})')
  strings = []
  for ref in refs.ravel():
    item = h5py.h5r.dereference(ref, file.id)
    if h5py.h5a.exists(item, b'MATLAB_empty'):
      strings.append('')
      continue
    codes = np.empty(item.shape, item.dtype)
    item.read(h5py.h5s.ALL, h5py.h5s.ALL, codes)
    strings.append(''.join(map(chr, codes.ravel())))
  return strings


# ----------------------------------------------------------------------------- writing


def _header() -> bytes:
  now = datetime.datetime.now(datetime.timezone.utc).strftime('%a %b %d %H:%M:%S %Y')
  text = f'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {now} HDF5 schema 1.00 .'
  return text.encode().ljust(116) + b'\0' * 8 + b'\x00\x02IM'


class Writer:
  """Writes a MATLAB v7.3 file with h5py: numeric arrays, strings, cells, 1 x 1 structs
  and N x 1 struct arrays, in MATLAB's layout (used by the tests and benchmarks).

    with matlab_v73.Writer(path) as w:
      w.struct(w.root, 'Subset', {'SBP': sbp[:, None], 'Subject': w.cell(['p1_0', ...])})
  """

  def __init__(self, path: str):
    self.path = path
    self.file = h5py.File(path, 'w', userblock_size=HEADER_BYTES, libver='earliest')
    self.refs = self.file.create_group(_REFS)
    self._names = (''.join(p) for n in itertools.count(1)
                   for p in itertools.product('abcdefghijklmnopqrstuvwxyz', repeat=n))

  @property
  def root(self) -> h5py.Group:
    return self.file

  def __enter__(self) -> 'Writer':
    return self

  def __exit__(self, *exc) -> None:
    self.file.close()
    with open(self.path, 'r+b') as f:
      f.write(_header())

  def array(self, parent: h5py.Group, name: str, value, **dataset_options) -> h5py.Dataset:
    """A numeric MATLAB array given in MATLAB's dimension order (stored reversed)."""
    value = np.asarray(value)
    if value.size == 0:
      return self.empty(parent, name, value.shape or (0, 0))
    value = np.atleast_2d(value)
    ds = parent.create_dataset(name, data=value.T, **dataset_options)
    ds.attrs['MATLAB_class'] = np.bytes_(
        {'f': 'double' if value.dtype == np.float64 else 'single', 'u': 'uint16',
         'i': 'int32', 'b': 'logical'}[value.dtype.kind])
    return ds

  def empty(self, parent: h5py.Group, name: str, shape=(0, 0), klass='double') -> h5py.Dataset:
    ds = parent.create_dataset(name, data=np.asarray(shape, np.uint64))
    ds.attrs['MATLAB_class'] = np.bytes_(klass)
    ds.attrs['MATLAB_empty'] = np.uint8(1)
    return ds

  def string(self, parent: h5py.Group, name: str, text: str) -> h5py.Dataset:
    if not text:
      return self.empty(parent, name, (0, 0), 'char')
    ds = parent.create_dataset(name, data=np.array([[ord(c)] for c in text], np.uint16))
    ds.attrs['MATLAB_class'] = np.bytes_('char')
    ds.attrs['MATLAB_int_decode'] = np.int32(2)
    return ds

  def _ref_to(self, value) -> h5py.Reference:
    """Stores `value` (str, None = empty double, or array in MATLAB order) in #refs#."""
    name = next(self._names)
    if isinstance(value, str):
      return self.string(self.refs, name, value).ref
    if value is None:
      return self.empty(self.refs, name).ref
    return self.array(self.refs, name, value).ref

  def _refs(self, parent, name, values, klass: str | None) -> h5py.Dataset:
    refs = np.array([[self._ref_to(v) for v in values]], dtype=h5py.ref_dtype)
    ds = parent.create_dataset(name, data=refs)
    if klass:
      ds.attrs['MATLAB_class'] = np.bytes_(klass)
    return ds

  def cell(self, values):
    """An N x 1 cell (strings, arrays, or None for empties), for `struct` fields."""
    return ('cell', list(values))

  def unfilled(self, shape, **dataset_options):
    """A double array of MATLAB size `shape`, for `struct` fields, to be filled in blocks
    afterwards (as group[field][...] in h5py's reversed order)."""
    return ('unfilled', tuple(shape), dataset_options)

  def struct(self, parent: h5py.Group, name: str, fields: dict, **dataset_options):
    """A 1 x 1 struct: numeric fields (MATLAB order), strings, `cell(...)` or
    `unfilled(...)` values."""
    group = self._struct_group(parent, name, fields)
    for field, value in fields.items():
      if isinstance(value, tuple) and value[:1] == ('cell',):
        self._refs(group, field, value[1], 'cell')
      elif isinstance(value, tuple) and value[:1] == ('unfilled',):
        ds = group.create_dataset(field, shape=value[1][::-1], dtype=np.float64, **value[2])
        ds.attrs['MATLAB_class'] = np.bytes_('double')
      elif isinstance(value, str):
        self.string(group, field, value)
      else:
        self.array(group, field, value, **dataset_options)
    return group

  def struct_array(self, parent: h5py.Group, name: str, fields: dict[str, list]):
    """An N x 1 struct array: each field a list of N values (str, None or array)."""
    group = self._struct_group(parent, name, fields)
    for field, values in fields.items():
      self._refs(group, field, values, None)
    return group

  @staticmethod
  def _struct_group(parent, name, fields) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs['MATLAB_class'] = np.bytes_('struct')
    field_names = np.empty(len(fields), dtype=h5py.vlen_dtype(np.dtype('S1')))
    for i, field in enumerate(fields):
      field_names[i] = np.frombuffer(field.encode(), 'S1')
    group.attrs.create('MATLAB_fields', field_names)
    return group
