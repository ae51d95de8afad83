"""Importing Keras' and TF-slim's MobileNet v1: every weight lands, and the logits are theirs."""
import numpy as np
import pytest

from mobilenet import errors, model, pretrained


def keras_mobilenet(alpha: float, resolution: int, classes: int = 1000, seed: int = 0):
  """Keras' MobileNet with random weights and random BatchNorm statistics (weights=None, offline)."""
  import keras  # pylint: disable=import-outside-toplevel
  net = keras.applications.MobileNet(weights=None, alpha=alpha, classes=classes,
                                     input_shape=(resolution, resolution, 3),
                                     classifier_activation=None)
  rng = np.random.default_rng(seed)
  for layer in net.layers:
    values = []
    for weight in layer.weights:
      shape, name = tuple(weight.shape), weight.path.split("/")[-1]
      if name in ("gamma", "moving_variance"):
        values.append(rng.uniform(0.5, 1.5, shape))
      elif name in ("beta", "moving_mean", "bias"):
        values.append(rng.normal(0, 0.2, shape))
      else:  # kernels, scaled so that activations keep their size through 28 layers
        fan_in = np.prod(shape[:-1]) if "dw" not in layer.name else np.prod(shape[:2])
        values.append(rng.normal(0, np.sqrt(2.0 / fan_in), shape))
    if values:
      layer.set_weights([v.astype(np.float32) for v in values])
  return net


def images(resolution: int, count: int = 2, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (count, resolution, resolution, 3)
                                             ).astype(np.float32)


def our_logits(config, variables, x) -> np.ndarray:
  return np.asarray(model.from_config(config.model).apply(variables, x, train=False))


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
  return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("alpha,resolution", [(1.0, 224), (0.75, 192), (0.5, 160), (0.25, 128)])
def test_keras_import_reproduces_keras_logits(alpha, resolution):
  net = keras_mobilenet(alpha, resolution)
  config, variables = pretrained.from_keras(net)
  x = images(resolution)
  assert (config.model.alpha, config.data.resolution) == (alpha, resolution)
  assert (config.model.activation, config.model.num_classes) == ("relu6", 1000)
  assert relative_error(our_logits(config, variables, x), np.asarray(net(x, training=False))) < 1e-5


def slim_checkpoint(net, prefix: str, *, extra: dict | None = None) -> str:
  """`net`'s weights written as TF-slim names them (MobilenetV1/Conv2d_<i>_depthwise/...)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tensors = {"global_step": np.array(7, np.int64)}
  for layer in net.layers:
    for weight in layer.weights:
      field = weight.path.split("/")[-1]
      if layer.name == "conv_preds":
        tensors[f"MobilenetV1/Logits/Conv2d_1c_1x1/{'weights' if field == 'kernel' else 'biases'}"] = (
            weight.numpy())
        continue
      base = layer.name.removesuffix("_bn")
      if base == "conv1":
        scope, kind = "MobilenetV1/Conv2d_0", "conv"
      else:
        _, kind, index = base.split("_")
        scope = f"MobilenetV1/Conv2d_{index}_{'depthwise' if kind == 'dw' else 'pointwise'}"
      if layer.name.endswith("_bn"):
        tensors[f"{scope}/BatchNorm/{field}"] = weight.numpy()
      else:
        tensors[f"{scope}/{'depthwise_weights' if kind == 'dw' else 'weights'}"] = weight.numpy()
  tensors.update(extra or {})
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(tensors[name]) for name in names])
  return prefix


def test_slim_checkpoint_imports_with_or_without_the_background_class(tmp_path):
  net = keras_mobilenet(0.5, 128, classes=1001, seed=2)
  prefix = slim_checkpoint(net, str(tmp_path / "mobilenet_v1_0.5_128.ckpt"))
  x = images(128)
  theirs = np.asarray(net(x, training=False))
  config, variables = pretrained.from_slim_checkpoint(prefix, resolution=128, keep_background=True)
  assert config.model.num_classes == 1001
  assert relative_error(our_logits(config, variables, x), theirs) < 1e-5
  config, variables = pretrained.from_slim_checkpoint(prefix, resolution=128)
  assert (config.model.num_classes, config.model.alpha) == (1000, 0.5)
  assert relative_error(our_logits(config, variables, x), theirs[:, 1:]) < 1e-5


def test_slim_checkpoint_with_a_foreign_variable_is_refused_naming_it(tmp_path):
  net = keras_mobilenet(0.25, 128, classes=1001)
  prefix = slim_checkpoint(net, str(tmp_path / "model.ckpt"),
                           extra={"MobilenetV1/Conv2d_14_pointwise/weights": np.zeros((1, 1, 4, 4))})
  with pytest.raises(errors.IncompatibleCheckpoint, match="Conv2d_14_pointwise/weights"):
    pretrained.from_slim_checkpoint(prefix)


def test_shape_mismatch_is_refused_naming_the_variable():
  net = keras_mobilenet(0.25, 128)
  config, variables = pretrained.from_keras(net)
  arrays = {"params/conv_0/conv/kernel": np.zeros((3, 3, 3, 9))}
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  flat = {**traverse_util.flatten_dict(variables, sep="/"), **arrays}
  with pytest.raises(errors.IncompatibleCheckpoint, match=r"params/conv_0/conv/kernel has shape \(3, 3, 3, 9\)"):
    pretrained.assemble(config, flat, "test")


def test_keras_model_without_its_classifier_is_refused():
  import keras  # pylint: disable=import-outside-toplevel
  net = keras.applications.MobileNet(weights=None, alpha=0.25, include_top=False,
                                     input_shape=(128, 128, 3))
  with pytest.raises(errors.IncompatibleCheckpoint, match="include_top=False"):
    pretrained.from_keras(net)
