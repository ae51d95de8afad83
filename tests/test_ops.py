"""Every conv implementation computes the grouped/standard convolution's function and gradients."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import base
from mobilenet import cpu_kernels, model, ops
from mobilenet.ops import depthwise

NHWC = ("NHWC", "HWIO", "NHWC")


def _small_model(**fields):
  """A 5-class MobileNet-0.25 of the base config, with `fields` of config.model changed."""
  model_config = base.get_base_config().model
  model_config.update(num_classes=5, alpha=0.25, **fields)
  return model.from_config(model_config)


def _grouped(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC,
                                  feature_group_count=x.shape[-1])


def _shifted(x, kernel, strides, padding):
  return ops.shifted_depthwise_conv(x, kernel, strides, padding, dimension_numbers=NHWC,
                                    feature_group_count=x.shape[-1])


def _ffi(x, kernel, strides, padding):
  return ops.ffi_depthwise_conv(x, kernel, strides, padding, dimension_numbers=NHWC,
                                feature_group_count=x.shape[-1])


@pytest.fixture
def compiled_kernel():
  if not cpu_kernels.depthwise_available():
    pytest.skip("the compiled CPU depthwise kernel did not build here (no C++ compiler?)")


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _value_and_grads(conv, x, kernel, cotangent, **conv_args):
  """Output and d<output, cotangent>/d(x, kernel): checks the custom VJPs against autodiff."""
  loss = lambda x, k: jnp.sum(conv(x, k, **conv_args) * cotangent)
  return conv(x, kernel, **conv_args), jax.grad(loss, argnums=(0, 1))(x, kernel)


def _assert_same_values_and_grads(conv, reference, x, kernel, conv_args, seed):
  """conv's output and its gradients match the reference's under one random cotangent."""
  cotangent = _random(reference(x, kernel, **conv_args).shape, seed=seed)
  (expected_y, expected_grads), (y, grads) = jax.jit(lambda x, k: (
      _value_and_grads(reference, x, k, cotangent, **conv_args),
      _value_and_grads(conv, x, k, cotangent, **conv_args)))(x, kernel)
  _assert_close(y, expected_y, "output")
  _assert_close(grads[0], expected_grads[0], "d input")
  _assert_close(grads[1], expected_grads[1], "d kernel")


def _assert_close(actual, expected, name, tolerance=2e-5):
  # Relative to the largest magnitude: sums over many pixels carry float32 rounding.
  scale = float(jnp.max(jnp.abs(expected))) + 1e-6
  np.testing.assert_allclose(np.asarray(actual) / scale, np.asarray(expected) / scale,
                             atol=tolerance, rtol=0, err_msg=name)


# (stride, spatial size, channels, padding): strides 1 and 2 on odd, even and
# mixed sizes, with TF-style 'SAME' (stride 2 on even input pads 0 before,
# 1 after), 'VALID' and explicit, uneven pads.
DEPTHWISE_CASES = [
    (1, (7, 7), 8, "SAME"),
    (2, (7, 7), 8, "SAME"),
    (1, (8, 8), 1, "SAME"),
    (2, (8, 8), 24, "SAME"),
    (2, (6, 9), 3, "SAME"),
    (1, (6, 9), 24, "VALID"),
    (2, (8, 7), 8, "VALID"),
    (2, (8, 7), 8, ((0, 2), (1, 0))),
    (1, (5, 6), 16, ((2, 0), (0, 1))),
]


@pytest.mark.parametrize("stride, size, channels, padding", DEPTHWISE_CASES)
def test_shifted_depthwise_matches_grouped(stride, size, channels, padding):
  x = _random((2, *size, channels), seed=0)
  kernel = _random((3, 3, 1, channels), seed=1)
  args = dict(strides=(stride, stride), padding=padding)
  _assert_same_values_and_grads(_shifted, _grouped, x, kernel, args, seed=2)


# (batch, stride, spatial size, channels, padding): batch 1 and 3, odd and mixed sizes, channel
# counts that are not multiples of a vector, and every padding the kernel takes.
FFI_DEPTHWISE_CASES = [
    (3, 1, (7, 7), 5, "SAME"),
    (3, 2, (7, 7), 5, "SAME"),
    (1, 1, (9, 5), 13, "SAME"),
    (1, 2, (9, 5), 13, "SAME"),
    (3, 2, (8, 8), 19, "SAME"),  # TF SAME at stride 2 on even sizes: no pad before, one after
    (1, 1, (12, 10), 40, "SAME"),
    (3, 2, (10, 6), 24, "SAME"),
    (1, 1, (6, 9), 3, "VALID"),
    (3, 2, (8, 7), 8, "VALID"),
    (1, 2, (8, 7), 8, ((0, 2), (1, 0))),
    (3, 1, (5, 6), 17, ((2, 0), (0, 1))),
]


@pytest.mark.parametrize("batch, stride, size, channels, padding", FFI_DEPTHWISE_CASES)
def test_ffi_depthwise_matches_grouped(compiled_kernel, batch, stride, size, channels, padding):
  x = _random((batch, *size, channels), seed=20)
  kernel = _random((3, 3, 1, channels), seed=21)
  args = dict(strides=(stride, stride), padding=padding)
  _assert_same_values_and_grads(_ffi, _grouped, x, kernel, args, seed=22)


def test_ffi_depthwise_mixed_strides_and_a_large_layer(compiled_kernel):
  """Strides (2, 1), and a MobileNet-sized layer whose rows are split into many work items."""
  for shape, strides in (((2, 9, 10, 6), (2, 1)), ((2, 28, 28, 64), (1, 1))):
    x = _random(shape, seed=23)
    kernel = _random((3, 3, 1, shape[-1]), seed=24)
    _assert_same_values_and_grads(_ffi, _grouped, x, kernel,
                                  dict(strides=strides, padding="SAME"), seed=25)


def test_ffi_depthwise_passes_other_dtypes_and_convolutions_on():
  """bfloat16 goes to `shifted` (which accumulates in float32), dense kernels to lax."""
  x = _random((2, 8, 8, 16), seed=26)
  kernel = _random((3, 3, 1, 16), seed=27)
  y = _ffi(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1), "SAME")
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(y, np.float32),
      np.asarray(_shifted(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1), "SAME"),
                 np.float32))
  dense = _random((3, 3, 16, 5), seed=28)
  np.testing.assert_allclose(
      ops.ffi_depthwise_conv(x, dense, (1, 1), "SAME", dimension_numbers=NHWC),
      lax.conv_general_dilated(x, dense, (1, 1), "SAME", dimension_numbers=NHWC), rtol=1e-6)


def test_shifted_depthwise_mixed_strides_and_jit():
  x = _random((1, 9, 10, 4), seed=3)
  kernel = _random((3, 3, 1, 4), seed=4)
  args = dict(strides=(2, 1), padding="SAME")
  cotangent = _random(_grouped(x, kernel, **args).shape, seed=5)
  expected, actual = jax.jit(lambda x, k: (
      _value_and_grads(_grouped, x, k, cotangent, **args),
      _value_and_grads(_shifted, x, k, cotangent, **args)))(x, kernel)
  for a, e, name in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), ("y", "dx", "dk")):
    _assert_close(a, e, name)


def test_shifted_depthwise_kernel_grad_over_groups_of_images(monkeypatch):
  """Batches larger than one fused loop are summed as several groups of images."""
  monkeypatch.setattr(depthwise, "_KERNEL_GRAD_IMAGES_PER_LOOP", 2)
  x = _random((6, 7, 8, 5), seed=14)
  kernel = _random((3, 3, 1, 5), seed=15)
  for stride in (1, 2):
    args = dict(strides=(stride, stride), padding="SAME")
    cotangent = _random(_grouped(x, kernel, **args).shape, seed=16)
    expected, actual = jax.jit(lambda x, k: (
        _value_and_grads(_grouped, x, k, cotangent, **args),
        _value_and_grads(_shifted, x, k, cotangent, **args)))(x, kernel)
    _assert_close(actual[1][1], expected[1][1], f"d kernel, stride {stride}")


def test_shifted_depthwise_bfloat16_accumulates_in_float32():
  x = _random((2, 8, 8, 16), seed=6)
  kernel = _random((3, 3, 1, 16), seed=7)
  expected = _grouped(x, kernel, (1, 1), "SAME")
  y = _shifted(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1), "SAME")
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(expected), atol=0.1, rtol=0.02)


def test_shifted_depthwise_falls_back_to_lax_for_other_convolutions():
  x = _random((1, 6, 6, 4), seed=8)
  dense = _random((3, 3, 4, 5), seed=9)
  np.testing.assert_allclose(
      ops.shifted_depthwise_conv(x, dense, (1, 1), "SAME", dimension_numbers=NHWC),
      lax.conv_general_dilated(x, dense, (1, 1), "SAME", dimension_numbers=NHWC), rtol=1e-6)


def _pointwise(impl, x, kernel, strides, padding):
  return ops.pointwise_conv_fn(impl)(x, kernel, strides, padding, dimension_numbers=NHWC)


@pytest.mark.parametrize("stride, size, channels", [
    (1, (7, 7), (3, 5)), (2, (7, 7), (16, 32)), (2, (8, 6), (3, 5)), (1, (8, 6), (16, 32))])
def test_matmul_pointwise_matches_conv(stride, size, channels):
  x = _random((2, *size, channels[0]), seed=10)
  kernel = _random((1, 1, *channels), seed=11)
  args = dict(strides=(stride, stride), padding="SAME")
  conv = lambda x, k, **a: _pointwise("conv", x, k, **a)
  matmul = lambda x, k, **a: _pointwise("matmul", x, k, **a)
  _assert_same_values_and_grads(matmul, conv, x, kernel, args, seed=12)


@pytest.mark.parametrize("stride, size, channels, padding", [
    (1, (7, 7), (3, 5), "SAME"), (2, (7, 7), (8, 16), "SAME"), (2, (8, 6), (3, 5), "SAME"),
    (1, (8, 6), (16, 8), "VALID"), (2, (9, 8), (4, 4), ((0, 2), (1, 0)))])
def test_matmul_grad_standard_conv_matches_lax(stride, size, channels, padding):
  x = _random((3, *size, channels[0]), seed=17)
  kernel = _random((3, 3, *channels), seed=18)
  args = dict(strides=(stride, stride), padding=padding)
  lax_conv = lambda x, k, strides, padding: ops.standard_conv_fn("conv")(
      x, k, strides, padding, dimension_numbers=NHWC)
  matmul_grad = lambda x, k, strides, padding: ops.standard_conv_fn("matmul_grad")(
      x, k, strides, padding, dimension_numbers=NHWC)
  _assert_same_values_and_grads(matmul_grad, lax_conv, x, kernel, args, seed=19)


def test_auto_picks_by_backend(monkeypatch):
  resolved = lambda: (ops.resolve_depthwise_impl("auto"), ops.resolve_pointwise_impl("auto"),
                      ops.resolve_standard_impl("auto"))
  monkeypatch.setattr(ops, "_on_cpu", lambda: True)
  monkeypatch.setattr(cpu_kernels, "depthwise_available", lambda: True)
  assert resolved() == ("ffi", "matmul", "matmul_grad")
  monkeypatch.setattr(cpu_kernels, "depthwise_available", lambda: False)
  assert resolved() == ("shifted", "matmul", "matmul_grad")
  monkeypatch.setattr(ops, "_on_cpu", lambda: False)
  assert resolved() == ("grouped", "conv", "conv")
  assert ops.depthwise_conv_fn("grouped") is lax.conv_general_dilated
  assert ops.pointwise_conv_fn("conv") is lax.conv_general_dilated
  assert ops.standard_conv_fn("conv") is lax.conv_general_dilated


@pytest.mark.parametrize("field, call", [
    ("depthwise_impl", lambda: ops.depthwise_conv_fn("fast")),
    ("pointwise_impl", lambda: ops.pointwise_conv_fn("dense")),
    ("standard_impl", lambda: ops.standard_conv_fn("im2col")),
])
def test_unknown_impl_names_the_field(field, call):
  with pytest.raises(ValueError, match=field):
    call()


def _model_outputs(impls, dtype, variant="dws", mode="eval"):
  """For each (depthwise, pointwise, standard) impl, a dict of what the tests compare: in `eval`
  mode the eval logits, the train logits and the grads through inference-mode BatchNorm; in
  `train` mode the train logits and the training-mode grads. Only what is compared is computed:
  the 27-layer backward passes of four impls are most of this file's time."""
  batch, resolution = 4, 40
  images = _random((batch, resolution, resolution, 3), seed=13).astype(dtype)
  labels = jnp.arange(batch) % 5
  make = lambda dw, pw, std: _small_model(
      variant=variant, depthwise_impl=dw, pointwise_impl=pw, standard_impl=std,
      dtype=jnp.dtype(dtype).name)
  variables = jax.jit(make(*impls[0]).init)(jax.random.key(0), images)

  def outputs(net, variables, images):
    def forward(params, train):
      logits = net.apply({**variables, "params": params}, images, train=train,
                         rngs={"dropout": jax.random.key(1)},
                         mutable=["batch_stats"] if train else False)
      return logits[0] if train else logits

    def loss(params, train):
      logits = forward(params, train)
      return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(batch), labels]), logits
    grad = jax.value_and_grad(loss, has_aux=True)
    if mode == "train":
      (_, train_logits), train_grads = grad(variables["params"], True)
      return {"train_logits": train_logits, "train_grads": train_grads}
    (_, eval_logits), eval_grads = grad(variables["params"], False)
    return {"eval_logits": eval_logits, "eval_grads": eval_grads,
            "train_logits": forward(variables["params"], True)}

  # Arrays go in as arguments: closed over, they would be constants that XLA folds at length.
  return jax.jit(lambda v, x: [outputs(make(*impl), v, x) for impl in impls])(variables, images)


