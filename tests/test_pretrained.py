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


SYNSETS = ("n01440764", "n02102040", "n03000684")  # ImageNet columns 0, 217, 491


def test_synset_folders_map_to_their_imagenet_columns():
  from mobilenet import imagenet  # pylint: disable=import-outside-toplevel
  assert list(imagenet.class_columns(SYNSETS, 1000)) == [0, 217, 491]
  assert list(imagenet.class_columns(SYNSETS, 1001)) == [1, 218, 492]
  with pytest.raises(errors.ConfigError, match="'ant' is no ImageNet synset"):
    imagenet.class_columns(("ant",), 1000)


def rigged_import(workdir, column: int) -> None:
  """An imported random 0.25 MobileNet at 32 px whose classifier always says ImageNet class
  `column`, written as a workdir."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  config, variables = pretrained.from_keras(keras_mobilenet(0.25, 32))
  classifier = variables["params"]["classifier"]
  classifier["kernel"] = jnp.zeros_like(classifier["kernel"])
  classifier["bias"] = jnp.zeros_like(classifier["bias"]).at[column].set(10.0)
  pretrained.save_workdir(config, variables, str(workdir))


@pytest.mark.end_to_end
def test_imported_imagenet_model_evaluates_on_a_synset_folder_through_its_classes(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  from tests.conftest import run_script, write_image_folder  # pylint: disable=import-outside-toplevel
  folder = write_image_folder(tmp_path / "synsets", classes=SYNSETS, val_per_class=2)
  workdir = tmp_path / "imported"
  rigged_import(workdir, column=217)  # SYNSETS[1]
  run_script("eval.py", f"--workdir={workdir}", f"--config.data.folder={folder}",
             "--config.train.inference_benchmark_s=0.1")
  record = json.loads((workdir / "eval_results.json").read_text())
  assert record["top1"] == pytest.approx(1 / 3)  # every image is called SYNSETS[1]
  assert record["scored_on_classes"] == "3 of the model's 1000"
  assert record["init_from"] == "keras:mobilenet_0.25_32"


@pytest.mark.end_to_end
def test_fine_tuning_from_an_import_trains_a_new_classifier_and_records_its_source(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  from tests.conftest import run_script, train_flags, write_image_folder  # pylint: disable=import-outside-toplevel
  folder = write_image_folder(tmp_path / "images")
  source = tmp_path / "imported"
  rigged_import(source, column=0)
  workdir = tmp_path / "tuned"
  result = run_script("train.py", *train_flags(folder, workdir, epochs=1),
                      "--config.model.activation=relu6", f"--config.train.init_from={source}")
  assert "classifier initialised afresh: 1000 classes there, 3 here" in result.stdout
  record = json.loads((workdir / "eval_results.json").read_text())
  assert record["init_from"] == str(source)


def test_fine_tuning_from_another_activation_is_refused_naming_the_field(tmp_path):
  from configs import dws  # pylint: disable=import-outside-toplevel
  source = tmp_path / "imported"
  rigged_import(source, column=0)
  config = dws.get_config("alpha=0.25,resolution=32")
  config.train.init_from = str(source)
  with pytest.raises(errors.ConfigError, match=r"model.activation='relu6', but this config has "
                                               r"'relu'; set --config.model.activation=relu6"):
    pretrained.check_init_from(config)


@pytest.mark.end_to_end
def test_import_command_writes_a_workdir_from_a_keras_weights_file(tmp_path):
  from tests.conftest import run_script  # pylint: disable=import-outside-toplevel
  net = keras_mobilenet(0.5, 64)
  path = tmp_path / "mobilenet.weights.h5"
  net.save_weights(path)
  workdir = tmp_path / "imported"
  result = run_script("-m", "tools.import_weights", f"--workdir={workdir}",
                      f"--keras_file={path}", "--alpha=0.5", "--resolution=64")
  assert "MobileNet alpha=0.5 at 64 px, 1000 classes" in result.stdout
  config, variables = pretrained.from_workdir(str(workdir))
  x = images(64)
  assert relative_error(our_logits(config, variables, x), np.asarray(net(x, training=False))) < 1e-5
