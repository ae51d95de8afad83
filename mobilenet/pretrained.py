"""The released ImageNet MobileNet v1 weights (Keras' application, TF-slim's checkpoints) in this
model, exactly: every source weight lands in one parameter or BatchNorm statistic of ours.

    config, variables = pretrained.from_keras(keras_model)
    logits = model.from_config(config.model).apply(variables, images, train=False)

`config` is a full config (defaults.default_config()) whose model section builds the network the
variables fit: MobileNet with ReLU6, the released models' activation. `save_workdir` writes them
as a run's checkpoint that eval.py, the LiteRT export and `train.init_from` read.
"""
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from mobilenet import checkpoints, defaults, devices, errors, imagenet, model, steps

# TF-slim's variables that are no weights of the network: counters and optimizer slots.
_SLIM_AUXILIARY = re.compile(r"(^global_step$|/ExponentialMovingAverage$|/RMSProp(_1)?$|"
                             r"/Momentum$|/Adam(_1)?$)")
DEFAULT_RESOLUTION = 224


def imported_config(*, alpha: float, resolution: int, num_classes: int, bn_epsilon: float,
                    origin: str) -> ml_collections.ConfigDict:
  """The config of imported weights: MobileNet with ReLU6 at `resolution`, evaluated as the
  released models were (central crop 0.875, [-1, 1]); `origin` says where they came from."""
  config = defaults.default_config()
  config.model.update(variant="dws", alpha=float(alpha), num_classes=int(num_classes),
                      activation="relu6", bn_epsilon=float(bn_epsilon))
  config.data.update(resolution=int(resolution), crop_fraction=0.875)
  config.train.init_from = origin
  return config