# `auto` is what training uses (on CPU: ffi where the kernel builds, else shifted; matmul;
# matmul_grad); shifted also explicitly, and matmul alone, which pin down the others.
MODEL_IMPLS = [("grouped", "conv", "conv"), ("auto", "auto", "auto"),
               ("shifted", "auto", "auto"), ("grouped", "matmul", "conv")]


def _assert_grads_close(grads, reference, name, tolerance):
  for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(reference)):
    _assert_close(a, e, f"{name} {jax.tree_util.keystr(path)}", tolerance)


def test_model_impls_share_params_logits_and_grads():
  """A checkpoint trained with one implementation evaluates (and trains) the same with another.

  In float32, logits and the gradients through inference-mode BatchNorm match to rounding.
  """
  expected, *others = _model_outputs(MODEL_IMPLS, jnp.float32)
  for impl, actual in zip(MODEL_IMPLS[1:], others):
    _assert_close(actual["eval_logits"], expected["eval_logits"], f"{'/'.join(impl)} eval logits")
    _assert_close(actual["train_logits"], expected["train_logits"],
                  f"{'/'.join(impl)} train logits")
    _assert_grads_close(actual["eval_grads"], expected["eval_grads"],
                        f"{'/'.join(impl)} eval-mode grad", 1e-4)


