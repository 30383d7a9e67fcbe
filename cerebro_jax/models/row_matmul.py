"""The Dense layers' product (nn.Dense's `dot_general`), taken over rows.

`rows_dot` multiplies (..., in) inputs by an (in, out) kernel as one (rows, in) x
(in, out) matmul: the same outputs as nn.Dense's product, but the kernel's gradient is
one plain matmul. On (B, C, P, D) tokens the product contracts three axes, and XLA's CPU
backend then copied the output gradient transposed into a slower matmul
(docs/benchmarks.md).

On a CPU a narrowing kernel (in > out: the MLP's fc2, 768 -> 192 in CEReBrO small) gets
its gradient as (g^T x)^T: the (out, in) product, then a transpose of the small result.
XLA's Eigen kernels ran the (768, 192) product x^T g at 88 GFLOP/s and the (192, 768) one
at 127; the train step of CEReBrO small on 2 cores (batch 64 in 2 parts) took 0-2 %
less time (docs/benchmarks.md). Same gradient, other rounding order.
"""

from __future__ import annotations

import functools

import jax

_ROWS_BY_KERNEL = (((1,), (0,)), ((), ()))  # (rows, in) x (in, out) -> (rows, out)


def rows_dot(inputs, kernel, dimension_numbers, precision=None):
  """nn.Dense's product of (..., in) inputs and an (in, out) kernel -> (..., out)."""
  assert dimension_numbers == (((inputs.ndim - 1,), (0,)), ((), ()))
  rows = inputs.reshape(-1, inputs.shape[-1])
  if kernel.shape[0] > kernel.shape[1] and jax.default_backend() == 'cpu':
    product = _narrowing_matmul(rows, kernel, precision)
  else:
    product = jax.lax.dot_general(rows, kernel, _ROWS_BY_KERNEL, precision=precision)
  return product.reshape(*inputs.shape[:-1], kernel.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _narrowing_matmul(rows, kernel, precision):
  """(rows, in) x (in, out) whose kernel gradient is computed as (out, in), transposed."""
  return jax.lax.dot_general(rows, kernel, _ROWS_BY_KERNEL, precision=precision)


def _narrowing_matmul_forward(rows, kernel, precision):
  return _narrowing_matmul(rows, kernel, precision), (rows, kernel)


def _narrowing_matmul_backward(precision, residuals, cotangent):
  rows, kernel = residuals
  rows_grad = jax.lax.dot_general(cotangent, kernel, (((1,), (1,)), ((), ())),
                                  precision=precision)
  # The rows' axis may be sharded over a mesh: the contraction over it is then summed
  # over devices into the kernel's (transposed) sharding.
  kernel_grad_t = jax.lax.dot_general(cotangent, rows, (((0,), (0,)), ((), ())),
                                      precision=precision,
                                      out_sharding=_transposed_sharding(kernel))
  # The barrier keeps XLA from folding the transpose back into the product.
  return rows_grad, jax.lax.optimization_barrier(kernel_grad_t).T


_narrowing_matmul.defvjp(_narrowing_matmul_forward, _narrowing_matmul_backward)


def _transposed_sharding(matrix):
  """The sharding of `matrix`'s transpose where it is traced with a mesh, else None."""
  sharding = jax.typeof(matrix).sharding
  if getattr(sharding, 'mesh', None) is None or sharding.mesh.empty:
    return None
  spec = tuple(sharding.spec) + (None,) * (matrix.ndim - len(sharding.spec))
  return sharding.update(spec=sharding.spec.update(partitions=tuple(reversed(spec))))