def assemble(config: ml_collections.ConfigDict, arrays: dict[str, np.ndarray],
             origin: str) -> dict:
  """{"params", "batch_stats"} of config's model from `arrays`, keyed by our variables' paths
  ("params/conv_0/conv/kernel", "batch_stats/conv_0/bn/mean", ...) in our layouts. A variable
  without a source, a source without a variable, or a shape that differs is an error naming it."""
  net = model.from_config(config.model)
  resolution = config.data.resolution
  wanted = traverse_util.flatten_dict(jax.eval_shape(
      lambda: net.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)))), sep="/")
  missing = sorted(set(wanted) - set(arrays))
  if missing:
    raise errors.IncompatibleCheckpoint(f"{origin}: nothing to import into {missing[0]}"
                                        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
  unused = sorted(set(arrays) - set(wanted))
  if unused:
    raise errors.IncompatibleCheckpoint(f"{origin}: {unused[0]} has no place in MobileNet "
                                        f"alpha={config.model.alpha:g}")
  for path, shape in wanted.items():
    if tuple(arrays[path].shape) != tuple(shape.shape):
      raise errors.IncompatibleCheckpoint(
          f"{origin}: {path} has shape {tuple(arrays[path].shape)} there, but MobileNet "
          f"alpha={config.model.alpha:g} needs {tuple(shape.shape)}")
  return traverse_util.unflatten_dict(
      {path: jnp.asarray(arrays[path], jnp.float32) for path in wanted}, sep="/")


def _conv_bn(ours: str, kernel, gamma, beta, mean, variance) -> dict[str, np.ndarray]:
  return {f"params/{ours}/conv/kernel": kernel, f"params/{ours}/bn/scale": gamma,
          f"params/{ours}/bn/bias": beta, f"batch_stats/{ours}/bn/mean": mean,
          f"batch_stats/{ours}/bn/var": variance}


def _depthwise(kernel: np.ndarray) -> np.ndarray:
  """(3, 3, channels, 1), TF's depthwise layout, to (3, 3, 1, channels), a grouped conv's."""
  return np.transpose(kernel, (0, 1, 3, 2))


def _alpha_from_width(last_width: int) -> float:
  """The width multiplier from the last layer's channels (int(1024 * alpha)); every other layer's
  shape is then checked against it."""
  return last_width / model.SEPARABLE_BLOCKS[-1][0]


# Keras' layer names: conv1, conv_dw_<i>, conv_pw_<i> (each with a "_bn" BatchNormalization),
# conv_preds (the classifier, a 1x1 conv with bias).
def _keras_name(layer: model.Layer) -> str:
  if layer.name == "conv_0":
    return "conv1"
  if layer.name == "classifier":
    return "conv_preds"
  index, kind = layer.name.split("_")[1:]
  return f"conv_{kind}_{int(index)}"


def from_keras(keras_model, *, origin: str | None = None) -> tuple[ml_collections.ConfigDict, dict]:
  """A Keras `MobileNet` (keras.applications, any alpha, with its classifier) as our config and
  variables."""
  layers = {layer.name: layer for layer in keras_model.layers}
  origin = origin or f"keras:{keras_model.name}"
  for required in ("conv1", "conv_pw_13", "conv_preds"):
    if required not in layers:
      hint = " (built with include_top=False?)" if required == "conv_preds" else ""
      raise errors.IncompatibleCheckpoint(f"{origin}: no layer {required!r}; not a Keras "
                                          f"MobileNet v1 with its classifier{hint}")
  weights = {name: {w.path.split("/")[-1]: np.asarray(w.numpy()) for w in layer.weights}
             for name, layer in layers.items() if layer.weights}
  if layers["conv_dw_1"].depth_multiplier != 1:
    raise errors.IncompatibleCheckpoint(f"{origin}: depth_multiplier="
                                        f"{layers['conv_dw_1'].depth_multiplier}; this model has 1")
  alpha = _alpha_from_width(weights["conv_pw_13"]["kernel"].shape[-1])
  num_classes = weights["conv_preds"]["kernel"].shape[-1]
  epsilons = {layer.epsilon for name, layer in layers.items() if name.endswith("_bn")}
  relus = {getattr(layer, "max_value", None) for name, layer in layers.items()
           if name.endswith("_relu")}
  if len(epsilons) != 1 or relus != {6.0}:
    raise errors.IncompatibleCheckpoint(f"{origin}: expected one BatchNorm epsilon and ReLU6 "
                                        f"everywhere; found epsilons {epsilons}, ReLU caps {relus}")
  resolution = keras_model.input_shape[1] or DEFAULT_RESOLUTION
  config = imported_config(alpha=alpha, resolution=resolution, num_classes=num_classes,
                           bn_epsilon=epsilons.pop(), origin=origin)
  arrays, used = {}, set()
  for layer in model.architecture("dws", alpha, num_classes):
    name = _keras_name(layer)
    conv = weights.get(name, {})
    used.add(name)
    if layer.name == "classifier":
      arrays["params/classifier/kernel"] = conv["kernel"][0, 0]
      arrays["params/classifier/bias"] = conv.get("bias")
      continue
    bn = weights.get(f"{name}_bn", {})
    used.add(f"{name}_bn")
    kernel = conv.get("kernel")
    if kernel is not None and layer.kind == model.CONV_DW_3X3:
      kernel = _depthwise(kernel)
    arrays.update(_conv_bn(layer.name, kernel, bn.get("gamma"), bn.get("beta"),
                           bn.get("moving_mean"), bn.get("moving_variance")))
  unused = sorted(set(weights) - used)
  if unused:
    raise errors.IncompatibleCheckpoint(f"{origin}: layer {unused[0]!r} has weights but no place "
                                        "in MobileNet v1")
  absent = sorted(path for path, value in arrays.items() if value is None)
  if absent:
    raise errors.IncompatibleCheckpoint(f"{origin}: nothing to import into {absent[0]}")
  return config, assemble(config, arrays, origin)


# Keras' file names for the released weights: mobilenet_<alpha's text>_<rows>_tf.h5.
_KERAS_ALPHA_TEXT = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}
_KERAS_FILE = re.compile(r"mobilenet_(\d_\d)_(\d+)_tf")
KERAS_ALPHAS, KERAS_RESOLUTIONS = tuple(sorted(_KERAS_ALPHA_TEXT)), (128, 160, 192, 224)


