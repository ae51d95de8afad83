"""The training loop: train steps, and around them a few periodic actions (log and finite check,
checkpoint, evaluate) and preemption; then the final checkpoint, evaluation and results.

Training time is kept in each checkpoint, so a run resumed many times still reports the time of
all its steps (redone steps counted once, evaluation and start-up excluded).
"""
import dataclasses
import json
import os
import signal
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from mobilenet import allocator, checkpoints, costs, devices, errors, evaluation, metrics, optim
from mobilenet import pretrained
from mobilenet import results
from mobilenet import steps as steps_lib
from mobilenet.input import Dataset, DatasetInfo

# train.py's exit status after a SIGTERM: the shell's for a process the signal ended, so that
# neither `train.py && eval.py` nor a job scheduler takes the interrupted run for a finished one.
EXIT_PREEMPTED = 128 + signal.SIGTERM


def _nothing(*_):
  pass


@dataclasses.dataclass
class Hooks:
  """Points of the loop where tests inject faults (tests/fault_injection.py); no-ops otherwise."""
  step_done: Callable[[int], None] = _nothing  # the step's update was dispatched
  eval_batch_done: Callable[[int], None] = _nothing  # one eval batch of the evaluation at a step
  save_started: Callable[[int], None] = _nothing  # a checkpoint of the step is being written
  save_committing: Callable[[], None] = _nothing  # orbax: complete, before the rename


def check_config(train_config: ml_collections.ConfigDict) -> None:
  """The train section: batch sizes that split evenly over devices and processes, epochs."""
  device_count, process_count = jax.device_count(), jax.process_count()
  for field in ("global_batch_size", "eval_batch_size"):
    size = train_config[field]
    if size < 1:
      raise errors.ConfigError(f"config.train.{field} must be >= 1; got {size}")
    if size % device_count or size % process_count:
      raise errors.ConfigError(f"config.train.{field}={size} must divide by the {device_count} "
                               f"devices ({process_count} processes)")
  if train_config.profile_steps < 0:
    raise errors.ConfigError(f"config.train.profile_steps must be >= 0; "
                             f"got {train_config.profile_steps}")
  if train_config.num_epochs <= 0:
    raise errors.ConfigError(f"config.train.num_epochs must be > 0; "
                             f"got {train_config.num_epochs}")


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """The dataset a run reads, how many steps it takes, and how often it logs, evaluates and
  saves: what every trainer of this config (train.py's, the PyTorch twin) agrees on."""
  dataset: Dataset
  info: DatasetInfo
  global_batch: int
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  checkpoint_every: int
  log_every: int


def plan_run(config: ml_collections.ConfigDict) -> RunPlan:
  """The run's plan, after checking that the dataset has the model's number of classes."""
  dataset = Dataset(config.data)
  info = dataset.info
  if info.num_classes != config.model.num_classes:
    raise errors.ConfigError(
        f"model.num_classes is {config.model.num_classes} but the dataset has "
        f"{info.num_classes} classes; set --config.model.num_classes={info.num_classes}")
  global_batch = config.train.global_batch_size
  steps_per_epoch, total_steps = optim.steps_for(info.num_train_examples, global_batch,
                                                 config.train.num_epochs)
  return RunPlan(dataset, info, global_batch, steps_per_epoch, total_steps,
                 eval_every=config.train.eval_every_steps or steps_per_epoch,
                 checkpoint_every=config.train.checkpoint_every_steps or steps_per_epoch,
                 log_every=max(config.train.log_every_steps, 1))


def short_run_warning(opt, *, steps_per_epoch: int, total_steps: int) -> str | None:
  """One line when the run ends before its learning-rate warm-up does (None otherwise)."""
  warmup_steps = int(opt.warmup_epochs * steps_per_epoch)
  if total_steps >= warmup_steps:
    return None
  return (f"this run ({total_steps} steps) is shorter than its learning-rate warm-up "
          f"({warmup_steps} steps = optimizer.warmup_epochs={opt.warmup_epochs:g} epochs): the "
          "rate never reaches its peak; train more epochs or lower optimizer.warmup_epochs")


