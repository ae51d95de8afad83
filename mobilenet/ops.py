"""Convolution implementations for the model's layers.

Each function returned here has the signature of `jax.lax.conv_general_dilated`
and is handed to `flax.linen.Conv(conv_general_dilated=...)`, so every
implementation uses the same parameters (depthwise kernel (3, 3, 1, C),
pointwise kernel (1, 1, Cin, Cout)) and a checkpoint trained with one
evaluates with another.

Why more than one: XLA:CPU lowers `feature_group_count` convolutions to a slow
generic loop (the depthwise 3x3 and its gradients run 25-100x slower than
PyTorch's), and its 1x1 convolution is slower than the same product written as
a matrix multiply. The `shifted` depthwise path computes exactly the same
function as the grouped convolution with one fused multiply-add per kernel
tap, and its own backward pass (a `jax.custom_vjp`) written the same way; the
`matmul` pointwise path is one `dot_general`. Faster still on CPU, the `ffi`
depthwise path calls a compiled kernel (`mobilenet.cpu_kernels`), built on
first use; `auto` takes it where it builds and `shifted` where it does not. On
GPU/TPU the library convolutions are fast, so `auto` keeps them there.
"""
import dataclasses
import functools
import inspect
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from mobilenet import cpu_kernels, errors

ConvFn = Callable[..., jax.Array]

DEPTHWISE_IMPLS = ("auto", "grouped", "shifted", "ffi")
POINTWISE_IMPLS = ("auto", "conv", "matmul")
STANDARD_IMPLS = ("auto", "conv", "matmul_grad")

_NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                      out_spec=(0, 3, 1, 2))


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def _resolve(field: str, choices: tuple[str, ...], impl: str, *, on_cpu: str,
             elsewhere: str) -> str:
  if impl not in choices:
    raise errors.ConfigError(f"{field} must be one of {', '.join(choices)}; got {impl!r}")
  if impl == "auto":
    return on_cpu if _on_cpu() else elsewhere
  return impl


def resolve_depthwise_impl(impl: str) -> str:
  """The concrete depthwise implementation `impl` stands for on this backend.

  `auto` on CPU is `ffi` where the compiled kernel builds and loads, else `shifted` (after one
  warning that says why); an explicit `ffi` without the kernel is an error.
  """
  resolved = _resolve("depthwise_impl", DEPTHWISE_IMPLS, impl, on_cpu="ffi", elsewhere="grouped")
  if resolved == "ffi" and not cpu_kernels.depthwise_available():
    if impl == "auto":
      return "shifted"
    raise errors.ConfigError("depthwise_impl=ffi needs the compiled CPU kernel, which is unavailable "
                     "(see the warning above); use auto or shifted")
  return resolved


def resolve_pointwise_impl(impl: str) -> str:
  """The concrete pointwise implementation `impl` stands for on this backend."""
  return _resolve("pointwise_impl", POINTWISE_IMPLS, impl, on_cpu="matmul", elsewhere="conv")


def resolve_standard_impl(impl: str) -> str:
  """The concrete implementation of full (ungrouped) 3x3 convolutions on this backend."""
  return _resolve("standard_impl", STANDARD_IMPLS, impl, on_cpu="matmul_grad", elsewhere="conv")


def depthwise_conv_fn(impl: str) -> ConvFn:
  """The depthwise 3x3: `grouped` is lax's feature_group_count conv, `shifted` and `ffi` the
  CPU paths."""
  return {"grouped": lax.conv_general_dilated,
          "shifted": shifted_depthwise_conv,
          "ffi": ffi_depthwise_conv}[resolve_depthwise_impl(impl)]


def pointwise_conv_fn(impl: str) -> ConvFn:
  """The 1x1 conv: `conv` is lax's convolution, `matmul` one dot_general over pixels."""
  return {"conv": lax.conv_general_dilated,
          "matmul": matmul_pointwise_conv}[resolve_pointwise_impl(impl)]


def standard_conv_fn(impl: str = "auto") -> ConvFn:
  """Full 3x3 convs: `conv` is lax both ways; `matmul_grad` takes the kernel gradient from
  one matrix product per tap (the first layer, and every layer of Conv MobileNet)."""
  return {"conv": lax.conv_general_dilated,
          "matmul_grad": matmul_grad_conv}[resolve_standard_impl(impl)]


# ----------------------------------------------------------------------------
# Shared argument handling.


