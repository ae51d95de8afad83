"""The Flax model is the paper's network: layer kinds, kernel shapes, output shapes, dtypes."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from mobilenet import errors, model, ops


def _model_config(**fields):
  model_config = base.get_base_config().model
  model_config.update(fields)
  return model_config


def _net(**fields):
  """The model of the base config with `fields` of config.model changed."""
  return model.from_config(_model_config(**fields))


def _init(net, resolution=64, batch=2):
  images = jnp.zeros((batch, resolution, resolution, 3))
  return jax.eval_shape(net.init, jax.random.key(0), images), images


def _grouped_convolutions(net, variables, images):
  """feature_group_count of every convolution in the traced forward pass, those inside
  custom-VJP calls included (read off the printed jaxpr, which shows nested ones too)."""
  jaxpr = str(jax.make_jaxpr(lambda v, x: net.apply(v, x))(variables, images))
  return [int(groups) for groups in re.findall(r"feature_group_count=(\d+)", jaxpr)]


def test_dws_depthwise_kernels_are_one_filter_per_channel():
  net = _net(variant="dws")
  variables, _ = _init(net)
  params = variables["params"]
  depthwise = [name for name in params if name.endswith("_dw")]
  assert len(depthwise) == 13
  for name in depthwise:
    kernel = params[name]["conv"]["kernel"]
    channels = kernel.shape[-1]
    assert kernel.shape == (3, 3, 1, channels), name
  for name in (n for n in params if n.endswith("_pw")):
    assert params[name]["conv"]["kernel"].shape[:3] == (1, 1, params[name]["conv"]["kernel"].shape[2])


def test_grouped_impl_runs_feature_group_count_convolutions():
  net = _net(variant="dws", depthwise_impl="grouped")
  variables, images = _init(net)
  groups = _grouped_convolutions(net, variables, images)
  assert sorted(g for g in groups if g > 1) == sorted(
      layer.in_channels for layer in net.layers if layer.kind == model.CONV_DW_3X3)


def test_conv_variant_has_no_grouped_convolution():
  net = _net(variant="conv")
  variables, images = _init(net)
  params = variables["params"]
  assert not any(name.endswith(("_dw", "_pw")) for name in params)
  assert all(params[f"block_{i:02d}_conv"]["conv"]["kernel"].shape[:2] == (3, 3)
             for i in range(1, 14))
  assert set(_grouped_convolutions(net, variables, images)) == {1}


def test_shallow_variant_drops_the_five_14x14_blocks():
  names = [layer.name for layer in model.architecture("shallow")]
  for index in model.SHALLOW_REMOVED_BLOCKS:
    assert f"block_{index:02d}_dw" not in names
  assert len(names) == len(model.architecture("dws")) - 10


def test_last_depthwise_layer_keeps_stride_one():
  last_dw = [l for l in model.architecture("dws") if l.kind == model.CONV_DW_3X3][-1]
  assert last_dw.stride == 1
  assert model.total_stride() == 32


def test_width_multiplier_scales_every_layer_including_the_first():
  layers = model.architecture("dws", alpha=0.5)
  assert layers[0].out_channels == 16
  assert layers[-1].in_channels == 512


@pytest.mark.parametrize("variant,alpha,resolution,num_classes", [
    ("dws", 1.0, 224, 1000),
    ("dws", 0.25, 96, 10),
    ("conv", 0.5, 128, 10),
    ("shallow", 0.75, 160, 37),
    ("dws", 1.0, 33, 5),
])
def test_logits_shape_for_any_resolution_width_and_class_count(variant, alpha, resolution,
                                                                num_classes):
  net = _net(num_classes=num_classes, variant=variant, alpha=alpha)
  variables, images = _init(net, resolution)
  logits = jax.eval_shape(net.apply, variables, images)
  assert logits.shape == (2, num_classes)


def test_bfloat16_computation_keeps_float32_parameters():
  net = _net(dtype="bfloat16", alpha=0.25)
  images = jnp.ones((2, 64, 64, 3))
  variables = net.init(jax.random.key(0), images)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  jaxpr = str(jax.make_jaxpr(lambda v: net.apply(v, images))(variables))
  assert "bf16" in jaxpr
  logits = net.apply(variables, images)
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_training_mode_updates_batch_norm_statistics_and_applies_dropout():
  net = _net(alpha=0.25, dropout_rate=0.5)
  images = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
  variables = net.init(jax.random.key(0), images)
  logits_a, updates = net.apply(variables, images, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(2)})
  logits_b, _ = net.apply(variables, images, train=True, mutable=["batch_stats"],
                          rngs={"dropout": jax.random.key(3)})
  assert not jnp.allclose(logits_a, logits_b)
  before = variables["batch_stats"]["conv_0"]["bn"]["mean"]
  assert not jnp.allclose(updates["batch_stats"]["conv_0"]["bn"]["mean"], before)
  assert jnp.allclose(net.apply(variables, images), net.apply(variables, images))


@pytest.mark.parametrize("kwargs,field", [
    (dict(variant="resnet"), "variant"),
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=0.01), "alpha"),
])
def test_bad_hyperparameters_fail_with_a_message_naming_the_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    model.architecture(**kwargs)


def test_from_config_resolves_the_implementations_once_and_takes_the_variant_override():
  model_config = _model_config(variant="dws", depthwise_impl="shifted", pointwise_impl="conv",
                               standard_impl="auto")
  net = model.from_config(model_config, variant="shallow")
  assert (net.variant, net.num_classes, net.dropout_rate) == ("shallow", 10, 0.2)
  assert net.depthwise_conv is ops.shifted_depthwise_conv
  assert net.pointwise_conv is ops.pointwise_conv_fn("conv")
  assert net.standard_conv is ops.standard_conv_fn("auto")
  assert model.from_config(model_config).variant == "dws"


def test_batch_norm_momentum_comes_from_the_config():
  """Running means start at 0, so one update leaves (1 - momentum) x the batch mean."""
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  running_means = {}
  for momentum in (0.0, 0.5):
    net = _net(alpha=0.25, bn_momentum=momentum)
    variables = net.init(jax.random.key(0), images)
    _, updates = net.apply(variables, images, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(2)})
    running_means[momentum] = updates["batch_stats"]["block_13_pw"]["bn"]["mean"]
  assert np.any(running_means[0.0] != 0)
  np.testing.assert_array_equal(running_means[0.5], 0.5 * running_means[0.0])


def test_the_base_config_passes_check_config():
  model.check_config(base.get_base_config().model)


@pytest.mark.parametrize("fields,message", [
    (dict(variant="resnet"), "config.model.variant must be one of dws, conv, shallow; "
     "got 'resnet'"),
    (dict(alpha=0.0), "config.model.alpha must be > 0; got 0.0"),
    (dict(alpha=0.01), "config.model.alpha=0.01 leaves the first conv with no channels"),
    (dict(num_classes=0), "config.model.num_classes must be >= 1; got 0"),
    (dict(dtype="float16"), "config.model.dtype must be one of float32, bfloat16; got 'float16'"),
    (dict(depthwise_impl="fast"), "config.model.depthwise_impl must be one of auto, grouped, "
     "shifted, ffi; got 'fast'"),
    (dict(pointwise_impl="dense"), "config.model.pointwise_impl must be one of auto, conv, "
     "matmul; got 'dense'"),
    (dict(standard_impl="im2col"), "config.model.standard_impl must be one of auto, conv, "
     "matmul_grad; got 'im2col'"),
    (dict(dropout_rate=1.0), "config.model.dropout_rate must be in [0, 1); got 1.0"),
])
def test_check_config_names_the_bad_field_in_a_config_error(fields, message):
  with pytest.raises(errors.ConfigError) as error:
    model.check_config(_model_config(**fields))
  assert str(error.value).startswith(message)
