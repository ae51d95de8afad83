"""The state and the jitted, sharded train and eval steps, built once per config and mesh.

The state lives in one pytree (`TrainState`), replicated over a 1-D device mesh; each batch is
sharded along the mesh's `data` axis, so BatchNorm statistics and gradients cover the global
batch. The same code runs on one CPU, one GPU or a pod slice.
"""
import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mobilenet import model, ops, optim
from mobilenet.devices import DATA_AXIS

STATE_IS_FINITE = "state_is_finite"  # a step metric that is checked, not logged
# What evaluating a checkpoint needs of its state: no optimizer state, so no optimizer.
EVALUATED_STATE = ("params", "batch_stats", "ema_params")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # equals params when config.optimizer.ema_decay == 0


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def dropout_key(seed: int) -> jax.Array:
  """The stream of dropout masks, apart from the initialisation's key(seed)."""
  return jax.random.fold_in(jax.random.key(seed), 1)


def train_step(state: TrainState, batch, *, net: model.MobileNet, tx, label_smoothing: float,
               ema_decay: float, seed: int):
  """One update on a global batch; pure, so jit can shard and donate it."""
  dropout_rng = jax.random.fold_in(dropout_key(seed), state.step)

  def loss_fn(params):
    logits, updates = net.apply(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
        mutable=["batch_stats"], rngs={"dropout": dropout_rng})
    loss = cross_entropy(logits, batch["label"], net.num_classes, label_smoothing).mean()
    return loss, (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema_params)
  step_metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "grad_norm": optax.global_norm(grads),
      # A finite loss can still come with an update that overflowed: such a state is never saved.
      STATE_IS_FINITE: _all_finite(new_state),
  }
  return new_state, step_metrics


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
                            if jnp.issubdtype(leaf.dtype, jnp.inexact)]))


def eval_step(variables, batch, *, net: model.MobileNet, class_columns=None):
  """Sums over the real (unmasked) examples of a padded batch; `variables` are the evaluated
  (EMA) parameters and the batch statistics. `class_columns`: the dataset's classes are these
  outputs of the model (an ImageNet model scored on a folder of ImageNet synsets)."""
  logits = net.apply({"params": variables["ema_params"], "batch_stats": variables["batch_stats"]},
                     batch["image"], train=False)
  if class_columns is not None:
    logits = logits[:, class_columns]
  num_classes = logits.shape[-1]
  mask = batch["mask"]
  labels = batch["label"]
  k = min(5, num_classes)
  top_k = jax.lax.top_k(logits, k)[1]
  in_top_k = jnp.any(top_k == labels[:, None], axis=-1)
  return {
      "top1": jnp.sum((jnp.argmax(logits, -1) == labels) & mask),
      "top5": jnp.sum(in_top_k & mask),
      "loss": jnp.sum(jnp.where(mask, cross_entropy(logits, labels, num_classes), 0.0)),
      "count": jnp.sum(mask),
  }


def evaluated_variables(state: TrainState) -> dict:
  """The part of a TrainState that evaluation reads (what eval.py restores of a checkpoint)."""
  return {name: getattr(state, name) for name in EVALUATED_STATE}


def _input_shape(config) -> jax.ShapeDtypeStruct:
  resolution = config.data.resolution
  return jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.dtype(config.model.dtype))


def _with_sharding(tree, sharding):
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                      tree)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The model, its evaluation step and the abstract variables a checkpoint restores into."""
  net: model.MobileNet
  mesh: Mesh
  abstract_variables: dict  # EVALUATED_STATE -> shapes with their (replicated) shardings
  eval: Callable

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles the global batch from each process's slice."""
    return {name: jax.make_array_from_process_local_data(self.batch_sharding, value)
            for name, value in local_batch.items()}


def build_evaluation(config: ml_collections.ConfigDict, mesh: Mesh, *,
                     class_columns: np.ndarray | None = None) -> Evaluation:
  """class_columns: see eval_step."""
  net = model.from_config(config.model)
  replicated = NamedSharding(mesh, PartitionSpec())
  # The key is made inside the abstract call: made eagerly, it would compile two small programs,
  # and a workdir that cannot resume is refused before anything compiles.
  variables = jax.eval_shape(lambda images: net.init(jax.random.key(0), images, train=False),
                             _input_shape(config))
  abstract = _with_sharding({"params": variables["params"],
                             "batch_stats": variables["batch_stats"],
                             "ema_params": variables["params"]}, replicated)
  evaluation = Evaluation(net, mesh, abstract, eval=None)
  evaluate = jax.jit(functools.partial(eval_step, net=net, class_columns=class_columns),
                     in_shardings=(replicated, evaluation.batch_sharding),
                     out_shardings=replicated, compiler_options=ops.compiler_options())
  return dataclasses.replace(evaluation, eval=evaluate)


@dataclasses.dataclass(frozen=True)
class Training:
  """The optimizer, the initial and abstract state and the train step, beside evaluation's."""
  evaluation: Evaluation
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  init: Callable  # () -> the initial TrainState, replicated on the mesh
  abstract_state: TrainState  # its shapes and shardings: what a checkpoint restores into
  train: Callable


def build(config: ml_collections.ConfigDict, mesh: Mesh, *, steps_per_epoch: int,
          total_steps: int) -> Training:
  """Everything a training run compiles, for one config and mesh; nothing is computed yet."""
  evaluation = build_evaluation(config, mesh)
  net, replicated = evaluation.net, evaluation.replicated
  schedule = optim.learning_rate_schedule(config.optimizer,
                                          global_batch_size=config.train.global_batch_size,
                                          steps_per_epoch=steps_per_epoch,
                                          total_steps=total_steps)
  tx = optim.create_optimizer(config.optimizer, schedule,
                              evaluation.abstract_variables["params"])

  def init_state():
    images = jnp.zeros(_input_shape(config).shape, _input_shape(config).dtype)
    variables = net.init(jax.random.key(config.seed), images, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                      ema_params=params)

  options = ops.compiler_options()
  init = jax.jit(init_state, out_shardings=replicated, compiler_options=options)
  train = jax.jit(
      functools.partial(train_step, net=net, tx=tx,
                        label_smoothing=config.optimizer.label_smoothing,
                        ema_decay=config.optimizer.ema_decay,
                        seed=config.seed),
      in_shardings=(replicated, evaluation.batch_sharding),
      out_shardings=(replicated, replicated),
      donate_argnums=0, compiler_options=options)
  # From evaluation's shapes: tracing init_state would trace the whole model's init again.
  abstract = evaluation.abstract_variables
  abstract_state = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params=abstract["params"],
      batch_stats=abstract["batch_stats"], ema_params=abstract["ema_params"],
      opt_state=_with_sharding(jax.eval_shape(tx.init, abstract["params"]), replicated))
  return Training(evaluation, tx, schedule, init, abstract_state, train)