@dataclasses.dataclass(frozen=True)
class _ConvCall:
  """The arguments of one `lax.conv_general_dilated` call, by name, for a fast path to inspect."""
  lhs: jax.Array
  rhs: jax.Array
  window_strides: Sequence[int]
  padding: str | Sequence[tuple[int, int]]
  lhs_dilation: Sequence[int] | None = None
  rhs_dilation: Sequence[int] | None = None
  dimension_numbers: Any = None
  feature_group_count: int = 1
  batch_group_count: int = 1
  precision: Any = None
  preferred_element_type: Any = None

  def is_nhwc_hwio(self) -> bool:
    if self.lhs.ndim != 4 or self.rhs.ndim != 4:
      return False
    numbers = lax.conv_dimension_numbers(self.lhs.shape, self.rhs.shape, self.dimension_numbers)
    return numbers == _NHWC_HWIO

  def is_plain_nhwc(self) -> bool:
    """An NHWC/HWIO conv without dilation or batch groups, in the input's dtype."""
    return (self.is_nhwc_hwio() and _all_ones(self.lhs_dilation)
            and _all_ones(self.rhs_dilation) and self.batch_group_count == 1
            and self.preferred_element_type is None)

  def is_depthwise(self) -> bool:
    """A multiplier-1 depthwise conv: one (H, W, 1) filter per input channel."""
    channels = self.lhs.shape[-1] if self.lhs.ndim == 4 else None
    return (self.is_plain_nhwc() and self.feature_group_count == channels
            and self.rhs.shape[2:] == (1, channels))

  @property
  def strides(self) -> tuple[int, int]:
    return tuple(int(s) for s in self.window_strides)

  @property
  def pads(self) -> tuple:
    """Pairs (before, after) per spatial dim, as lax computes them for 'SAME'/'VALID'."""
    return _explicit_padding(self.padding, self.lhs.shape[1:3], self.rhs.shape[:2],
                             self.strides)


def _falls_back_to(fallback: ConvFn) -> Callable[[Callable[[_ConvCall], Any]], ConvFn]:
  """Makes a drop-in `lax.conv_general_dilated` of a fast path that takes the call's arguments
  as one `_ConvCall` and returns NotImplemented where it does not apply: those calls go, with
  the same arguments, to `fallback`."""
  def decorate(fast_path: Callable[[_ConvCall], Any]) -> ConvFn:
    @functools.wraps(fast_path)
    def conv(*args, **kwargs):
      result = fast_path(_ConvCall(*args, **kwargs))
      return fallback(*args, **kwargs) if result is NotImplemented else result
    conv.__signature__ = inspect.signature(_ConvCall)
    return conv
  return decorate


def _all_ones(values) -> bool:
  return values is None or all(v == 1 for v in values)