class RemainingTime:
  """The ETA of the progress lines, from this session's steps after its first one.

  The first step of a session includes compiling the step (and restoring, after a resume),
  and earlier sessions ran at their own speed: neither says how fast the remaining steps go.
  Until a second step has finished there is no estimate (None).
  """

  def __init__(self, total_steps: int):
    self.total_steps = total_steps
    self._since = None  # (step, time) when the session's first step had finished

  def first_step_done(self, step: int, now: float) -> None:
    self._since = (step, now)

  def seconds(self, step: int, now: float) -> float | None:
    if self._since is None or step <= self._since[0]:
      return None
    return (self.total_steps - step) * (now - self._since[1]) / (step - self._since[0])


class Progress:
  """Step metrics, checked on the host every `log_every` steps and before anything is saved or
  evaluated: a non-finite loss or state stops the run; the means and the ETA are logged; the
  interval's time is added to the training time (evaluations are left out).

  The speed of a line leaves out the session's first step (compiling, restoring): a line whose
  interval holds only that step has no speed and no ETA.
  """

  def __init__(self, plan: RunPlan, schedule, writer: metrics.MetricWriter,
               checkpointer: checkpoints.Checkpointer, train_seconds: float):
    self.plan, self.schedule, self.writer, self.checkpointer = plan, schedule, writer, checkpointer
    self.train_seconds = train_seconds  # over every session so far
    self.remaining_time = RemainingTime(plan.total_steps)
    self._pending = []  # (step, device metrics) not yet checked on the host
    self._untimed = 0  # of them, the session's first step, timed apart
    self._interval_start = time.perf_counter()

  def add(self, step: int, step_metrics: dict, *, first_of_session: bool) -> None:
    self._pending.append((step, step_metrics))
    if first_of_session:  # it compiled the step: training time, but not the speed
      jax.block_until_ready(step_metrics)
      now = time.perf_counter()
      self.remaining_time.first_step_done(step, now)
      self.train_seconds += now - self._interval_start
      self._interval_start = now
      self._untimed = len(self._pending)

  def due(self, step: int) -> bool:
    return step % self.plan.log_every == 0 or step == self.plan.total_steps

  def restart_clock(self) -> None:
    """After an evaluation: what it took is not training time."""
    self._interval_start = time.perf_counter()

  def check(self, now_step: int) -> None:
    """Fetches the pending metrics, stops on a non-finite one, logs their means."""
    if not self._pending:
      return
    fetched = jax.device_get([values for _, values in self._pending])
    for (step, _), values in zip(self._pending, fetched):
      if not np.isfinite(values["loss"]) or not values[steps_lib.STATE_IS_FINITE]:
        problem = (f"the loss became {values['loss']}" if not np.isfinite(values["loss"])
                   else "the update made parameters or optimizer state non-finite")
        last_good = self.checkpointer.latest_step()
        kept = (f"the last good checkpoint (step {last_good}) is kept in "
                f"{self.checkpointer.directory}" if last_good else "no checkpoint was saved before it")
        raise errors.NonFiniteLoss(f"{problem} at step {step}; stopping: {kept}")
    now = time.perf_counter()
    elapsed = now - self._interval_start
    self.train_seconds += elapsed
    means = {name: float(np.mean([v[name] for v in fetched])) for name in fetched[0]
             if name != steps_lib.STATE_IS_FINITE}
    means.update(learning_rate=float(self.schedule(now_step - 1)), steps=len(fetched))
    timed = len(fetched) - self._untimed
    if timed:
      means.update(images_per_s=timed * self.plan.global_batch / max(elapsed, 1e-9),
                   step_time_s=elapsed / timed)
    self.writer.write(now_step, "train", means)
    remaining = self.remaining_time.seconds(now_step, now)
    speed = (f"{means['images_per_s']:7.1f} img/s" if timed
             else "first step of the session (compiled)")
    eta = "" if remaining is None else f"  ETA {metrics.format_duration(remaining)}"
    metrics.console(
        f"step {now_step:>6}/{self.plan.total_steps}  loss {means['loss']:.4f}  "
        f"acc {100 * means['accuracy']:5.1f}%  lr {means['learning_rate']:.5f}  {speed}{eta}")
    self._pending = []
    self._untimed = 0
    self._interval_start = time.perf_counter()


class Preemption:
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


