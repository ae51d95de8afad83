"""Optimizers, learning-rate schedules and the weight-decay mask, from `config.optimizer`."""
import math

import jax
import ml_collections
import optax

from mobilenet import errors

OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULES = ("warmup_cosine", "flat_cosine", "exponential")


def check_config(opt: ml_collections.ConfigDict) -> None:
  """The optimizer section, before anything is built."""
  if opt.name not in OPTIMIZERS:
    raise errors.ConfigError(f"config.optimizer.name must be one of {', '.join(OPTIMIZERS)}; "
                             f"got {opt.name!r}")
  if opt.schedule not in SCHEDULES:
    raise errors.ConfigError(f"config.optimizer.schedule must be one of "
                             f"{', '.join(SCHEDULES)}; got {opt.schedule!r}")
  if opt.learning_rate <= 0:
    raise errors.ConfigError(f"config.optimizer.learning_rate must be > 0; "
                             f"got {opt.learning_rate}")
  if not 0 <= opt.flat_fraction < 1:
    raise errors.ConfigError(f"config.optimizer.flat_fraction must be in [0, 1); "
                             f"got {opt.flat_fraction}")
  if not 0 <= opt.ema_decay < 1:
    raise errors.ConfigError(f"config.optimizer.ema_decay must be in [0, 1); "
                             f"got {opt.ema_decay}")


def peak_learning_rate(opt: ml_collections.ConfigDict, global_batch_size: int) -> float:
  """`learning_rate` is given for a batch of 256 and, by default, scaled linearly with the batch."""
  if opt.scale_learning_rate_with_batch:
    return opt.learning_rate * global_batch_size / 256
  return opt.learning_rate


def learning_rate_schedule(opt: ml_collections.ConfigDict, *, global_batch_size: int,
                           steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  peak = peak_learning_rate(opt, global_batch_size)
  if opt.schedule == "warmup_cosine":
    warmup_steps = min(int(opt.warmup_epochs * steps_per_epoch), total_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=max(warmup_steps, 0),
        decay_steps=max(total_steps, 1), end_value=0.0)
  if opt.schedule == "flat_cosine":
    # fast.ai's flat-then-anneal: warm-up, the peak held until `flat_fraction` of training,
    # then a cosine to zero over the rest.
    warmup_steps = int(opt.warmup_epochs * steps_per_epoch)
    flat_end = max(int(opt.flat_fraction * total_steps), warmup_steps)
    pieces = [optax.linear_schedule(0.0, peak, warmup_steps)] if warmup_steps > 0 else []
    pieces += [optax.constant_schedule(peak),
               optax.cosine_decay_schedule(peak, max(total_steps - flat_end, 1))]
    boundaries = ([warmup_steps] if warmup_steps > 0 else []) + [flat_end]
    return optax.join_schedules(pieces, boundaries)
  if opt.schedule == "exponential":
    # The paper's recipe (as TF's slim trainer): staircase decay every `decay_epochs`.
    decay = optax.exponential_decay(
        init_value=peak, transition_steps=max(int(opt.decay_epochs * steps_per_epoch), 1),
        decay_rate=opt.decay_rate, staircase=True)
    warmup_steps = int(opt.warmup_epochs * steps_per_epoch)
    if warmup_steps <= 0:
      return decay
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])
  raise errors.ConfigError(f"optimizer.schedule must be one of {', '.join(SCHEDULES)}; "
                   f"got {opt.schedule!r}")


def weight_decay_mask(params, *, decay_depthwise: bool):
  """True for the conv and dense kernels that weight decay should shrink.

  BatchNorm scales and offsets and the classifier bias never decay; depthwise
  kernels decay only when asked, since the paper found they need little or none.
  """
  def decays(path, _):
    names = [getattr(key, "key", str(key)) for key in path]
    if names[-1] != "kernel":
      return False
    if any(name.endswith("_dw") for name in names):
      return decay_depthwise
    return True
  return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(opt: ml_collections.ConfigDict, schedule: optax.Schedule,
                     params) -> optax.GradientTransformation:
  if opt.name not in OPTIMIZERS:
    raise errors.ConfigError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}; got {opt.name!r}")
  mask = weight_decay_mask(params, decay_depthwise=opt.weight_decay_on_depthwise)
  chain = []
  if opt.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.name == "adamw":
    chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                             mask=mask))
    return optax.chain(*chain)
  if opt.weight_decay > 0:
    # L2 regularisation added to the gradient, as the paper's TensorFlow training did.
    chain.append(optax.add_decayed_weights(opt.weight_decay, mask))
  if opt.name == "sgd":
    chain.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
  else:
    # TensorFlow's RMSprop: accumulator starts at 1, epsilon inside the square root.
    chain.append(optax.rmsprop(schedule, decay=opt.rmsprop_decay, eps=opt.epsilon,
                               initial_scale=1.0, eps_in_sqrt=True,
                               momentum=opt.momentum or None))
  return optax.chain(*chain)


def steps_for(num_examples: int, global_batch_size: int, num_epochs: float) -> tuple[int, int]:
  """(steps per epoch, total steps) for a number of epochs, partial epochs allowed."""
  steps_per_epoch = max(num_examples // global_batch_size, 1)
  return steps_per_epoch, max(math.ceil(num_epochs * steps_per_epoch), 1)
