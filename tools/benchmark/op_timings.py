"""`--ops`: single layers at the issue's shape, every implementation of each, JAX and PyTorch."""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet import ops
from tools.benchmark.models import import_torch
from tools.benchmark.timing import time_op


OPS_SHAPE = (56, 56, 128)  # the per-op shape: batch x 56 x 56 x 128


def depthwise_impls() -> tuple[str, ...]:
  """Every concrete depthwise implementation ops offers ("auto" only names one of them)."""
  return tuple(impl for impl in ops.DEPTHWISE_IMPLS if impl != "auto")


def jax_op_timings(batch: int, dtype) -> tuple[dict[str, float], dict[str, str]]:
  """(milliseconds per op row, why a row is missing): an implementation that cannot run on
  this machine (say, an FFI kernel that was not built) is skipped with its error."""
  height, width, channels = OPS_SHAPE
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, height, width, channels), np.float32), dtype)
  depthwise_kernel = jnp.asarray(rng.standard_normal((3, 3, 1, channels), np.float32), dtype)
  pointwise_kernel = jnp.asarray(rng.standard_normal((1, 1, channels, channels), np.float32),
                                 dtype)
  standard_kernel = jnp.asarray(rng.standard_normal((3, 3, channels, channels), np.float32), dtype)
  numbers = ("NHWC", "HWIO", "NHWC")
  cases = [(f"depthwise_s{stride}", impl, lambda impl=impl: ops.depthwise_conv_fn(impl),
            depthwise_kernel, stride) for stride in (1, 2) for impl in depthwise_impls()]
  cases += [("pointwise", impl, lambda impl=impl: ops.pointwise_conv_fn(impl), pointwise_kernel, 1)
            for impl in ("conv", "matmul")]
  cases += [("standard_s1", impl, lambda impl=impl: ops.standard_conv_fn(impl), standard_kernel, 1)
            for impl in ("conv", "matmul_grad")]
  timings, skipped = {}, {}
  options = ops.compiler_options()  # compiled as training compiles them
  for op, impl, conv_fn, kernel, stride in cases:
    groups = channels if op.startswith("depthwise") else 1
    try:
      conv = conv_fn()
      apply = lambda x, k, conv=conv, stride=stride, groups=groups: conv(
          x, k, (stride, stride), "SAME", dimension_numbers=numbers, feature_group_count=groups)
      cotangent = jnp.ones(jax.eval_shape(apply, x, kernel).shape, dtype)
      forward = jax.jit(apply, compiler_options=options)
      backward = jax.jit(jax.grad(
          lambda x, k, apply=apply, cotangent=cotangent: jnp.sum(
              (apply(x, k) * cotangent).astype(jnp.float32)), argnums=(0, 1)),
          compiler_options=options)
      jax.block_until_ready((forward(x, kernel), backward(x, kernel)))
    except Exception as error:  # pylint: disable=broad-except  (unavailable here: note, go on)
      skipped[f"{op}_{impl}"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
      continue
    timings[f"{op}_{impl}_fwd_ms"] = time_op(
        lambda forward=forward: jax.block_until_ready(forward(x, kernel)))
    timings[f"{op}_{impl}_fwd_bwd_ms"] = time_op(
        lambda backward=backward: jax.block_until_ready(backward(x, kernel)))
  return timings, skipped


def torch_op_timings(batch: int, threads: int, bfloat16: bool) -> dict[str, float]:
  torch = import_torch()
  torch.set_num_threads(threads)
  height, width, channels = OPS_SHAPE
  x = torch.randn(batch, channels, height, width).to(memory_format=torch.channels_last)
  autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if bfloat16
              else contextlib.nullcontext())
  timings = {}
  for op, groups, size, stride in [("depthwise_s1", channels, 3, 1),
                                   ("depthwise_s2", channels, 3, 2), ("pointwise", 1, 1, 1),
                                   ("standard_s1", 1, 3, 1)]:
    conv = torch.nn.Conv2d(channels, channels, size, stride, padding=size // 2, groups=groups,
                           bias=False).to(memory_format=torch.channels_last)

    def forward(conv=conv):
      with torch.inference_mode(), autocast:
        conv(x)

    def forward_backward(conv=conv):
      inputs = x.detach().requires_grad_(True)
      with autocast:
        out = conv(inputs)
      out.backward(torch.ones_like(out))

    timings[f"{op}_torch_fwd_ms"] = time_op(forward)
    timings[f"{op}_torch_fwd_bwd_ms"] = time_op(forward_backward)
  return timings
