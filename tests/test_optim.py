"""Optimizer pieces: the weight-decay mask, TensorFlow-style RMSprop, the schedules."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from mobilenet import model, optim


def _params(variant="dws"):
  model_config = base.get_base_config().model
  model_config.update(variant=variant, alpha=0.25)
  net = model.from_config(model_config)
  return jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]


def _flat(tree):
  return {"/".join(k.key for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("decay_depthwise", [False, True])
def test_weight_decay_mask_spares_batchnorm_biases_and_optionally_depthwise(decay_depthwise):
  mask = _flat(optim.weight_decay_mask(_params(), decay_depthwise=decay_depthwise))
  assert mask["classifier/kernel"] and not mask["classifier/bias"]
  assert mask["block_01_pw/conv/kernel"] and mask["conv_0/conv/kernel"]
  assert mask["block_01_dw/conv/kernel"] is decay_depthwise
  assert not any(v for k, v in mask.items() if "/bn/" in k)


def test_weight_decay_only_shrinks_masked_parameters():
  config = base.get_base_config().optimizer
  config.update(name="sgd", momentum=0.0, weight_decay=0.5, learning_rate=1.0,
                scale_learning_rate_with_batch=False)
  params = jax.tree.map(jnp.ones_like, _params())
  tx = optim.create_optimizer(config, optax.constant_schedule(1.0), params)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  flat = _flat(updates)
  assert float(flat["block_01_pw/conv/kernel"].mean()) == pytest.approx(-0.5)
  assert float(jnp.abs(flat["block_01_dw/conv/kernel"]).max()) == 0.0
  assert float(jnp.abs(flat["conv_0/bn/scale"]).max()) == 0.0


def test_rmsprop_matches_tensorflows_update_rule():
  """TF: ms = rho ms + (1-rho) g^2 with ms0 = 1; mom = mu mom + lr g / sqrt(ms + eps); w -= mom."""
  config = base.get_base_config().optimizer
  config.update(name="rmsprop", rmsprop_decay=0.9, momentum=0.9, epsilon=1.0, weight_decay=0.0)
  lr = 0.01
  tx = optim.create_optimizer(config, optax.constant_schedule(lr), {"w": jnp.zeros(3)})
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  state = tx.init(params)
  ms, mom, w = np.ones(3), np.zeros(3), np.array([1.0, -2.0, 3.0])
  for step in range(5):
    grad = np.array([0.5, -1.0, 2.0]) * (step + 1)
    updates, state = tx.update({"w": jnp.asarray(grad)}, state, params)
    params = optax.apply_updates(params, updates)
    ms = 0.9 * ms + 0.1 * grad ** 2
    mom = 0.9 * mom + lr * grad / np.sqrt(ms + 1.0)
    w = w - mom
  np.testing.assert_allclose(params["w"], w, rtol=1e-5)


def test_warmup_cosine_rises_to_the_batch_scaled_peak_and_ends_at_zero():
  config = base.get_base_config().optimizer
  config.update(learning_rate=0.1, warmup_epochs=1.0)
  schedule = optim.learning_rate_schedule(config, global_batch_size=512, steps_per_epoch=10,
                                          total_steps=100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(0.2)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_flat_cosine_holds_the_peak_after_warmup_then_anneals_to_zero():
  config = base.get_base_config().optimizer
  config.update(schedule="flat_cosine", learning_rate=0.256, warmup_epochs=1.0, flat_fraction=0.5)
  schedule = optim.learning_rate_schedule(config, global_batch_size=256, steps_per_epoch=10,
                                          total_steps=100)
  rates = [float(schedule(s)) for s in (0, 5, 10, 30, 50, 75, 100)]
  assert rates == pytest.approx([0.0, 0.128, 0.256, 0.256, 0.256, 0.128, 0.0], abs=1e-6)


def test_exponential_schedule_is_a_staircase():
  config = base.get_base_config().optimizer
  config.update(schedule="exponential", learning_rate=0.256, warmup_epochs=0.0, decay_rate=0.5,
                decay_epochs=2.0)
  schedule = optim.learning_rate_schedule(config, global_batch_size=256, steps_per_epoch=10,
                                          total_steps=100)
  assert [float(schedule(s)) for s in (0, 19, 20, 40)] == pytest.approx([0.256, 0.256, 0.128, 0.064])


def test_unknown_optimizer_is_refused_by_name():
  config = base.get_base_config().optimizer
  config.name = "lamb"
  with pytest.raises(ValueError, match="optimizer.name"):
    optim.create_optimizer(config, optax.constant_schedule(0.1), {"w": jnp.zeros(1)})
