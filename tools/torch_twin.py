"""MobileNet in PyTorch, built from `model.architecture()`: the independent twin that the parity
runs (`tools.parity`) train and that `benchmark --torch` times.

It computes the same function as the Flax model: TF-style 'SAME' padding (a stride-2 3x3 layer
on an even input pads 0 before and 1 after, where PyTorch's padding=1 would pad 1 and 1),
BatchNorm with the config's epsilon and momentum (Flax's momentum m is PyTorch's 1 - m), the
mean over space, dropout, the classifier; and it starts from Flax's default initialisation.
One difference stays, PyTorch's own: BatchNorm's running variance is updated with the unbiased
batch variance (n / (n - 1) times Flax's; n is batch x height x width, at least 1024 at 128 px
and batch 64, so 0.1% at most).

PyTorch is an optional dependency: import this module only where torch is wanted.
"""
import math

import jax
import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobilenet import errors, model, optim

# jax.nn.initializers.variance_scaling's truncated normal divides by the standard deviation of
# a unit normal truncated to [-2, 2], so that lecun_normal's variance stays 1 / fan_in.
TRUNCATED_UNIT_NORMAL_STDDEV = .87962566103423978
TWIN_OPTIMIZERS = ("sgd", "adamw")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(before, after) of TF/Flax 'SAME': output ceil(size / stride), any odd pixel after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class ConvBN(nn.Module):
  """One conv of `architecture()` with BatchNorm and ReLU, as model.ConvBN."""

  def __init__(self, layer: model.Layer, bn_momentum: float, bn_epsilon: float):
    super().__init__()
    self.kernel_size, self.stride = layer.kernel_size, layer.stride
    # Stride 1: 'SAME' is symmetric, the conv's own padding. Stride 2: padded in forward.
    self.conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                          padding=layer.kernel_size // 2 if layer.stride == 1 else 0,
                          groups=layer.groups, bias=False)
    self.bn = nn.BatchNorm2d(layer.out_channels, eps=bn_epsilon, momentum=1.0 - bn_momentum)

  def forward(self, x):
    if self.stride > 1 and self.kernel_size > 1:
      top, bottom = same_padding(x.shape[2], self.kernel_size, self.stride)
      left, right = same_padding(x.shape[3], self.kernel_size, self.stride)
      x = F.pad(x, (left, right, top, bottom))
    return F.relu(self.bn(self.conv(x)))


class MobileNet(nn.Module):
  """model.MobileNet in PyTorch, NCHW (best fed channels_last); submodules named as Flax's."""

  def __init__(self, variant: str, alpha: float, num_classes: int, dropout_rate: float,
               bn_momentum: float, bn_epsilon: float):
    super().__init__()
    *convs, classifier = model.architecture(variant, alpha, num_classes)
    self.conv_names = [layer.name for layer in convs]
    self.depthwise_names = {layer.name for layer in convs if layer.kind == model.CONV_DW_3X3}
    for layer in convs:
      self.add_module(layer.name, ConvBN(layer, bn_momentum, bn_epsilon))
    self.dropout = nn.Dropout(dropout_rate)
    self.classifier = nn.Linear(classifier.in_channels, classifier.out_channels)

  def forward(self, images):
    x = images
    for name in self.conv_names:
      x = getattr(self, name)(x)
    return self.classifier(self.dropout(x.mean(dim=(2, 3))))


@torch.no_grad()
def initialise_as_flax(net: MobileNet) -> None:
  """Flax's defaults, from torch's global generator: conv and dense kernels lecun_normal (a
  normal truncated at 2 sigma, variance 1 / fan_in), dense bias 0, BatchNorm scale 1, offset 0."""
  for module in net.modules():
    if isinstance(module, (nn.Conv2d, nn.Linear)):
      fan_in = module.weight[0].numel()  # in_channels / groups x kernel area
      std = math.sqrt(1.0 / fan_in) / TRUNCATED_UNIT_NORMAL_STDDEV
      nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
      if module.bias is not None:
        module.bias.zero_()
    elif isinstance(module, nn.BatchNorm2d):
      module.reset_parameters()


