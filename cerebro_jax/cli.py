"""Shared start-up of the command-line tools."""

from absl import app, flags, logging


def run(main) -> None:
  """`absl.app.run(main)`, with library logging (orbax, tf) at WARNING unless -v is given."""

  def quiet_main(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    return main(argv)

  app.run(quiet_main)
