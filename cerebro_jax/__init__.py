"""CEReBrO for blood-pressure estimation in JAX/Flax: model, conversion, prediction."""

import os as _os


def _prefer_xla_fusions_on_cpu() -> None:
  """Turns off XLA's YNNPACK fusions on the CPU backend for jaxlib 0.10 (measured with
  this model: inference 1.3x, training 1.1x faster; docs/benchmarks.md), unless XLA_FLAGS
  already says otherwise. Only for jaxlib 0.10.x, where the flag is known to exist: XLA
  aborts on flags it does not know. Takes effect if set before JAX's CPU client starts."""
  flag = '--xla_cpu_experimental_ynn_fusion_type'
  try:
    from jaxlib import version  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  current = _os.environ.get('XLA_FLAGS', '')
  if version.__version__.startswith('0.10.') and flag not in current:
    _os.environ['XLA_FLAGS'] = f'{current} {flag}='.strip()


_prefer_xla_fusions_on_cpu()
