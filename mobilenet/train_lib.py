"""Training and evaluation: one jitted, sharded step each, and the loop around them.

The state lives in one pytree (`TrainState`), replicated over a 1-D device mesh;
each batch is sharded along the mesh's `data` axis, so BatchNorm statistics and
gradients cover the global batch. The same code runs on one CPU, one GPU or a
pod slice (with `config.distributed.initialize`).
"""
import dataclasses
import functools
import json
import os
import platform
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mobilenet import checkpoints, costs, data, metrics, model, optim

DATA_AXIS = "data"
EVAL_RESULTS_FILE = "eval_results.json"
STATE_IS_FINITE = "state_is_finite"  # a step metric that is checked, not logged


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # equals params when config.optimizer.ema_decay == 0


def build_model(config: ml_collections.ConfigDict, variant: str | None = None) -> model.MobileNet:
  """The model of config.model (with another variant, for side-by-side benchmarks)."""
  m = config.model
  return model.MobileNet(
      num_classes=m.num_classes, variant=variant or m.variant, alpha=m.alpha,
      dropout_rate=m.dropout_rate, dtype=jnp.dtype(m.dtype), depthwise_impl=m.depthwise_impl,
      pointwise_impl=m.pointwise_impl, standard_impl=m.standard_impl,
      bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon)


def device_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices (of all processes): pure data parallelism."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def device_description() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    name = platform.processor() or "cpu"
    try:
      with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        name = next(line.split(":", 1)[1].strip() for line in cpuinfo
                    if line.startswith("model name"))
    except (OSError, StopIteration):
      pass
    return f"cpu: {name}, {os.cpu_count()} cores"
  return f"{device.platform}: {device.device_kind} x{jax.device_count()}"


def create_train_state(config, net, tx, mesh: Mesh) -> TrainState:
  """Initialises the state directly replicated on the mesh."""
  resolution = config.data.resolution

  def init():
    images = jnp.zeros((1, resolution, resolution, 3), jnp.dtype(config.model.dtype))
    variables = net.init(jax.random.key(config.seed), images, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                      ema_params=params)

  return jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec()))()


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch, *, net: model.MobileNet, tx, label_smoothing: float,
               ema_decay: float, dropout_key):
  """One update on a global batch; pure, so jit can shard and donate it."""
  dropout_rng = jax.random.fold_in(dropout_key, state.step)

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


def eval_step(state: TrainState, batch, *, net: model.MobileNet):
  """Sums over the real (unmasked) examples of a padded batch."""
  logits = net.apply({"params": state.ema_params, "batch_stats": state.batch_stats},
                     batch["image"], train=False)
  mask = batch["mask"]
  labels = batch["label"]
  k = min(5, net.num_classes)
  top_k = jax.lax.top_k(logits, k)[1]
  in_top_k = jnp.any(top_k == labels[:, None], axis=-1)
  return {
      "top1": jnp.sum((jnp.argmax(logits, -1) == labels) & mask),
      "top5": jnp.sum(in_top_k & mask),
      "loss": jnp.sum(jnp.where(mask, cross_entropy(logits, labels, net.num_classes), 0.0)),
      "count": jnp.sum(mask),
  }


class Steps:
  """The jitted train and eval steps with their shardings, for one config and mesh."""

  def __init__(self, config, net, tx, mesh: Mesh):
    self.mesh = mesh
    self.replicated = NamedSharding(mesh, PartitionSpec())
    self.batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    self.train = jax.jit(
        functools.partial(train_step, net=net, tx=tx,
                          label_smoothing=config.optimizer.label_smoothing,
                          ema_decay=config.optimizer.ema_decay,
                          dropout_key=jax.random.fold_in(jax.random.key(config.seed), 1)),
        in_shardings=(self.replicated, self.batch_sharding),
        out_shardings=(self.replicated, self.replicated),
        donate_argnums=0)
    self.eval = jax.jit(functools.partial(eval_step, net=net),
                        in_shardings=(self.replicated, self.batch_sharding),
                        out_shardings=self.replicated)

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles the global batch from each process's slice."""
    return {name: jax.make_array_from_process_local_data(self.batch_sharding, value)
            for name, value in local_batch.items()}


