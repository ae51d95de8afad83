"""Analytic mult-adds and parameters of MobileNet, counted as the paper counts them.

Convolutions and the classifier are counted; BatchNorm (foldable into the
convs at inference), ReLU and pooling are not. `params` counts every trained
parameter (weights, BatchNorm scale and offset, classifier bias): the number
of trainable parameters of the Flax model. The paper's Table 2 shares are of
the weights alone (`weights`), which is how its percentages come out.

`python -m tools.costs` prints them for one model.
"""
import dataclasses
import math

from mobilenet import model

BATCH_NORM_PARAMS_PER_CHANNEL = 2  # scale and offset; the moving statistics are not trained


@dataclasses.dataclass(frozen=True)
class LayerCost:
  name: str
  type: str
  output_shape: tuple[int, ...]  # (height, width, channels), or (classes,) for the classifier
  mult_adds: int
  params: int
  weights: int  # conv kernel or dense matrix entries only


@dataclasses.dataclass(frozen=True)
class Costs:
  variant: str
  alpha: float
  resolution: int
  num_classes: int
  layers: tuple[LayerCost, ...]

  @property
  def mult_adds(self) -> int:
    return sum(layer.mult_adds for layer in self.layers)

  @property
  def params(self) -> int:
    return sum(layer.params for layer in self.layers)

  @property
  def weights(self) -> int:
    return sum(layer.weights for layer in self.layers)

  def breakdown(self) -> dict[str, dict[str, float]]:
    """The paper's Table 2: each layer type's share of mult-adds and of weights."""
    shares = {}
    for kind in model.LAYER_KINDS:
      of_kind = [layer for layer in self.layers if layer.type == kind]
      if of_kind:
        shares[kind] = {
            "mult_adds": sum(l.mult_adds for l in of_kind) / self.mult_adds,
            "weights": sum(l.weights for l in of_kind) / self.weights,
        }
    return shares

  def to_json(self) -> dict:
    return {
        "variant": self.variant,
        "alpha": self.alpha,
        "resolution": self.resolution,
        "num_classes": self.num_classes,
        "mult_adds": self.mult_adds,
        "params": self.params,
        "breakdown": self.breakdown(),
        "layers": [dataclasses.asdict(layer) for layer in self.layers],
    }


def check_resolution(resolution: int) -> None:
  """Every stride-2 layer must still see at least one pixel."""
  if resolution < model.total_stride():
    raise ValueError(f"resolution must be at least {model.total_stride()} px for the network's "
                     f"five stride-2 layers; got {resolution}")


def count(variant: str = "dws", alpha: float = 1.0, resolution: int = 224,
          num_classes: int = 1000) -> Costs:
  """Per-layer costs for one model; raises ValueError with a one-line message on bad arguments."""
  check_resolution(resolution)
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1; got {num_classes}")
  size = resolution
  layers = []
  for layer in model.architecture(variant, alpha, num_classes):
    if layer.kind == model.FC:
      weights = layer.in_channels * layer.out_channels
      layers.append(LayerCost(layer.name, layer.kind, (layer.out_channels,), mult_adds=weights,
                              params=weights + layer.out_channels, weights=weights))
      continue
    size = math.ceil(size / layer.stride)  # 'SAME' padding
    weights = (layer.kernel_size ** 2 * layer.in_channels // layer.groups * layer.out_channels)
    layers.append(LayerCost(
        layer.name, layer.kind, (size, size, layer.out_channels),
        mult_adds=weights * size * size,
        params=weights + BATCH_NORM_PARAMS_PER_CHANNEL * layer.out_channels,
        weights=weights))
  return Costs(variant, alpha, resolution, num_classes, tuple(layers))
