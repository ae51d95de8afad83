"""Convolution implementations for the model's layers.

Each function returned here has the signature of `jax.lax.conv_general_dilated`
and is handed to `flax.linen.Conv(conv_general_dilated=...)`, so every
implementation uses the same parameters (depthwise kernel (3, 3, 1, C),
pointwise kernel (1, 1, Cin, Cout)) and a checkpoint trained with one
evaluates with another.
"""
from typing import Callable

import jax
from jax import lax

ConvFn = Callable[..., jax.Array]

DEPTHWISE_IMPLS = ("auto", "grouped")
POINTWISE_IMPLS = ("auto", "conv")


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def depthwise_conv_fn(impl: str) -> ConvFn:
  """The depthwise 3x3 implementation: `grouped` is lax's feature_group_count conv."""
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f"depthwise_impl must be one of {', '.join(DEPTHWISE_IMPLS)}; got {impl!r}")
  return lax.conv_general_dilated


def pointwise_conv_fn(impl: str) -> ConvFn:
  """The 1x1 implementation: `conv` is lax's convolution."""
  if impl not in POINTWISE_IMPLS:
    raise ValueError(f"pointwise_impl must be one of {', '.join(POINTWISE_IMPLS)}; got {impl!r}")
  return lax.conv_general_dilated


def standard_conv_fn() -> ConvFn:
  return lax.conv_general_dilated
