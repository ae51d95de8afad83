"""Orbax checkpoints in `<workdir>/checkpoints`, each with the config it was trained with."""
import collections
import contextlib
import os
import signal

from absl import logging
import ml_collections
import orbax.checkpoint as ocp

SUBDIRECTORY = "checkpoints"
# Fields that decide the shapes of the parameters or of the optimizer state: a checkpoint can
# only be restored into a run that agrees on them.
MODEL_FIELDS = ("model.variant", "model.alpha", "model.num_classes")
# Fields that also decide what evaluating a checkpoint computes: eval.py takes them from the
# checkpoint and refuses a flag or config file that says otherwise.
EVALUATION_FIELDS = MODEL_FIELDS + ("model.bn_epsilon", "data.resolution")


def lookup(config, dotted: str):
  """config["a"]["b"] for "a.b", in a dict or a ConfigDict; None where a part is missing."""
  value = config
  for part in dotted.split("."):
    value = value.get(part) if isinstance(value, (dict, ml_collections.ConfigDict)) else None
  return value


def _optimizer_structure(config: dict) -> tuple:
  opt = config.get("optimizer", {})
  return (opt.get("name"), (opt.get("grad_clip_norm") or 0) > 0,
          opt.get("name") != "adamw" and (opt.get("weight_decay") or 0) > 0)


# Fault injection for tests/test_faults.py: MOBILENET_KILL_AT=<point>:<step> SIGKILLs the run at
# one point of that step, so the tests can prove that a killed run resumes with nothing lost.
KILL_AT_ENV = "MOBILENET_KILL_AT"


def kill_if_injected(point: str, step: int) -> None:
  """point: train (the step in flight), save (its checkpoint written but not yet renamed into
  place) or eval (the evaluation after the step in progress)."""
  if os.environ.get(KILL_AT_ENV) == f"{point}:{step}":
    os.kill(os.getpid(), signal.SIGKILL)


class IncompatibleCheckpoint(ValueError):
  pass


class CheckpointNotWritten(RuntimeError):
  pass


def check_compatible(saved: dict, current: dict, workdir: str, *, for_training: bool) -> None:
  """Refuses a checkpoint of another model (or, to resume training, another optimizer)."""
  for field in MODEL_FIELDS:
    if lookup(saved, field) != lookup(current, field):
      raise IncompatibleCheckpoint(
          f"{workdir} holds a checkpoint of a different model: {field} is "
          f"{lookup(saved, field)!r} there but {lookup(current, field)!r} in this config; "
          "use another --workdir or the checkpoint's config")
  if for_training and _optimizer_structure(saved) != _optimizer_structure(current):
    raise IncompatibleCheckpoint(
        f"{workdir} holds a checkpoint trained with another optimizer setup "
        f"(name, clipping, weight decay = {_optimizer_structure(saved)} there, "
        f"{_optimizer_structure(current)} here); use another --workdir")


class Checkpointer:
  """Saves every K steps and at the end, keeps the last few, restores the latest.

  Orbax writes each checkpoint into a temporary folder and renames it when complete,
  so a run killed mid-save leaves no checkpoint that restore would pick up; the next
  run deletes that folder.
  """

  def __init__(self, workdir: str, *, keep: int = 3, read_only: bool = False):
    self.workdir = workdir
    self.directory = os.path.join(os.path.abspath(workdir), SUBDIRECTORY)
    self._steps_being_saved = collections.deque()
    self._closed = False
    # read_only (eval.py): create nothing, delete nothing; a training run may be writing there.
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only,
            cleanup_tmp_directories=not read_only,  # what a run killed mid-save left behind
            async_options=ocp.AsyncOptions(post_finalization_callback=self._before_rename)),
        item_names=("state", "config"))

  def _before_rename(self) -> None:
    """Orbax calls this once a checkpoint is complete in its temporary folder, just before the
    rename that makes it visible; saves finish in the order they started."""
    kill_if_injected("save", self._steps_being_saved.popleft())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _existing_step(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step not in self.manager.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                              f"(steps there: {list(self.manager.all_steps())})")
    return step

  def step_to_restore(self, step: int | None = None) -> int:
    """`step`, or the latest; where there is no checkpoint at all, says to train first."""
    if self.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}: train first with "
                              f"train.py --workdir={self.workdir}")
    return self.latest_step() if step is None else step

  def saved_config(self, step: int | None = None) -> dict:
    step = self._existing_step(step)
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored.config

  def save(self, step: int, state, config: ml_collections.ConfigDict) -> None:
    self._steps_being_saved.append(step)
    with self._write_errors():  # the previous save's, which orbax raises when the next one starts
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict())),
          force=True)

  def restore(self, target_state, step: int | None = None):
    """Restores into the structure, shapes and shardings of `target_state`."""
    step = self._existing_step(step)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target_state)))
    return restored.state

  @contextlib.contextmanager
  def _write_errors(self):
    """A save that failed in the background (disk full, read-only) stops the run in one line."""
    try:
      yield
    except (OSError, ValueError) as error:  # tensorstore reports a full disk as a ValueError
      raise CheckpointNotWritten(f"could not write a checkpoint in {self.directory}: {error}; "
                                 "the checkpoints there before it are intact") from None

  def wait(self) -> None:
    with self._write_errors():
      self.manager.wait_until_finished()

  def close(self, *, quietly: bool = False) -> None:
    """Waits for the last save and stops orbax's threads; later calls do nothing.

    quietly: while another error is on its way out, whose message is the one to show
    (after a failed write, orbax's own shutdown may fail with "Event loop is closed").
    """
    if self._closed:
      return
    self._closed = True
    try:
      try:
        self.wait()
      finally:
        self.manager.close()
    except Exception as error:  # pylint: disable=broad-except
      if not quietly:
        raise
      logging.warning("closing the checkpoint manager after an error: %r", error)


def read_trained_config(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """The config a run's checkpoint (the latest by default) was saved with, and its step: what
  eval.py and the export take the model and its resolution from."""
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    step = checkpointer.step_to_restore(step)
    return checkpointer.saved_config(step), step
  finally:
    checkpointer.close()