class ProfileWindow:
  """A `jax.profiler` trace of `steps` training steps, from the end of the session's first step
  (which compiles) on, written under <workdir>/profile for TensorBoard's profile plugin or
  Perfetto. A run that ends or stops inside the window closes the trace where it is."""

  def __init__(self, workdir: str, steps: int, start_step: int):
    self.directory = os.path.join(workdir, "profile")
    self.first, self.last = start_step + 1, start_step + 1 + steps
    self.steps = steps
    self.tracing = False

  def after_step(self, done: int, outputs) -> None:
    if not self.steps or done not in (self.first, self.last):
      return
    jax.block_until_ready(outputs)  # the trace holds exactly the steps of the window
    if done == self.first:
      jax.profiler.start_trace(self.directory)
      self.tracing = True
    else:
      self._stop()

  def _stop(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
      metrics.console(f"Profile of steps {self.first + 1}-{self.last} written to {self.directory}")

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._stop()


def _start(config, workdir: str, checkpointer: checkpoints.Checkpointer,
           training: steps_lib.Training, start_step: int):
  """The state to train from and the training time so far (None where a checkpoint from
  before the time was kept does not say): restored, or initialised (from train.init_from's
  weights where it is set)."""
  if not start_step:
    state = training.init()
    if config.train.init_from:
      state, note = pretrained.start_from(config, state, training.evaluation.replicated)
      metrics.console(note)
    return state, 0.0
  checkpointer.check_restorable(training.abstract_state, start_step, "resume this training")
  state = checkpointer.restore(training.abstract_state, start_step)
  metrics.console(f"Resumed from the checkpoint of step {start_step} in {workdir}")
  return state, checkpointer.train_seconds(start_step)


def _describe(config, plan: RunPlan) -> str:
  cost = costs.count(config.model.variant, config.model.alpha, config.data.resolution,
                     config.model.num_classes)
  return (f"{config.model.variant} alpha={config.model.alpha} {config.data.resolution}px: "
          f"{cost.mult_adds / 1e6:.0f}M mult-adds, {cost.params / 1e6:.2f}M params | "
          f"{plan.info.num_train_examples} train / {plan.info.num_eval_examples} eval examples | "
          f"{plan.total_steps} steps of {plan.global_batch} ({plan.steps_per_epoch}/epoch) on "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)")


@dataclasses.dataclass(frozen=True)
class Session:
  """What one session of a run works with, besides the state it trains."""
  config: ml_collections.ConfigDict
  workdir: str
  plan: RunPlan
  checkpointer: checkpoints.Checkpointer
  training: steps_lib.Training
  writer: metrics.MetricWriter
  hooks: Hooks
  start_step: int
  earlier_seconds: float | None  # training time before this session; None where not kept


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: Hooks | None = None) -> dict:
  """Trains from the latest checkpoint in `workdir` (or from scratch) to the end; evaluates.
  `hooks`: where tests inject faults."""
  hooks = hooks or Hooks()
  with checkpoints.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                before_commit=lambda: hooks.save_committing()) as checkpointer:
    start_step = checkpointer.latest_step() or 0
    if start_step:  # another run's checkpoint is refused now, before any data is read
      checkpoints.check_same_run(checkpointer.saved_config(start_step),
                                 json.loads(config.to_json_best_effort()), workdir)
    pretrained.check_init_from(config)
    plan = plan_run(config)
    allocator.release_free_memory()  # what building the data caches used and freed
    finished = results.finished_run(workdir, start_step, plan.total_steps)
    if finished is not None:  # nothing to train or evaluate again, nothing to append to the logs
      metrics.console(f"This run is finished (step {start_step} of {plan.total_steps}); its "
                      f"results are in {os.path.join(workdir, results.FILENAME)}")
      return {**finished, "finished_before": True}
    warning = short_run_warning(config.optimizer, steps_per_epoch=plan.steps_per_epoch,
                                total_steps=plan.total_steps)
    if warning:
      logging.warning(warning)
    training = steps_lib.build(config, devices.device_mesh(),
                               steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps)
    state, train_seconds = _start(config, workdir, checkpointer, training, start_step)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as out:
        out.write(config.to_json_best_effort(indent=2))
    metrics.console(_describe(config, plan))
    writer = metrics.MetricWriter(workdir)
    try:
      return _loop(Session(config, workdir, plan, checkpointer, training, writer, hooks,
                           start_step, train_seconds), state)
    finally:
      writer.close()