def _explicit_padding(padding, in_shape, window_shape, strides) -> tuple:
  """Pairs (before, after) per spatial dim, as lax computes them for 'SAME'/'VALID'."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_shape, window_shape, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


# ----------------------------------------------------------------------------
# Depthwise convolution as shifted multiply-adds.


@_falls_back_to(lax.conv_general_dilated)
def shifted_depthwise_conv(call: _ConvCall):
  """`lax.conv_general_dilated` for depthwise kernels (H, W, 1, C), as fused tap multiply-adds.

  Anything that is not a multiplier-1 depthwise NHWC conv without dilation
  falls through to lax, so the function is a drop-in replacement.
  """
  if not call.is_depthwise():
    return NotImplemented
  return _depthwise(call.lhs, call.rhs, call.strides, call.pads)


def _tap(array, start_h, start_w, out_h, out_w, strides):
  """array[:, start_h::sh][:out_h], likewise along W: the pixels one kernel tap sees."""
  stride_h, stride_w = strides
  return lax.slice(
      array, (0, start_h, start_w, 0),
      (array.shape[0], start_h + (out_h - 1) * stride_h + 1,
       start_w + (out_w - 1) * stride_w + 1, array.shape[3]),
      (1, stride_h, stride_w, 1))


def _pad_spatial(array, pads_h, pads_w, interior=(0, 0)):
  zero = jnp.zeros((), array.dtype)
  return lax.pad(array, zero, ((0, 0, 0), (*pads_h, interior[0]), (*pads_w, interior[1]),
                               (0, 0, 0)))


def _accumulation_dtype(dtype):
  # Sums of bfloat16 products are kept in float32, as the library convolutions do.
  return jnp.promote_types(dtype, jnp.float32)


def _depthwise_forward(padded, kernel, strides):
  """The depthwise conv of an already padded input, one multiply-add per tap."""
  kernel_h, kernel_w = kernel.shape[:2]
  out_h = (padded.shape[1] - kernel_h) // strides[0] + 1
  out_w = (padded.shape[2] - kernel_w) // strides[1] + 1
  acc_dtype = _accumulation_dtype(padded.dtype)
  out = None
  for i in range(kernel_h):
    for j in range(kernel_w):
      term = (_tap(padded, i, j, out_h, out_w, strides).astype(acc_dtype)
              * kernel[i, j, 0].astype(acc_dtype))
      out = term if out is None else out + term
  return out.astype(padded.dtype)


def _depthwise_input_grad(dy, kernel, strides, pads, in_h, in_w):
  """d loss/d x: dy scattered back through each tap, as phase-wise multiply-adds.

  Input pixel p (in padded coordinates) gets dy[o] * w[i] for every o*s + i = p.
  Splitting p by p mod s leaves, per phase, a dense stride-1 correlation over
  the taps of that phase; the phases are interleaved at the end. For stride 1
  this is the correlation with the flipped kernel.
  """
  kernel_h, kernel_w = kernel.shape[:2]
  stride_h, stride_w = strides
  batch, out_h, out_w, channels = dy.shape
  acc_dtype = _accumulation_dtype(dy.dtype)
  padded_h = in_h + pads[0][0] + pads[0][1]
  padded_w = in_w + pads[1][0] + pads[1][1]
  phase_h = -(-padded_h // stride_h)
  phase_w = -(-padded_w // stride_w)
  reach_h = -(-kernel_h // stride_h)  # taps per phase, at most
  reach_w = -(-kernel_w // stride_w)
  # dy_p[q + reach - 1 - m] = dy[q - m]; zero outside.
  dy_padded = _pad_spatial(
      dy, (reach_h - 1, phase_h - out_h), (reach_w - 1, phase_w - out_w))
  phase_rows = []
  for r_h in range(stride_h):
    phase_cols = []
    for r_w in range(stride_w):
      acc = None
      for m in range(reach_h):
        i = r_h + m * stride_h
        if i >= kernel_h:
          continue
        for l in range(reach_w):
          j = r_w + l * stride_w
          if j >= kernel_w:
            continue
          shifted = lax.slice(dy_padded, (0, reach_h - 1 - m, reach_w - 1 - l, 0),
                              (batch, reach_h - 1 - m + phase_h, reach_w - 1 - l + phase_w,
                               channels))
          term = shifted.astype(acc_dtype) * kernel[i, j, 0].astype(acc_dtype)
          acc = term if acc is None else acc + term
      if acc is None:  # a phase no tap reaches (stride > kernel size)
        acc = jnp.zeros((batch, phase_h, phase_w, channels), acc_dtype)
      phase_cols.append(acc)
    phase_rows.append(phase_cols)
  if stride_h == 1 and stride_w == 1:
    full = phase_rows[0][0]
  else:
    full = jnp.stack([jnp.stack(cols, axis=3) for cols in phase_rows], axis=2)
    full = full.reshape(batch, phase_h * stride_h, phase_w * stride_w, channels)
  # Back from padded coordinates to the input's (negative pads were crops).
  full = _pad_spatial(full, (-pads[0][0], padded_h - phase_h * stride_h - pads[0][1]),
                      (-pads[1][0], padded_w - phase_w * stride_w - pads[1][1]))
  return full.astype(dy.dtype)


# Images summed by explicit adds in one fused loop of the kernel gradient: more
# is faster (the loop reads each input once per tap) but compiles slower.
_KERNEL_GRAD_IMAGES_PER_LOOP = 32


def _depthwise_kernel_grad(padded, dy, kernel_shape, strides):
  """d loss/d kernel: per tap, the sum over batch and pixels of input tap * dy.

  XLA:CPU copies a shifted slice out before a library reduction, so reducing
  tap * dy directly costs a copy per tap. Summing a tap's products over images
  as explicit adds keeps the slices inside one elementwise loop that reads the
  inputs once (1.3-1.5x faster per layer, ~9% per training step, at the price
  of compile time); the small partial sums then reduce cheaply.

  The batch is split as [groups, images per group] and only the inner axis is
  sliced: when the batch is sharded across devices, the shards then stay whole
  in the outer axis and the final sum is one all-reduce. Slicing single images
  of a sharded batch made the SPMD partitioner move them between devices with
  thousands of collective-permutes, which could deadlock XLA:CPU.
  """
  kernel_h, kernel_w = kernel_shape[:2]
  batch, out_h, out_w, channels = dy.shape
  acc_dtype = _accumulation_dtype(padded.dtype)
  per_group = _images_per_group(batch)
  grouped = lambda a: a.reshape(batch // per_group, per_group, *a.shape[1:])
  dy = grouped(dy)
  taps = []
  for i in range(kernel_h):
    for j in range(kernel_w):
      window = grouped(_tap(padded, i, j, out_h, out_w, strides))
      total = None
      for image in range(per_group):
        term = window[:, image].astype(acc_dtype) * dy[:, image].astype(acc_dtype)
        total = term if total is None else total + term
      taps.append(total)
  return jnp.sum(jnp.stack(taps), axis=(1, 2, 3)).reshape(kernel_shape)


def _images_per_group(batch: int) -> int:
  """Images per group such that every device's share of the batch is whole groups.

  The device count bounds how many shards any mesh can split the batch into, so
  a group size that divides batch / device_count keeps every shard aligned.
  """
  devices = jax.device_count()
  if batch % devices == 0:
    return _largest_divisor_at_most(batch // devices, _KERNEL_GRAD_IMAGES_PER_LOOP)
  return _largest_divisor_at_most(batch, _KERNEL_GRAD_IMAGES_PER_LOOP)


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x, kernel, strides, pads):
  return _depthwise_forward(_pad_spatial(x, *pads), kernel, strides)


def _depthwise_fwd(x, kernel, strides, pads):
  # The padded input is what the forward pass reads anyway; keeping it (rather
  # than x) saves the backward pass a second padded copy.
  padded = _pad_spatial(x, *pads)
  return _depthwise_forward(padded, kernel, strides), (padded, kernel)


def _depthwise_bwd(strides, pads, residuals, dy):
  padded, kernel = residuals
  in_h = padded.shape[1] - pads[0][0] - pads[0][1]
  in_w = padded.shape[2] - pads[1][0] - pads[1][1]
  dx = _depthwise_input_grad(dy, kernel, strides, pads, in_h, in_w)
  dkernel = _depthwise_kernel_grad(padded, dy, kernel.shape, strides)
  return dx, dkernel.astype(kernel.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


# ----------------------------------------------------------------------------
# Depthwise convolution as a compiled custom call.


@_falls_back_to(shifted_depthwise_conv)
def ffi_depthwise_conv(call: _ConvCall):
  """`lax.conv_general_dilated` for float32 depthwise 3x3 kernels (3, 3, 1, C), as the compiled
  CPU kernel of `mobilenet.cpu_kernels`, forward and backward.

  The kernel is float32 only: other dtypes (a bfloat16 model), other kernel sizes and pads
  beyond 2 go to `shifted_depthwise_conv`, which passes anything but a depthwise conv on to lax.
  """
  supported = (call.is_depthwise() and call.rhs.shape[:2] == (3, 3)
               and call.lhs.dtype == call.rhs.dtype == jnp.float32
               and all(0 <= p <= 2 for pair in call.pads for p in pair))
  if not supported:
    return NotImplemented
  return _ffi_depthwise(call.lhs, call.rhs, call.strides, call.pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _ffi_depthwise(x, kernel, strides, pads):
  return cpu_kernels.depthwise3x3_forward(x, kernel, strides, pads)


def _ffi_depthwise_fwd(x, kernel, strides, pads):
  return cpu_kernels.depthwise3x3_forward(x, kernel, strides, pads), (x, kernel)


def _ffi_depthwise_bwd(strides, pads, residuals, dy):
  x, kernel = residuals
  dx, dkernel_per_image = cpu_kernels.depthwise3x3_backward(x, kernel, dy, strides, pads)
  return dx, jnp.sum(dkernel_per_image, axis=0)


_ffi_depthwise.defvjp(_ffi_depthwise_fwd, _ffi_depthwise_bwd)


# ----------------------------------------------------------------------------
# Pointwise convolution as a matrix product.


@_falls_back_to(lax.conv_general_dilated)
def matmul_pointwise_conv(call: _ConvCall):
  """`lax.conv_general_dilated` for 1x1 kernels, as [N*H*W, Cin] x [Cin, Cout].

  Anything else (grouped, dilated, non-NHWC, larger kernels) falls through to lax.
  """
  supported = (
      call.is_nhwc_hwio() and call.rhs.shape[:2] == (1, 1) and _all_ones(call.lhs_dilation)
      and call.feature_group_count == 1 and call.batch_group_count == 1)
  if not supported:
    return NotImplemented
  strides, pads = call.strides, call.pads
  x = call.lhs
  if any(p != (0, 0) for p in pads):
    x = _pad_spatial(x, *pads)
  if strides != (1, 1):
    x = x[:, ::strides[0], ::strides[1], :]
  kernel = call.rhs[0, 0]
  if call.preferred_element_type is not None:
    return lax.dot_general(x, kernel, (((3,), (0,)), ((), ())), precision=call.precision,
                           preferred_element_type=call.preferred_element_type)
  return _pixel_matmul(x, kernel, call.precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pixel_matmul(x, kernel, precision):
  """x [N, H, W, Cin] times kernel [Cin, Cout], as one [N*H*W, Cin] x [Cin, Cout] product."""
  return lax.dot_general(x, kernel, (((3,), (0,)), ((), ())), precision=precision)


def _pixel_matmul_fwd(x, kernel, precision):
  return _pixel_matmul(x, kernel, precision), (x, kernel)


def _pixel_matmul_bwd(precision, residuals, dy):
  """dx = dy kernel^T; dkernel = x^T dy with x^T materialised.

  XLA:CPU hands a product whose left operand is contracted on its major
  dimension to a slower Eigen kernel, and lays dy out transposed for it (a copy
  of the larger array); transposing x explicitly (the barrier keeps XLA from
  folding it back into the product) lets both products run in the library
  matmul with dy in its natural layout.
  """
  x, kernel = residuals
  in_channels, out_channels = kernel.shape
  dx = lax.dot_general(dy, kernel, (((3,), (1,)), ((), ())), precision=precision)
  x_t = lax.optimization_barrier(jnp.transpose(x.reshape(-1, in_channels)))
  dkernel = lax.dot_general(x_t, dy.reshape(-1, out_channels), (((1,), (0,)), ((), ())),
                            precision=precision)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_pixel_matmul.defvjp(_pixel_matmul_fwd, _pixel_matmul_bwd)


# ----------------------------------------------------------------------------
# Full convolution with its kernel gradient as matrix products.


@_falls_back_to(lax.conv_general_dilated)
def matmul_grad_conv(call: _ConvCall):
  """`lax.conv_general_dilated`, whose kernel gradient is one [Cin, N*H*W] x [N*H*W, Cout]
  product per kernel tap.

  XLA:CPU computes a 3x3 conv and its input gradient well, but its kernel gradient
  (a convolution over the batch) 7-15x slower than the same sum written as products
  of shifted slices. Grouped, dilated or non-NHWC convs fall through to lax.
  """
  if not (call.feature_group_count == 1 and call.is_plain_nhwc()):
    return NotImplemented
  return _conv_matmul_kernel_grad(call.lhs, call.rhs, call.strides, call.pads, call.precision)


def _lax_conv(x, kernel, strides, pads, precision):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC_HWIO,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_matmul_kernel_grad(x, kernel, strides, pads, precision):
  return _lax_conv(x, kernel, strides, pads, precision)


def _conv_matmul_kernel_grad_fwd(x, kernel, strides, pads, precision):
  return _lax_conv(x, kernel, strides, pads, precision), (x, kernel)


def _conv_matmul_kernel_grad_bwd(strides, pads, precision, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _lax_conv(x, kernel, strides, pads, precision), x)
  dx, = input_vjp(dy)
  padded = _pad_spatial(x, *pads)
  kernel_h, kernel_w = kernel.shape[:2]
  out_h, out_w = dy.shape[1:3]
  acc_dtype = _accumulation_dtype(x.dtype)
  batch_and_pixels = ((0, 1, 2), (0, 1, 2))
  taps = [lax.dot_general(_tap(padded, i, j, out_h, out_w, strides), dy,
                          (batch_and_pixels, ((), ())), precision=precision,
                          preferred_element_type=acc_dtype)
          for i in range(kernel_h) for j in range(kernel_w)]
  dkernel = jnp.stack(taps).reshape(kernel.shape)
  return dx, dkernel.astype(kernel.dtype)


_conv_matmul_kernel_grad.defvjp(_conv_matmul_kernel_grad_fwd, _conv_matmul_kernel_grad_bwd)