def _keras():
  import keras  # pylint: disable=import-outside-toplevel  (slow; only the importers need it)
  return keras


def _keras_architecture(alpha: float, resolution: int, num_classes: int, weights=None):
  return _keras().applications.MobileNet(
      weights=weights, alpha=alpha, input_shape=(resolution, resolution, 3), classes=num_classes,
      classifier_activation=None)


def from_keras_file(path: str, *, alpha: float | None = None, resolution: int | None = None,
                    num_classes: int = imagenet.NUM_CLASSES) -> tuple[ml_collections.ConfigDict, dict]:
  """A saved Keras model (.keras, .h5), or a weights file (.weights.h5, or the released
  mobilenet_1_0_224_tf.h5) for the MobileNet of `alpha` and `resolution` (read from a released
  file's name when not given)."""
  if not os.path.isfile(path):
    raise errors.NotFound(f"no such Keras file: {path}")
  keras, origin = _keras(), f"keras:{path}"
  if not path.endswith(".weights.h5"):
    try:
      return from_keras(keras.models.load_model(path, compile=False), origin=origin)
    except (ValueError, TypeError, KeyError, OSError):
      pass  # a weights-only file: its architecture is built below
  named = _KERAS_FILE.search(os.path.basename(path))
  if named and named.group(1) in _KERAS_ALPHA_TEXT.values():
    alpha = alpha or {text: a for a, text in _KERAS_ALPHA_TEXT.items()}[named.group(1)]
    resolution = resolution or int(named.group(2))
  if alpha is None or resolution is None:
    raise errors.ConfigError(f"{path} holds weights only: give the alpha and resolution of the "
                             "MobileNet they belong to")
  net = _keras_architecture(alpha, resolution, num_classes)
  try:
    net.load_weights(path)
  except (ValueError, OSError, KeyError) as error:
    raise errors.IncompatibleCheckpoint(f"{origin}: does not fit MobileNet alpha={alpha:g} at "
                                        f"{resolution} px with {num_classes} classes "
                                        f"({str(error).splitlines()[0]})") from None
  return from_keras(net, origin=origin)


def from_keras_imagenet(alpha: float, resolution: int) -> tuple[ml_collections.ConfigDict, dict]:
  """Keras' released ImageNet weights (downloaded once into ~/.keras/models, read from there
  afterwards)."""
  if alpha not in KERAS_ALPHAS or resolution not in KERAS_RESOLUTIONS:
    raise errors.ConfigError(f"Keras releases ImageNet weights for alpha in {KERAS_ALPHAS} and "
                             f"resolution in {KERAS_RESOLUTIONS}; got {alpha:g}, {resolution}")
  try:
    net = _keras_architecture(alpha, resolution, imagenet.NUM_CLASSES, weights="imagenet")
  except Exception as error:  # pylint: disable=broad-except  (keras' download raises Exception)
    file = f"mobilenet_{_KERAS_ALPHA_TEXT[alpha]}_{resolution}_tf.h5"
    raise errors.DataSourceUnavailableError(
        f"could not download Keras' ImageNet weights (offline? {str(error).splitlines()[0]}); on a "
        f"machine online, `python -c \"import keras; keras.applications.MobileNet(alpha={alpha:g}, "
        f"input_shape=({resolution}, {resolution}, 3))\"` saves ~/.keras/models/{file}: pass "
        "that file with --keras_file") from None
  return from_keras(net, origin=f"keras:imagenet alpha={alpha:g} {resolution}px")


# TF-slim's names: MobilenetV1/Conv2d_0, Conv2d_<i>_depthwise, Conv2d_<i>_pointwise (each with
# BatchNorm/{gamma,beta,moving_mean,moving_variance}), Logits/Conv2d_1c_1x1/{weights,biases}.
SLIM_SCOPE = "MobilenetV1"