def evaluate(steps: Steps, state: TrainState, config, step: int | None = None) -> dict[str, float]:
  """Top-1, top-5 and loss over every validation example exactly once."""
  totals = None
  for local_batch in data.eval_batches(config.data,
                                       global_batch_size=config.train.eval_batch_size):
    sums = steps.eval(state, steps.global_batch(local_batch))
    checkpoints.kill_if_injected("eval", step)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = int(totals["count"])
  return {"top1": float(totals["top1"]) / count, "top5": float(totals["top5"]) / count,
          "loss": float(totals["loss"]) / count, "count": count}


def measure_inference_speed(net, state: TrainState, config, *, batch_size: int = 64) -> float:
  """Images per second of the jitted forward pass on this device.

  Compiled ahead, untimed; then batches are timed until `train.inference_benchmark_s` is spent,
  at least one. Stopping at the budget matters for slow models: a floor of a warm-up call and
  three timed ones kept a Conv MobileNet at 224 px on 2 CPU cores busy for 22 s after its final
  evaluation (7.6 s a call), where this takes one compilation and one call.
  """
  resolution = config.data.resolution
  images = jnp.zeros((batch_size, resolution, resolution, 3), jnp.dtype(config.model.dtype))
  forward = jax.jit(lambda s, x: net.apply(
      {"params": s.ema_params, "batch_stats": s.batch_stats}, x, train=False))
  compiled = forward.lower(state, images).compile()
  count, start = 0, time.perf_counter()
  while count < 1 or time.perf_counter() - start < config.train.inference_benchmark_s:
    compiled(state, images).block_until_ready()
    count += 1
  return count * batch_size / max(time.perf_counter() - start, 1e-9)


def read_eval_results(path: str) -> dict:
  """The record in an eval_results.json, or {} where there is none (or it is not a record)."""
  try:
    with open(path, encoding="utf-8") as results:
      record = json.load(results)
  except (OSError, ValueError):
    return {}
  return record if isinstance(record, dict) else {}


def write_eval_results(workdir: str, config, step: int, results: dict, *,
                       filename: str = EVAL_RESULTS_FILE, merge: bool = False, **extra) -> dict:
  """Writes the evaluation record; with `merge`, keeps what the file held that this evaluation
  does not measure (training time and speed, exported-model figures)."""
  cost = costs.count(config.model.variant, config.model.alpha, config.data.resolution,
                     config.model.num_classes)
  record = {
      "top1": results["top1"], "top5": results["top5"], "loss": results["loss"],
      "num_examples": results["count"],
      "params": cost.params, "mult_adds": cost.mult_adds,
      "variant": config.model.variant, "alpha": config.model.alpha,
      "resolution": config.data.resolution, "eval_split": config.data.eval_split,
      "dataset": (config.data.tfds_name.split("/")[0] if config.data.source == "tfds"
                  else os.path.basename(os.path.normpath(config.data.folder))),
      "step": int(step), "seed": config.seed, "device": device_description(),
      **extra,
  }
  path = os.path.join(workdir, filename)
  if merge:
    previous = read_eval_results(path)
    if "train_wall_s" in previous and previous.get("device") != record["device"]:
      record.setdefault("train_device", previous.get("train_device", previous.get("device")))
    record = {**previous, **record}
  if jax.process_index() == 0:
    with open(path, "w", encoding="utf-8") as out:
      json.dump(record, out, indent=2)
  return record


class RemainingTime:
  """The ETA of the progress lines, from this session's steps after its first one.

  The first step of a session includes compiling the step (and restoring, after a resume),
  and earlier sessions ran at their own speed: neither says how fast the remaining steps go.
  Until a second step has finished, the estimate uses the interval being logged.
  """

  def __init__(self, total_steps: int):
    self.total_steps = total_steps
    self._since = None  # (step, time) when the session's first step had finished

  def first_step_done(self, step: int, now: float) -> None:
    self._since = (step, now)

  def seconds(self, step: int, now: float, interval_step_time_s: float) -> float:
    if self._since is None or step <= self._since[0]:
      step_time = interval_step_time_s
    else:
      step_time = (now - self._since[1]) / (step - self._since[0])
    return (self.total_steps - step) * step_time


