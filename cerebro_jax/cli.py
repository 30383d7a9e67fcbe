"""Shared start-up of the command-line tools."""

from absl import app, flags, logging

from cerebro_jax.models.model_config import HEADS, SIZES, ModelConfig


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


def define_model_flags(size_default: str | None, size_help: str, head_default: str,
                       head_help: str):
  """--size (required when size_default is None), --depth and --head of the tools that
  build a model configuration. Returns a function giving the ModelConfig they name."""
  size = flags.DEFINE_enum('size', size_default, sorted(SIZES), size_help,
                           required=size_default is None)
  depth = flags.DEFINE_integer('depth', None, 'Override the number of blocks of --size '
                               '(for truncated or custom models); default: the size\'s depth.')
  head = flags.DEFINE_enum('head', head_default, HEADS, head_help)

  def model_config() -> ModelConfig:
    overrides = {'head': head.value}
    if depth.value is not None:
      overrides['depth'] = depth.value
    return ModelConfig.from_size(size.value, **overrides)

  return model_config
