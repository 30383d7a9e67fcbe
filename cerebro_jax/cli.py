"""Shared start-up of the command-line tools."""

from absl import app, flags, logging


def run(main) -> None:
  """`absl.app.run(main)`, with library logging (orbax, tf) at WARNING unless -v is given."""

  def quiet_main(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    return main(argv)

  app.run(quiet_main)


def define_calibration_flags(when: str, default_data: str = ''):
  """--calibration_data and --calibration_windows of the tools that calibrate static INT8;
  `when` says when they apply (e.g. 'static_int8'); default_data names the fallback of
  an empty --calibration_data. Returns the two flag holders."""
  fallback = f' (default: {default_data})' if default_data else ''
  data = flags.DEFINE_string(
      'calibration_data', '', f'{when}: prepared dataset (scripts/prepare_data.py, or a '
      f'training workdir\'s data/) whose training split gives the calibration '
      f'windows{fallback}.')
  windows = flags.DEFINE_integer(
      'calibration_windows', 512, f'{when}: number of calibration windows, evenly spaced '
      'over the training split.', lower_bound=1)
  return data, windows