def short_run_warning(opt, *, steps_per_epoch: int, total_steps: int) -> str | None:
  """One line when the run ends before its learning-rate warm-up does (None otherwise)."""
  warmup_steps = int(opt.warmup_epochs * steps_per_epoch)
  if total_steps >= warmup_steps:
    return None
  return (f"this run ({total_steps} steps) is shorter than its learning-rate warm-up "
          f"({warmup_steps} steps = optimizer.warmup_epochs={opt.warmup_epochs:g} epochs): the "
          "rate never reaches its peak; train more epochs or lower optimizer.warmup_epochs")


def finished_run_results(workdir: str, latest_step: int | None, total_steps: int) -> dict | None:
  """The results of a run that already ended: its latest checkpoint is the final step and its
  eval_results.json evaluates that step (a run killed in its final evaluation has none)."""
  if latest_step is None or latest_step < total_steps:
    return None
  record = read_eval_results(os.path.join(workdir, EVAL_RESULTS_FILE))
  return record if record.get("step") == latest_step else None


class NonFiniteLoss(RuntimeError):
  pass


# train.py's exit status after a SIGTERM: the shell's for a process the signal ended, so that
# neither `train.py && eval.py` nor a job scheduler takes the interrupted run for a finished one.
EXIT_PREEMPTED = 128 + signal.SIGTERM


