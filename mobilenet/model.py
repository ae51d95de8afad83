"""MobileNet v1 (Howard et al., 2017) and its standard-convolution twin, in Flax Linen.

The network is written once, as the list of layers in `architecture()`, which
reads like the paper's Table 1. The model below and the cost counter in
`mobilenet.costs` both walk that list, so they cannot disagree.
"""
import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mobilenet import ops

# Table 1 of the paper. The first layer is a full 3x3 convolution; each entry
# of SEPARABLE_BLOCKS is one depthwise 3x3 (with the given stride) followed by
# a pointwise 1x1 conv with the given output channels.
FIRST_CONV = (32, 2)  # (output channels, stride)
SEPARABLE_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),  # the five 14x14x512 blocks
    (512, 1),  # that Shallow MobileNet
    (512, 1),  # (Table 5)
    (512, 1),  # removes
    (512, 1),
    (1024, 2),
    (1024, 1),  # Table 1 misprints s2 here: the last layers stay at 7x7.
)
SHALLOW_REMOVED_BLOCKS = (7, 8, 9, 10, 11)  # 1-based indices into SEPARABLE_BLOCKS

VARIANTS = ("dws", "conv", "shallow")

# Layer kinds, named as in the paper's Table 2.
CONV_3X3 = "Conv 3x3"
CONV_DW_3X3 = "Conv DW 3x3"
CONV_1X1 = "Conv 1x1"
FC = "Fully Connected"
LAYER_KINDS = (CONV_1X1, CONV_DW_3X3, CONV_3X3, FC)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One weight layer: a conv followed by BatchNorm and ReLU, or the classifier."""
  name: str
  kind: str
  in_channels: int
  out_channels: int
  stride: int = 1

  @property
  def kernel_size(self) -> int:
    return 3 if self.kind in (CONV_3X3, CONV_DW_3X3) else 1

  @property
  def groups(self) -> int:
    return self.in_channels if self.kind == CONV_DW_3X3 else 1


def width(channels: int, alpha: float) -> int:
  """The paper's width multiplier: channels become int(channels * alpha)."""
  return int(channels * alpha)


def check_hyperparameters(variant: str, alpha: float) -> None:
  """Fails with a one-line ValueError naming the bad field."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0; got {alpha}")
  if width(FIRST_CONV[0], alpha) < 1:
    raise ValueError(f"alpha={alpha} leaves the first conv with no channels "
                     f"(int({FIRST_CONV[0]} * alpha) = 0)")


def architecture(variant: str = "dws", alpha: float = 1.0,
                 num_classes: int = 1000) -> list[Layer]:
  """The weight layers of MobileNet (`dws`), Conv MobileNet (`conv`) or Shallow MobileNet."""
  check_hyperparameters(variant, alpha)
  channels = width(FIRST_CONV[0], alpha)
  layers = [Layer("conv_0", CONV_3X3, 3, channels, FIRST_CONV[1])]
  for index, (out_channels, stride) in enumerate(SEPARABLE_BLOCKS, start=1):
    if variant == "shallow" and index in SHALLOW_REMOVED_BLOCKS:
      continue
    out_channels = width(out_channels, alpha)
    name = f"block_{index:02d}"
    if variant == "conv":
      layers.append(Layer(f"{name}_conv", CONV_3X3, channels, out_channels, stride))
    else:
      layers.append(Layer(f"{name}_dw", CONV_DW_3X3, channels, channels, stride))
      layers.append(Layer(f"{name}_pw", CONV_1X1, channels, out_channels, 1))
    channels = out_channels
  layers.append(Layer("classifier", FC, channels, num_classes))
  return layers


def total_stride() -> int:
  stride = FIRST_CONV[1]
  for _, block_stride in SEPARABLE_BLOCKS:
    stride *= block_stride
  return stride


class ConvBN(nn.Module):
  """A conv of `architecture()` followed by BatchNorm and ReLU."""
  layer: Layer
  dtype: Any = jnp.float32
  depthwise_impl: str = "auto"
  pointwise_impl: str = "auto"
  standard_impl: str = "auto"
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x, train: bool):
    layer = self.layer
    if layer.kind == CONV_DW_3X3:
      conv_fn = ops.depthwise_conv_fn(self.depthwise_impl)
    elif layer.kind == CONV_1X1:
      conv_fn = ops.pointwise_conv_fn(self.pointwise_impl)
    else:
      conv_fn = ops.standard_conv_fn(self.standard_impl)
    x = nn.Conv(
        layer.out_channels,
        (layer.kernel_size, layer.kernel_size),
        strides=layer.stride,
        padding="SAME",
        feature_group_count=layer.groups,
        use_bias=False,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=conv_fn,
        name="conv")(x)
    x = nn.BatchNorm(
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name="bn")(x)
    return nn.relu(x)


class MobileNet(nn.Module):
  """MobileNet v1 and its variants; input NHWC images of any size >= 32 px."""
  num_classes: int = 1000
  variant: str = "dws"
  alpha: float = 1.0
  dropout_rate: float = 0.001
  dtype: Any = jnp.float32
  depthwise_impl: str = "auto"
  pointwise_impl: str = "auto"
  standard_impl: str = "auto"
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3

  @property
  def layers(self) -> Sequence[Layer]:
    return architecture(self.variant, self.alpha, self.num_classes)

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images.astype(self.dtype)
    *convs, classifier = self.layers
    for layer in convs:
      x = ConvBN(layer, dtype=self.dtype, depthwise_impl=self.depthwise_impl,
                 pointwise_impl=self.pointwise_impl, standard_impl=self.standard_impl,
                 bn_momentum=self.bn_momentum,
                 bn_epsilon=self.bn_epsilon, name=layer.name)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(classifier.out_channels, dtype=self.dtype, param_dtype=jnp.float32,
                 name=classifier.name)(x)
    return x.astype(jnp.float32)
