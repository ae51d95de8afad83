"""What every implementation of `mobilenet.ops` shares: the arguments of a
`lax.conv_general_dilated` call, falling back to another implementation for calls it does not
handle, and the padded slices (taps) the CPU paths compute with."""
import dataclasses
import functools
import inspect
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

ConvFn = Callable[..., jax.Array]

NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                     out_spec=(0, 3, 1, 2))




@dataclasses.dataclass(frozen=True)
class ConvCall:
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
    return numbers == NHWC_HWIO

  def is_plain_nhwc(self) -> bool:
    """An NHWC/HWIO conv without dilation or batch groups, in the input's dtype."""
    return (self.is_nhwc_hwio() and all_ones(self.lhs_dilation)
            and all_ones(self.rhs_dilation) and self.batch_group_count == 1
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


def falls_back_to(fallback: ConvFn) -> Callable[[Callable[[ConvCall], Any]], ConvFn]:
  """Makes a drop-in `lax.conv_general_dilated` of a fast path that takes the call's arguments
  as one `ConvCall` and returns NotImplemented where it does not apply: those calls go, with
  the same arguments, to `fallback`."""
  def decorate(fast_path: Callable[[ConvCall], Any]) -> ConvFn:
    @functools.wraps(fast_path)
    def conv(*args, **kwargs):
      result = fast_path(ConvCall(*args, **kwargs))
      return fallback(*args, **kwargs) if result is NotImplemented else result
    conv.__signature__ = inspect.signature(ConvCall)
    return conv
  return decorate


def all_ones(values) -> bool:
  return values is None or all(v == 1 for v in values)


def _explicit_padding(padding, in_shape, window_shape, strides) -> tuple:
  """Pairs (before, after) per spatial dim, as lax computes them for 'SAME'/'VALID'."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_shape, window_shape, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def tap(array, start_h, start_w, out_h, out_w, strides):
  """array[:, start_h::sh][:out_h], likewise along W: the pixels one kernel tap sees."""
  stride_h, stride_w = strides
  return lax.slice(
      array, (0, start_h, start_w, 0),
      (array.shape[0], start_h + (out_h - 1) * stride_h + 1,
       start_w + (out_w - 1) * stride_w + 1, array.shape[3]),
      (1, stride_h, stride_w, 1))


def pad_spatial(array, pads_h, pads_w, interior=(0, 0)):
  zero = jnp.zeros((), array.dtype)
  return lax.pad(array, zero, ((0, 0, 0), (*pads_h, interior[0]), (*pads_w, interior[1]),
                               (0, 0, 0)))


def accumulation_dtype(dtype):
  # Sums of bfloat16 products are kept in float32, as the library convolutions do.
  return jnp.promote_types(dtype, jnp.float32)