def _slim_name(layer: model.Layer) -> str:
  if layer.name == "conv_0":
    return f"{SLIM_SCOPE}/Conv2d_0"
  if layer.name == "classifier":
    return f"{SLIM_SCOPE}/Logits/Conv2d_1c_1x1"
  index, kind = layer.name.split("_")[1:]
  return f"{SLIM_SCOPE}/Conv2d_{int(index)}_{'depthwise' if kind == 'dw' else 'pointwise'}"


def from_slim_checkpoint(path: str, *, resolution: int = DEFAULT_RESOLUTION,
                         keep_background: bool = False, bn_epsilon: float = 1e-3,
                         moving_averages: bool = False) -> tuple[ml_collections.ConfigDict, dict]:
  """A TF-slim MobileNet v1 checkpoint (its prefix, say mobilenet_v1_1.0_224.ckpt) as our config
  and variables. Its 1001 classes lose the first ("background") unless `keep_background`;
  `moving_averages` reads each weight's ExponentialMovingAverage where the checkpoint has one.
  The checkpoint does not say its resolution (the file name does) or BatchNorm's epsilon (slim's
  MobileNet used 1e-3)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (only this importer needs it)
  origin = f"slim:{path}"
  try:
    reader = tf.train.load_checkpoint(path)
  except (ValueError, tf.errors.OpError) as error:
    raise errors.NotFound(f"{origin}: not a readable TF checkpoint ({str(error).splitlines()[0]})") from None
  shapes = reader.get_variable_to_shape_map()
  last = f"{SLIM_SCOPE}/Conv2d_13_pointwise/weights"
  if last not in shapes:
    raise errors.IncompatibleCheckpoint(f"{origin}: no variable {last}; not a TF-slim "
                                        "MobileNet v1 checkpoint")

  def read(name: str) -> np.ndarray | None:
    if moving_averages and f"{name}/ExponentialMovingAverage" in shapes:
      return reader.get_tensor(f"{name}/ExponentialMovingAverage")
    return reader.get_tensor(name) if name in shapes else None

  alpha = _alpha_from_width(shapes[last][-1])
  logits = f"{SLIM_SCOPE}/Logits/Conv2d_1c_1x1"
  num_classes = shapes.get(f"{logits}/weights", [0])[-1]
  dropped = 1 if num_classes == imagenet.WITH_BACKGROUND and not keep_background else 0
  arrays, used = {}, set()
  for layer in model.architecture("dws", alpha, num_classes - dropped):
    scope = _slim_name(layer)
    if layer.name == "classifier":
      kernel, bias = read(f"{scope}/weights"), read(f"{scope}/biases")
      arrays["params/classifier/kernel"] = None if kernel is None else kernel[0, 0, :, dropped:]
      arrays["params/classifier/bias"] = None if bias is None else bias[dropped:]
      used.update({f"{scope}/weights", f"{scope}/biases"})
      continue
    weight = f"{scope}/{'depthwise_weights' if layer.kind == model.CONV_DW_3X3 else 'weights'}"
    norm = f"{scope}/BatchNorm"
    names = [weight] + [f"{norm}/{field}" for field in
                        ("gamma", "beta", "moving_mean", "moving_variance")]
    used.update(names)
    values = [read(name) for name in names]
    if values[0] is not None and layer.kind == model.CONV_DW_3X3:
      values[0] = _depthwise(values[0])
    arrays.update(_conv_bn(layer.name, *values))
  absent = sorted(path for path, value in arrays.items() if value is None)
  if absent:
    raise errors.IncompatibleCheckpoint(f"{origin}: nothing to import into {absent[0]}")
  unused = sorted(name for name in shapes
                  if name not in used and not _SLIM_AUXILIARY.search(name))
  if unused:
    raise errors.IncompatibleCheckpoint(f"{origin}: variable {unused[0]} has no place in "
                                        "MobileNet v1")
  config = imported_config(alpha=alpha, resolution=resolution, num_classes=num_classes - dropped,
                           bn_epsilon=bn_epsilon, origin=origin)
  return config, assemble(config, arrays, origin)


def save_workdir(config: ml_collections.ConfigDict, variables: dict, workdir: str) -> None:
  """Writes the variables as the checkpoint of step 0 of a run of `config` (with a fresh
  optimizer state) and its config.json: eval.py, the export and train.init_from read it."""
  if os.path.exists(os.path.join(workdir, checkpoints.SUBDIRECTORY)):
    raise errors.ConfigError(f"workdir {workdir} already holds checkpoints; import into a new one")
  os.makedirs(workdir, exist_ok=True)
  mesh = devices.device_mesh()
  training = steps.build(config, mesh, steps_per_epoch=1, total_steps=1)
  state = training.init()
  placed = jax.device_put(variables, training.evaluation.replicated)
  state = state.replace(params=placed["params"], ema_params=placed["params"],
                        batch_stats=placed["batch_stats"])
  with checkpoints.Checkpointer(workdir, keep=config.train.keep_checkpoints) as checkpointer:
    checkpointer.save(0, state, config, train_seconds=0.0)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as out:
      out.write(config.to_json_best_effort(indent=2))


# What a run started from another's weights must share with it (num_classes may differ: the
# classifier is then initialised afresh).
_SHARED_FIELDS = ("model.variant", "model.alpha", "model.activation", "model.bn_epsilon")


def check_init_from(config: ml_collections.ConfigDict) -> dict | None:
  """The saved config of train.init_from's workdir (None when unset), after checking that its
  model is this config's but for the classifier; before any data is read."""
  source = config.train.init_from
  if not source:
    return None
  if not os.path.isdir(source):
    raise errors.ConfigError(f"config.train.init_from: no such workdir: {source}")
  saved, _ = checkpoints.read_trained_config(source)
  for field in _SHARED_FIELDS:
    theirs, ours = checkpoints.lookup(defaults.from_saved(saved), field), checkpoints.lookup(config, field)
    if theirs != ours:
      raise errors.ConfigError(f"config.train.init_from: {source} holds a model with "
                               f"{field}={theirs!r}, but this config has {ours!r}; set "
                               f"--config.{field}={theirs}")
  return saved