def build_model(config: ml_collections.ConfigDict, variant: str | None = None) -> MobileNet:
  """The twin of model.from_config(config.model), Flax-initialised from torch's global generator
  (seed it first), channels_last."""
  m = config.model
  net = MobileNet(variant or m.variant, m.alpha, m.num_classes, m.dropout_rate, m.bn_momentum,
                  m.bn_epsilon)
  initialise_as_flax(net)
  return net.to(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- Flax names

_BN_NAMES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
             "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def flax_location(torch_name: str) -> tuple[str, tuple[str, ...]] | None:
  """(collection, path) of a state-dict entry in the Flax model's variables; None for
  PyTorch's own bookkeeping (num_batches_tracked)."""
  parts = torch_name.split(".")
  if parts[0] == "classifier":
    return "params", ("classifier", {"weight": "kernel", "bias": "bias"}[parts[1]])
  layer, module, tensor = parts
  if module == "conv":
    return "params", (layer, "conv", "kernel")
  if tensor == "num_batches_tracked":
    return None
  collection, name = _BN_NAMES[tensor]
  return collection, (layer, "bn", name)


def _to_torch_layout(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
  if path[-1] != "kernel":
    return array
  if array.ndim == 4:  # Flax HWIO -> PyTorch OIHW
    return array.transpose(3, 2, 0, 1)
  return array.T  # Dense (in, out) -> Linear (out, in)


def state_dict_from_flax(net: MobileNet, variables) -> dict:
  """The twin's state dict holding a Flax MobileNet's {'params', 'batch_stats'} (or any pytree
  laid out as they are, such as gradients), in PyTorch's layouts."""
  state = {}
  for name, current in net.state_dict().items():
    location = flax_location(name)
    if location is None:
      state[name] = current
      continue
    collection, path = location
    value = variables[collection]
    for key in path:
      value = value[key]
    array = np.array(_to_torch_layout(path, np.asarray(value, np.float32)), order="C")
    if tuple(array.shape) != tuple(current.shape):
      raise ValueError(f"{collection}/{'/'.join(path)} has shape {array.shape}; the twin's "
                       f"{name} has {tuple(current.shape)}")
    state[name] = torch.from_numpy(array)
  return state


def load_flax_variables(net: MobileNet, variables) -> None:
  """Copies a Flax MobileNet's {'params', 'batch_stats'} into the twin (every entry, strictly)."""
  net.load_state_dict(state_dict_from_flax(net, variables), strict=True)


def decayed_parameter_names(net: MobileNet, decay_depthwise: bool) -> set[str]:
  """The parameters optim.weight_decay_mask decays, found by that very function on the twin's
  parameters laid out as Flax names them."""
  tree = {}
  for name, _ in net.named_parameters():
    _, path = flax_location(name)
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = name
  names = jax.tree_util.tree_leaves(tree)
  mask = jax.tree_util.tree_leaves(optim.weight_decay_mask(tree, decay_depthwise=decay_depthwise))
  return {name for name, decays in zip(names, mask) if decays}


# --------------------------------------------------------------------------- optimizer


def check_optimizer(opt: ml_collections.ConfigDict) -> None:
  if opt.name not in TWIN_OPTIMIZERS:
    raise errors.ConfigError(f"config.optimizer.name={opt.name!r}: the PyTorch twin mirrors "
                     f"{' and '.join(TWIN_OPTIMIZERS)} only")


def create_optimizer(opt: ml_collections.ConfigDict, net: MobileNet,
                     learning_rate: float) -> torch.optim.Optimizer:
  """optim.create_optimizer's twin. Two parameter groups, [decayed, spared], in that order.

  SGD: optax adds the decay to the gradient before Nesterov momentum (an L2 term), as
  torch.optim.SGD's weight_decay does. AdamW: optax adds it to Adam's update before the
  learning rate, which is torch.optim.AdamW's decoupled decay.
  """
  check_optimizer(opt)
  decayed_names = decayed_parameter_names(net, opt.weight_decay_on_depthwise)
  decayed = [p for name, p in net.named_parameters() if name in decayed_names]
  spared = [p for name, p in net.named_parameters() if name not in decayed_names]
  groups = [{"params": decayed, "weight_decay": opt.weight_decay},
            {"params": spared, "weight_decay": 0.0}]
  if opt.name == "sgd":
    return torch.optim.SGD(groups, lr=learning_rate, momentum=opt.momentum,
                           nesterov=bool(opt.nesterov and opt.momentum > 0))
  return torch.optim.AdamW(groups, lr=learning_rate, betas=(opt.b1, opt.b2), eps=1e-8)


@torch.no_grad()
def clip_by_global_norm(parameters, max_norm: float) -> float:
  """optax.clip_by_global_norm on the gradients (max_norm <= 0: none); returns the norm."""
  grads = [p.grad for p in parameters if p.grad is not None]
  norm = float(torch.sqrt(sum(torch.sum(g * g) for g in grads)))
  if 0 < max_norm <= norm:
    for grad in grads:
      grad.mul_(max_norm / norm)
  return norm
