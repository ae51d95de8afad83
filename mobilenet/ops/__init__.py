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
import jax
from jax import lax

from mobilenet import cpu_kernels, errors
from mobilenet.ops.call import ConvFn
from mobilenet.ops.depthwise import ffi_depthwise_conv, shifted_depthwise_conv
from mobilenet.ops.matmul import matmul_grad_conv, matmul_pointwise_conv
from mobilenet.ops.xla_cpu import compiler_options

DEPTHWISE_IMPLS = ("auto", "grouped", "shifted", "ffi")
POINTWISE_IMPLS = ("auto", "conv", "matmul")
STANDARD_IMPLS = ("auto", "conv", "matmul_grad")


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