def from_workdir(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, dict]:
  """The config and evaluated variables ({"params": EMA parameters, "batch_stats"}) of a run's
  or an import's checkpoint (the latest by default)."""
  saved, step = checkpoints.read_trained_config(workdir, step)
  config = defaults.from_saved(saved)
  evaluation = steps.build_evaluation(config, devices.device_mesh())
  with checkpoints.Checkpointer(workdir, read_only=True) as checkpointer:
    variables = checkpointer.restore_part(evaluation.abstract_variables, step)
  return config, {"params": variables["ema_params"], "batch_stats": variables["batch_stats"]}


def start_from(config: ml_collections.ConfigDict, state, replicated) -> tuple[object, str]:
  """`state` (a fresh TrainState) with train.init_from's parameters and statistics; the
  classifier stays fresh where the number of classes differs. Also says what it did."""
  source_config, source = from_workdir(config.train.init_from)
  params = dict(state.params)
  taken = {name: value for name, value in source["params"].items()
           if jax.tree.map(jnp.shape, value) == jax.tree.map(jnp.shape, params[name])}
  fresh = sorted(set(params) - set(taken))
  params.update(jax.device_put(taken, replicated))
  batch_stats = jax.device_put(source["batch_stats"], replicated)
  note = f"Started from the weights of {config.train.init_from}"
  if fresh:
    note += (f" ({', '.join(fresh)} initialised afresh: {source_config.model.num_classes} "
             f"classes there, {config.model.num_classes} here)")
  # Separate buffers: the train step donates both.
  ema_params = jax.tree.map(jnp.copy, params)
  return state.replace(params=params, ema_params=ema_params, batch_stats=batch_stats), note