def _loop(session: Session, state) -> dict:
  config, plan, training, hooks = session.config, session.plan, session.training, session.hooks
  checkpointer, writer, start_step = session.checkpointer, session.writer, session.start_step
  progress = Progress(plan, training.schedule, writer, checkpointer,
                      session.earlier_seconds or 0.0)
  batches = plan.dataset.train_batches(global_batch_size=plan.global_batch, seed=config.seed,
                                       start_step=start_step)

  def save(step: int) -> None:
    progress.check(step)  # never save a state whose loss went non-finite
    hooks.save_started(step)
    checkpointer.save(step, state, config, train_seconds=progress.train_seconds)

  def evaluate(step: int) -> dict:
    progress.check(step)  # a diverged state is not worth evaluating
    totals = evaluation.evaluate(
        training.evaluation, steps_lib.evaluated_variables(state),
        plan.dataset.eval_batches(global_batch_size=config.train.eval_batch_size),
        after_batch=lambda: hooks.eval_batch_done(step))
    progress.restart_clock()
    allocator.release_free_memory()  # compiling and running evaluation's step
    writer.write(step, "eval", totals)
    return totals

  profile = ProfileWindow(session.workdir, config.train.profile_steps, start_step)
  with Preemption() as preemption, profile:
    for step in range(start_step, plan.total_steps):
      state, step_metrics = training.train(state, training.evaluation.global_batch(next(batches)))
      done = step + 1
      hooks.step_done(done)
      profile.after_step(done, (state, step_metrics))
      progress.add(done, step_metrics, first_of_session=step == start_step)
      if step == start_step:  # the step is compiled: the compiler's working memory is free
        allocator.release_free_memory()
      if progress.due(done):
        progress.check(done)
      if preemption.requested:
        save(done)
        checkpointer.wait()
        metrics.console(f"SIGTERM received: saved the checkpoint of step {done}; exiting. "
                        "Run the same command to resume.")
        return {"preempted_at": done}
      if done % plan.checkpoint_every == 0 and done != plan.total_steps:
        save(done)
      if done % plan.eval_every == 0 and done != plan.total_steps:
        totals = evaluate(done)
        metrics.console(f"eval at step {done}: top-1 {100 * totals['top1']:.2f}%  "
                        f"top-5 {100 * totals['top5']:.2f}%")
  final_step = max(plan.total_steps, start_step)
  if start_step < plan.total_steps:
    save(final_step)
  del batches  # its prefetching would compete with the final evaluation for the CPU
  allocator.release_free_memory()  # training's temporaries: evaluation needs far less
  totals = evaluate(final_step)
  return _finish(session, state, totals, final_step=final_step,
                 all_seconds=progress.train_seconds)


def _finish(session: Session, state, totals: dict, *, final_step: int,
            all_seconds: float) -> dict:
  """Writes the results of the final evaluation, with the inference speed and the training
  time of this session and (where every checkpoint kept it) of the whole run."""
  config, plan, training, checkpointer = (session.config, session.plan, session.training,
                                          session.checkpointer)
  start_step, earlier_seconds = session.start_step, session.earlier_seconds
  record = {**results.evaluation_record(config, final_step, totals, devices.description()),
            "infer_images_per_s": evaluation.measure_inference_speed(
                training.evaluation.net, steps_lib.evaluated_variables(state), config)}
  session_images = (plan.total_steps - start_step) * plan.global_batch
  session_seconds = all_seconds - (earlier_seconds or 0.0)
  if session_images > 0:
    record.update(session_train_wall_s=session_seconds,
                  session_train_images_per_s=session_images / session_seconds)
  if earlier_seconds is not None and all_seconds > 0:
    record.update(train_wall_s=all_seconds,
                  train_images_per_s=final_step * plan.global_batch / all_seconds)
  checkpointer.wait()  # the results name the final checkpoint: it must be on disk first
  path = os.path.join(session.workdir, results.FILENAME)
  if jax.process_index() == 0:
    results.write(path, record)
  metrics.console(f"final eval at step {final_step}: top-1 {100 * totals['top1']:.2f}%  "
                  f"top-5 {100 * totals['top5']:.2f}%; results in {path}")
  return record