class _Preemption:
  """Turns SIGTERM (how preemption arrives) into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave the default handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def initialize_distributed(config) -> None:
  dist = config.distributed
  if not dist.initialize:
    return
  # Cross-process collectives on CPU need gloo; the setting does not touch GPU or TPU backends.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if dist.coordinator_address:
    kwargs = dict(coordinator_address=dist.coordinator_address,
                  num_processes=dist.num_processes, process_id=dist.process_id)
  jax.distributed.initialize(**kwargs)


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """The dataset a run reads, how many steps it takes, and how often it logs, evaluates and
  saves: what every trainer of this config (train.py's, the PyTorch twin) agrees on."""
  info: data.DatasetInfo
  global_batch: int
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  checkpoint_every: int
  log_every: int


def plan_run(config: ml_collections.ConfigDict) -> RunPlan:
  """The run's plan, after checking that the dataset has the model's number of classes."""
  info = data.dataset_info(config.data)
  if info.num_classes != config.model.num_classes:
    raise ValueError(f"model.num_classes is {config.model.num_classes} but the dataset has "
                     f"{info.num_classes} classes; set --config.model.num_classes={info.num_classes}")
  global_batch = config.train.global_batch_size
  steps_per_epoch, total_steps = optim.steps_for(info.num_train_examples, global_batch,
                                                 config.train.num_epochs)
  return RunPlan(info, global_batch, steps_per_epoch, total_steps,
                 eval_every=config.train.eval_every_steps or steps_per_epoch,
                 checkpoint_every=config.train.checkpoint_every_steps or steps_per_epoch,
                 log_every=max(config.train.log_every_steps, 1))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains from the latest checkpoint in `workdir` (or from scratch) to the end; evaluates."""
  plan = plan_run(config)
  info, global_batch = plan.info, plan.global_batch
  steps_per_epoch, total_steps = plan.steps_per_epoch, plan.total_steps
  eval_every, checkpoint_every, log_every = plan.eval_every, plan.checkpoint_every, plan.log_every

  checkpointer = checkpoints.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  start_step = checkpointer.latest_step() or 0
  if start_step:  # another model's checkpoint is refused now, before anything is compiled
    try:
      checkpoints.check_compatible(checkpointer.saved_config(start_step), config.to_dict(),
                                   workdir, for_training=True)
    except checkpoints.IncompatibleCheckpoint:
      checkpointer.close()
      raise
  finished = finished_run_results(workdir, start_step, total_steps)
  if finished is not None:  # nothing to train or evaluate again, nothing to append to the logs
    checkpointer.close()
    metrics.console(f"This run is finished (step {start_step} of {total_steps}); its results are "
                    f"in {os.path.join(workdir, EVAL_RESULTS_FILE)}")
    return {**finished, "finished_before": True}
  warning = short_run_warning(config.optimizer, steps_per_epoch=steps_per_epoch,
                              total_steps=total_steps)
  if warning:
    logging.warning(warning)

  mesh = device_mesh()
  net = build_model(config)
  schedule = optim.learning_rate_schedule(config.optimizer, global_batch_size=global_batch,
                                          steps_per_epoch=steps_per_epoch,
                                          total_steps=total_steps)
  abstract_params = jax.eval_shape(
      net.init, jax.random.key(0),
      jnp.zeros((1, config.data.resolution, config.data.resolution, 3)))["params"]
  tx = optim.create_optimizer(config.optimizer, schedule, abstract_params)
  state = create_train_state(config, net, tx, mesh)
  steps = Steps(config, net, tx, mesh)

  if start_step:
    state = checkpointer.restore(state, start_step)
    metrics.console(f"Resumed from the checkpoint of step {start_step} in {workdir}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as out:
      out.write(config.to_json_best_effort(indent=2))

  writer = metrics.MetricWriter(workdir)
  cost = costs.count(config.model.variant, config.model.alpha, config.data.resolution,
                     config.model.num_classes)
  metrics.console(
      f"{config.model.variant} alpha={config.model.alpha} {config.data.resolution}px: "
      f"{cost.mult_adds / 1e6:.0f}M mult-adds, {cost.params / 1e6:.2f}M params | "
      f"{info.num_train_examples} train / {info.num_eval_examples} eval examples | "
      f"{total_steps} steps of {global_batch} ({steps_per_epoch}/epoch) on "
      f"{jax.device_count()} {jax.devices()[0].platform} device(s)")

  batches = data.train_batches(config.data, global_batch_size=global_batch, seed=config.seed,
                               start_step=start_step)
  pending = []  # (step, device metrics) not yet checked on the host
  remaining_time = RemainingTime(total_steps)
  last_checked = time.perf_counter()
  train_start = time.perf_counter()
  images_seen = 0
  eval_results = None

  def check_pending(now_step: int) -> None:
    """Fetches metrics, stops on a non-finite loss, logs the averages."""
    nonlocal last_checked, pending
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    for (step, _), values in zip(pending, fetched):
      if not np.isfinite(values["loss"]) or not values[STATE_IS_FINITE]:
        problem = (f"the loss became {values['loss']}" if not np.isfinite(values["loss"])
                   else "the update made parameters or optimizer state non-finite")
        last_good = checkpointer.latest_step()
        kept = (f"the last good checkpoint (step {last_good}) is kept in {checkpointer.directory}"
                if last_good else "no checkpoint was saved before it")
        raise NonFiniteLoss(f"{problem} at step {step}; stopping: {kept}")
    elapsed = time.perf_counter() - last_checked
    means = {name: float(np.mean([v[name] for v in fetched])) for name in fetched[0]
             if name != STATE_IS_FINITE}
    images_per_s = len(fetched) * global_batch / max(elapsed, 1e-9)
    means.update(learning_rate=float(schedule(now_step - 1)), images_per_s=images_per_s,
                 step_time_s=elapsed / len(fetched), steps=len(fetched))
    writer.write(now_step, "train", means)
    remaining = remaining_time.seconds(now_step, time.perf_counter(), means["step_time_s"])
    metrics.console(
        f"step {now_step:>6}/{total_steps}  loss {means['loss']:.4f}  "
        f"acc {100 * means['accuracy']:5.1f}%  lr {means['learning_rate']:.5f}  "
        f"{images_per_s:7.1f} img/s  ETA {metrics.format_duration(remaining)}")
    pending = []
    last_checked = time.perf_counter()

  def save(step: int) -> None:
    check_pending(step)  # never save a state whose loss went non-finite
    checkpointer.save(step, state, config)

  try:
    with _Preemption() as preemption:
      for step in range(start_step, total_steps):
        state, step_metrics = steps.train(state, steps.global_batch(next(batches)))
        done = step + 1
        checkpoints.kill_if_injected("train", done)
        pending.append((done, step_metrics))
        images_seen += global_batch
        if step == start_step:  # it compiled the step: the ETA counts the steps after it
          jax.block_until_ready(step_metrics)
          remaining_time.first_step_done(done, time.perf_counter())
        if done % log_every == 0 or done == total_steps:
          check_pending(done)
        if preemption.requested:
          save(done)
          checkpointer.wait()
          metrics.console(f"SIGTERM received: saved the checkpoint of step {done}; exiting. "
                          "Run the same command to resume.")
          return {"preempted_at": done}
        if done % checkpoint_every == 0 and done != total_steps:
          save(done)
        if done % eval_every == 0 and done != total_steps:
          check_pending(done)  # a diverged state is not worth evaluating
          eval_results = evaluate(steps, state, config, done)
          last_checked = time.perf_counter()  # step times exclude evaluation
          writer.write(done, "eval", eval_results)
          metrics.console(f"eval at step {done}: top-1 {100 * eval_results['top1']:.2f}%  "
                          f"top-5 {100 * eval_results['top5']:.2f}%")
      train_seconds = time.perf_counter() - train_start
      final_step = max(total_steps, start_step)
      if start_step < total_steps:
        save(final_step)
      del batches  # its prefetching would compete with the final evaluation for the CPU
      eval_results = evaluate(steps, state, config, final_step)
      writer.write(final_step, "eval", eval_results)
      extra = {"infer_images_per_s": measure_inference_speed(net, state, config)}
      if images_seen:
        extra.update(session_train_wall_s=train_seconds,
                     session_train_images_per_s=images_seen / train_seconds)
      # Over every session of the run, from the log that process 0 writes (and flushes).
      train_seconds_all = metrics.training_seconds(workdir) if jax.process_index() == 0 else 0
      if train_seconds_all > 0:
        extra.update(train_wall_s=train_seconds_all,
                     train_images_per_s=final_step * global_batch / train_seconds_all)
      checkpointer.wait()  # the results name the final checkpoint: it must be on disk first
      record = write_eval_results(workdir, config, final_step, eval_results, **extra)
      metrics.console(f"final eval at step {final_step}: top-1 {100 * eval_results['top1']:.2f}%  "
                      f"top-5 {100 * eval_results['top5']:.2f}%; results in "
                      f"{os.path.join(workdir, EVAL_RESULTS_FILE)}")
      return record
  except BaseException:
    checkpointer.close(quietly=True)
    raise
  finally:
    checkpointer.close()
    writer.close()


def restore_for_evaluation(config, net, checkpointer: checkpoints.Checkpointer, step: int,
                           mesh: Mesh) -> tuple[TrainState, optax.GradientTransformation]:
  """The state of the checkpoint of `step`, restored into `net`'s shapes on `mesh`, and the
  optimizer that shaped it (only its state's structure matters: any schedule will do)."""
  abstract_params = jax.eval_shape(
      net.init, jax.random.key(0),
      jnp.zeros((1, config.data.resolution, config.data.resolution, 3)))["params"]
  tx = optim.create_optimizer(config.optimizer, optax.constant_schedule(0.0), abstract_params)
  return checkpointer.restore(create_train_state(config, net, tx, mesh), step), tx


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None) -> dict:
  """Restores a checkpoint (the latest by default), evaluates it, writes eval_results.json.

  The record is merged into the run's file, so what training measured stays; an evaluation at
  another resolution than the trained one goes to eval_results_r<N>.json instead.
  """
  checkpointer = checkpoints.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                         read_only=True)
  try:
    step = checkpointer.step_to_restore(step)
    saved = checkpointer.saved_config(step)
    checkpoints.check_compatible(saved, config.to_dict(), workdir, for_training=False)
    trained_resolution = saved.get("data", {}).get("resolution", config.data.resolution)
    mesh = device_mesh()
    net = build_model(config)
    state, tx = restore_for_evaluation(config, net, checkpointer, step, mesh)
    steps = Steps(config, net, tx, mesh)
    results = evaluate(steps, state, config)
    speed = measure_inference_speed(net, state, config)
    if config.data.resolution == trained_resolution:
      record = write_eval_results(workdir, config, step, results, merge=True,
                                  infer_images_per_s=speed)
    else:
      record = write_eval_results(workdir, config, step, results,
                                  filename=f"eval_results_r{config.data.resolution}.json",
                                  infer_images_per_s=speed, trained_resolution=trained_resolution)
    metrics.console(f"step {step}: top-1 {100 * results['top1']:.2f}%  "
                    f"top-5 {100 * results['top5']:.2f}% on {results['count']} examples at "
                    f"{config.data.resolution} px; {speed:.0f} images/s inference")
    return record
  finally:
    checkpointer.close()
