"""MobileNet v1 (Howard et al., 2017) and its standard-convolution twin, in Flax Linen.

The network is written once, as the list of layers in `architecture()`, which
reads like the paper's Table 1. The model below and the cost counter in
`mobilenet.costs` both walk that list, so they cannot disagree. `from_config`
builds the model of `config.model`, resolving the convolution implementations
of `mobilenet.ops` for this backend once.
"""
import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mobilenet import errors, ops

ModuleDef = Any  # a Flax module class, or a functools.partial of one

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
DTYPES = ("float32", "bfloat16")  # of the computation: config.model.dtype
# After each BatchNorm: the paper's ReLU, or the ReLU6 that the released ImageNet weights used.
ACTIVATIONS = {"relu": nn.relu, "relu6": nn.relu6}

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


def check_config(model_config: ml_collections.ConfigDict) -> None:
  """Raises errors.ConfigError naming the first bad field of config.model, before any compiling."""
  m = model_config
  try:
    check_hyperparameters(m.variant, m.alpha)
  except ValueError as error:
    raise errors.ConfigError(f"config.model.{error}") from None
  if m.num_classes < 1:
    raise errors.ConfigError(f"config.model.num_classes must be >= 1; got {m.num_classes}")
  for field, choices in (("dtype", DTYPES), ("activation", tuple(ACTIVATIONS)),
                         ("depthwise_impl", ops.DEPTHWISE_IMPLS),
                         ("pointwise_impl", ops.POINTWISE_IMPLS),
                         ("standard_impl", ops.STANDARD_IMPLS)):
    value = getattr(m, field)
    if value not in choices:
      raise errors.ConfigError(f"config.model.{field} must be one of {', '.join(choices)}; "
                               f"got {value!r}")
  if not 0 <= m.dropout_rate < 1:
    raise errors.ConfigError(f"config.model.dropout_rate must be in [0, 1); "
                             f"got {m.dropout_rate}")


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
  """A conv of `architecture()` followed by `norm` and the activation (ReLU or ReLU6)."""
  layer: Layer
  conv_general_dilated: ops.ConvFn
  norm: ModuleDef
  dtype: Any
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, train: bool):
    layer = self.layer
    x = nn.Conv(
        layer.out_channels,
        (layer.kernel_size, layer.kernel_size),
        strides=layer.stride,
        padding="SAME",
        feature_group_count=layer.groups,
        use_bias=False,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=self.conv_general_dilated,
        name="conv")(x)
    x = self.norm(use_running_average=not train, dtype=self.dtype, param_dtype=jnp.float32,
                  name="bn")(x)
    return ACTIVATIONS[self.activation](x)


class MobileNet(nn.Module):
  """MobileNet v1 and its variants; input NHWC images of any size >= 32 px.

  Built by `from_config`, which resolves the convolution implementations (functions with the
  signature of `lax.conv_general_dilated`, see `mobilenet.ops`) and the BatchNorm recipe once.
  Parameters do not depend on the implementations: a checkpoint evaluates with any of them.
  """
  num_classes: int
  variant: str
  alpha: float
  dropout_rate: float
  dtype: Any  # of the computation; parameters stay float32
  depthwise_conv: ops.ConvFn
  pointwise_conv: ops.ConvFn
  standard_conv: ops.ConvFn
  norm: ModuleDef  # called with use_running_average, dtype, param_dtype and name
  activation: str = "relu"  # a key of ACTIVATIONS

  @property
  def layers(self) -> Sequence[Layer]:
    return architecture(self.variant, self.alpha, self.num_classes)

  def _conv_for(self, layer: Layer) -> ops.ConvFn:
    return {CONV_DW_3X3: self.depthwise_conv, CONV_1X1: self.pointwise_conv,
            CONV_3X3: self.standard_conv}[layer.kind]

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images.astype(self.dtype)
    *convs, classifier = self.layers
    for layer in convs:
      x = ConvBN(layer, conv_general_dilated=self._conv_for(layer), norm=self.norm,
                 dtype=self.dtype, activation=self.activation, name=layer.name)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(classifier.out_channels, dtype=self.dtype, param_dtype=jnp.float32,
                 name=classifier.name)(x)
    return x.astype(jnp.float32)


def from_config(model_config: ml_collections.ConfigDict, *,
                variant: str | None = None) -> MobileNet:
  """The model of `config.model`, with its implementations resolved for this backend.

  `variant` replaces config.model.variant, for side-by-side benchmarks of the variants.
  """
  m = model_config
  return MobileNet(
      num_classes=m.num_classes,
      variant=m.variant if variant is None else variant,
      alpha=m.alpha,
      dropout_rate=m.dropout_rate,
      dtype=jnp.dtype(m.dtype),
      depthwise_conv=ops.depthwise_conv_fn(m.depthwise_impl),
      pointwise_conv=ops.pointwise_conv_fn(m.pointwise_impl),
      standard_conv=ops.standard_conv_fn(m.standard_impl),
      norm=functools.partial(nn.BatchNorm, momentum=m.bn_momentum, epsilon=m.bn_epsilon),
      activation=m.activation)