def test_model_impls_share_training_mode_grads_in_float64():
  """Training-mode BatchNorm divides by batch spreads over as few as 16 values here (40 px: 20,
  10, 5, 3, 2 px, odd sizes at stride 2 included), which amplifies float32 rounding through 27
  layers by ~1e3 (the float32 grouped reference is itself ~1e-3 off float64). In float64 the
  same comparison is tight; a misplaced tap or pad would be off by O(1). (The compiled kernel
  is float32 only: in float64 `auto` runs `shifted`, so the explicit `shifted` row is left out.)"""
  impls = [impl for impl in MODEL_IMPLS if impl[0] != "shifted"]
  with jax.enable_x64(True):
    expected, *others = _model_outputs(impls, jnp.float64, mode="train")
  for impl, actual in zip(impls[1:], others):
    _assert_grads_close(actual["train_grads"], expected["train_grads"],
                        f"{'/'.join(impl)} train-mode grad", 1e-8)


def test_conv_mobilenet_matmul_grad_matches_lax_in_float64():
  """Conv MobileNet: every layer a full 3x3 conv; see the float64 test above for why float64."""
  impls = [("grouped", "conv", "conv"), ("grouped", "conv", "matmul_grad")]
  with jax.enable_x64(True):
    expected, actual = _model_outputs(impls, jnp.float64, variant="conv", mode="train")
  _assert_close(actual["train_logits"], expected["train_logits"], "train logits", 1e-10)
  _assert_grads_close(actual["train_grads"], expected["train_grads"], "train-mode grad", 1e-8)


def test_model_auto_impls_avoid_grouped_convolutions_on_cpu():
  net = _small_model()
  images = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(net.init, jax.random.key(0), images)
  # Some convs sit inside custom-VJP calls: read the groups off the whole printed jaxpr.
  jaxpr = str(jax.make_jaxpr(lambda v, x: net.apply(v, x))(variables, images))
  groups = [int(g) for g in re.findall(r"feature_group_count=(\d+)", jaxpr)]
  if jax.default_backend() == "cpu":
    assert groups == [1]  # only the first 3x3
  else:
    assert len(groups) == 27 and max(groups) > 1
