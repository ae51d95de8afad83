"""The depthwise 3x3 on CPU: shifted multiply-adds with their own backward pass, and the
compiled kernel of `mobilenet.cpu_kernels` (both compute lax's grouped convolution)."""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from mobilenet import cpu_kernels
from mobilenet.ops.call import (ConvCall, accumulation_dtype, falls_back_to, pad_spatial, tap)


# ----------------------------------------------------------------------------
# Depthwise convolution as shifted multiply-adds.


@falls_back_to(lax.conv_general_dilated)
def shifted_depthwise_conv(call: ConvCall):
  """`lax.conv_general_dilated` for depthwise kernels (H, W, 1, C), as fused tap multiply-adds.

  Anything that is not a multiplier-1 depthwise NHWC conv without dilation
  falls through to lax, so the function is a drop-in replacement.
  """
  if not call.is_depthwise():
    return NotImplemented
  return _depthwise(call.lhs, call.rhs, call.strides, call.pads)


def _depthwise_forward(padded, kernel, strides):
  """The depthwise conv of an already padded input, one multiply-add per tap."""
  kernel_h, kernel_w = kernel.shape[:2]
  out_h = (padded.shape[1] - kernel_h) // strides[0] + 1
  out_w = (padded.shape[2] - kernel_w) // strides[1] + 1
  acc_dtype = accumulation_dtype(padded.dtype)
  out = None
  for i in range(kernel_h):
    for j in range(kernel_w):
      term = (tap(padded, i, j, out_h, out_w, strides).astype(acc_dtype)
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
  acc_dtype = accumulation_dtype(dy.dtype)
  padded_h = in_h + pads[0][0] + pads[0][1]
  padded_w = in_w + pads[1][0] + pads[1][1]
  phase_h = -(-padded_h // stride_h)
  phase_w = -(-padded_w // stride_w)
  reach_h = -(-kernel_h // stride_h)  # taps per phase, at most
  reach_w = -(-kernel_w // stride_w)
  # dy_p[q + reach - 1 - m] = dy[q - m]; zero outside.
  dy_padded = pad_spatial(
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
  full = pad_spatial(full, (-pads[0][0], padded_h - phase_h * stride_h - pads[0][1]),
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
  acc_dtype = accumulation_dtype(padded.dtype)
  per_group = _images_per_group(batch)
  grouped = lambda a: a.reshape(batch // per_group, per_group, *a.shape[1:])
  dy = grouped(dy)
  taps = []
  for i in range(kernel_h):
    for j in range(kernel_w):
      window = grouped(tap(padded, i, j, out_h, out_w, strides))
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
  return _depthwise_forward(pad_spatial(x, *pads), kernel, strides)


def _depthwise_fwd(x, kernel, strides, pads):
  # The padded input is what the forward pass reads anyway; keeping it (rather
  # than x) saves the backward pass a second padded copy.
  padded = pad_spatial(x, *pads)
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


@falls_back_to(shifted_depthwise_conv)
def ffi_depthwise_conv(call: ConvCall):
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
