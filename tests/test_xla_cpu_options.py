"""The XLA:CPU options training compiles with: convolutions stay with XLA, results do not move."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import conv
from mobilenet import devices, ops, steps
from mobilenet.ops import xla_cpu


def _conv_kernel_gradient(options):
  rng = np.random.default_rng(0)
  # 128 channels: a convolution small enough for XLA to keep is not handed to YNNPACK at all.
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 128)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 128, 128)), jnp.float32)
  loss = lambda k: jnp.sum(lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
  compiled = jax.jit(jax.grad(loss), compiler_options=options).lower(kernel).compile()
  return compiled.as_text(), compiled(kernel)


def test_training_keeps_convolutions_from_ynnpack_and_computes_the_same_gradient():
  ours, ours_gradient = _conv_kernel_gradient(ops.compiler_options())
  default, default_gradient = _conv_kernel_gradient(ops.compiler_options(ynn_convolutions=True))
  assert "__ynn_fusion" in default and "__ynn_fusion" not in ours
  np.testing.assert_allclose(ours_gradient, default_gradient, rtol=1e-4,
                             atol=1e-4 * float(jnp.abs(default_gradient).max()))


def test_an_xla_flags_choice_of_ynnpack_fusions_is_left_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
  assert ops.compiler_options() == {}


def test_another_jaxlib_compiles_with_its_own_defaults(monkeypatch):
  assert ops.compiler_options() != {}
  monkeypatch.setattr(xla_cpu.jaxlib.version, "__version__", "0.11.0")
  assert ops.compiler_options() == {}


def test_the_train_and_eval_steps_compile_with_the_options(monkeypatch):
  """An option XLA refuses makes each program fail to compile: proof that each passes them on."""
  monkeypatch.setattr(ops, "compiler_options",
                      lambda: {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"})
  config = conv.get_config("alpha=0.25,resolution=32")
  config.train.global_batch_size = 2
  training = steps.build(config, devices.device_mesh(jax.devices()[:1]), steps_per_epoch=1,
                         total_steps=1)
  state = training.abstract_state
  batch = {"image": jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
  variables = {"params": state.params, "batch_stats": state.batch_stats,
               "ema_params": state.ema_params}
  eval_batch = {**batch, "mask": jax.ShapeDtypeStruct((2,), jnp.bool_)}
  for lowered in (training.init.lower(), training.train.lower(state, batch),
                  training.evaluation.eval.lower(variables, eval_batch)):
    with pytest.raises(Exception, match="NOT_A_FUSION_TYPE"):
      lowered.compile()
