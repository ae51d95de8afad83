"""Orbax checkpoints in `<workdir>/checkpoints`: the state, the config it was trained with and
the training time so far, and everything orbax needs handled around them.

    with checkpoints.Checkpointer(workdir, keep=3) as checkpointer:
      checkpointer.save(step, state, config, train_seconds=...)

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-save leaves no checkpoint that restore would pick up; the next run deletes that folder.
"""
import contextlib
import gc
import logging as python_logging
import os
import threading
import time
from typing import Callable, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from mobilenet import errors, protocol

SUBDIRECTORY = "checkpoints"
STATE, CONFIG, PROGRESS = "state", "config", "progress"


def lookup(config, dotted: str):
  """config["a"]["b"] for "a.b", in a dict or a ConfigDict; None where a part is missing."""
  value = config
  for part in dotted.split("."):
    value = value.get(part) if isinstance(value, (dict, ml_collections.ConfigDict)) else None
  return value


def check_same_model(saved: dict, current: dict, workdir: str) -> None:
  """Refuses a checkpoint of another model, naming the field (before anything is compiled)."""
  for field in protocol.MODEL_FIELDS:
    if lookup(saved, field) != lookup(current, field):
      raise errors.IncompatibleCheckpoint(
          f"{workdir} holds a checkpoint of a different model: {field} is "
          f"{lookup(saved, field)!r} there but {lookup(current, field)!r} in this config; "
          "use another --workdir or the checkpoint's config")


def check_same_run(saved: dict, current: dict, workdir: str) -> None:
  """Refuses to resume a run under another config (protocol.run_identity: the recipe, the
  schedule's length, the seed, the dataset), naming the first difference and the ways out;
  what differs only in bookkeeping (paths, logging, implementations) resumes."""
  saved_identity, current_identity = protocol.run_identity(saved), protocol.run_identity(current)
  differences = protocol.differing_fields(saved_identity, current_identity)
  if not differences:
    return
  field = differences[0]
  more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
  if field == protocol.DATASET_FIELD:
    where = (f"--config.data.folder={saved['data']['folder']}" if saved["data"]["source"] == "folder"
             else f"--config.data.tfds_name={saved['data']['tfds_name']}")
  else:
    where = f"--config.{field}={saved_identity[field]}"
  raise errors.DifferentRun(
      f"{workdir} holds a run started with {field}={saved_identity[field]!r}, but this config has "
      f"{current_identity[field]!r}{more}; use another --workdir for a new run, or resume that "
      f"one with its own settings ({where}; all of them in {os.path.join(workdir, 'config.json')})")


def _path_names(path) -> tuple:
  return tuple(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))) for key in path)


def _shapes(tree) -> dict:
  return {_path_names(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _is_orbax_thread(thread: threading.Thread) -> bool:
  """Orbax's own threads: of its classes, or running its functions. (Other libraries' idle
  workers, a thread pool of tensorflow-datasets say, never end: joining them would wait out the
  whole timeout.)"""
  target = getattr(thread, "_target", None)
  return any(getattr(owner, "__module__", "").startswith("orbax")
             for owner in (type(thread), target, getattr(target, "__func__", None)))


def _join_background_threads(timeout_s: float = 60.0) -> None:
  """Lets orbax's writer threads end, so that what they log comes before the caller's message.

  Thread.join itself, not the thread's own: orbax's _SignalingThread.join re-raises the error the
  thread already logged (or raises TimeoutError), which would replace the caller's."""
  deadline = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if (thread is not threading.current_thread() and not thread.daemon
        and _is_orbax_thread(thread)):
      threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))


class Checkpointer:
  """Saves every K steps and at the end, keeps the last few, restores the latest.

  A context manager: leaving it waits for the last save and stops orbax's threads. Leaving it
  with an exception also settles what orbax leaves behind after a failed write (its threads'
  logs, its abandoned coroutines, its event loop's late reports), so that the exception's
  message is the last thing a user sees.
  """

  def __init__(self, workdir: str, *, keep: int = 3, read_only: bool = False,
               before_commit: Optional[Callable[[], None]] = None):
    """before_commit: called when a save is complete in its temporary folder, just before the
    rename that makes it visible (saves finish in the order they started); tests inject faults
    there."""
    self.workdir = workdir
    self.directory = os.path.join(os.path.abspath(workdir), SUBDIRECTORY)
    self._closed = False
    # read_only (eval.py): create nothing, delete nothing; a training run may be writing there.
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only,
            cleanup_tmp_directories=not read_only,  # what a run killed mid-save left behind
            async_options=ocp.AsyncOptions(post_finalization_callback=before_commit)),
        # PyTree (not Standard) handling of the state: it can restore a part of it.
        item_handlers={STATE: ocp.PyTreeCheckpointHandler(),
                       CONFIG: ocp.JsonCheckpointHandler(),
                       PROGRESS: ocp.JsonCheckpointHandler()})

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, error_type, error, traceback) -> None:
    if error_type is None:
      self.close()
      return
    self.close(quietly=True)
    _join_background_threads()
    # Orbax's abandoned writes, once collected, are reported ("coroutine ... was never
    # awaited", "Task exception was never retrieved"): collect them now, before the message.
    gc.collect()
    # Its event loop keeps its other failed writes until exit, where asyncio would report each
    # below the message: the same error again.
    python_logging.getLogger("asyncio").setLevel(python_logging.CRITICAL)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _existing_step(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step not in self.manager.all_steps():
      raise errors.NotFound(f"no checkpoint for step {step} in {self.directory} "
                            f"(steps there: {list(self.manager.all_steps())})")
    return step

  def step_to_restore(self, step: int | None = None) -> int:
    """`step`, or the latest; where there is no checkpoint at all, says to train first."""
    if self.latest_step() is None:
      raise errors.NotFound(f"no checkpoint in {self.directory}: train first with "
                            f"train.py --workdir={self.workdir}")
    return self.latest_step() if step is None else step

  def saved_config(self, step: int | None = None) -> dict:
    step = self._existing_step(step)
    return self.manager.restore(step, args=ocp.args.Composite(
        **{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

  def train_seconds(self, step: int) -> float | None:
    """Seconds of training steps up to `step` over every session; None for a checkpoint
    written before the training time was saved with it."""
    if not os.path.isdir(os.path.join(self.directory, str(step), PROGRESS)):
      return None
    progress = self.manager.restore(step, args=ocp.args.Composite(
        **{PROGRESS: ocp.args.JsonRestore()}))[PROGRESS]
    return float(progress["train_seconds"])

  def check_restorable(self, abstract_state, step: int, for_what: str) -> None:
    """Refuses a checkpoint whose state has other leaves or shapes than `abstract_state` (say,
    another optimizer), naming the first difference, before anything is compiled."""
    metadata = self.manager.item_metadata(step)[STATE]
    saved, wanted = _shapes(getattr(metadata, "tree", metadata)), _shapes(abstract_state)
    if saved == wanted:
      return
    path = next((path for path in sorted(set(saved) | set(wanted), key=str)
                 if saved.get(path) != wanted.get(path)))
    where = "/".join(map(str, path))
    there = f"shape {saved[path]}" if path in saved else "nothing"
    here = f"shape {wanted[path]}" if path in wanted else "nothing"
    raise errors.IncompatibleCheckpoint(
        f"{self.workdir} holds a checkpoint whose state cannot {for_what}: at {where} it has "
        f"{there} where this config has {here} (another optimizer setup?); use another --workdir")

  def save(self, step: int, state, config: ml_collections.ConfigDict, *,
           train_seconds: float) -> None:
    with self._write_errors():  # the previous save's, which orbax raises when the next one starts
      self.manager.save(step, args=ocp.args.Composite(**{
          STATE: ocp.args.PyTreeSave(state), CONFIG: ocp.args.JsonSave(config.to_dict()),
          PROGRESS: ocp.args.JsonSave({"train_seconds": train_seconds})}), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """Restores into the structure, shapes and shardings of `abstract_state` (no values needed)."""
    step = self._existing_step(step)
    return self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
        item=abstract_state,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))}))[STATE]

  def restore_part(self, abstract_part: dict, step: int) -> dict:
    """Restores only the top-level fields of the state that `abstract_part` names (evaluation
    needs no optimizer state, hence no optimizer)."""
    step = self._existing_step(step)
    return self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
        item=abstract_part, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_part),
        partial_restore=True)}))[STATE]

  @contextlib.contextmanager
  def _write_errors(self):
    """A save that failed in the background (disk full, read-only) stops the run in one line."""
    try:
      yield
    except (OSError, ValueError) as error:  # tensorstore reports a full disk as a ValueError
      raise errors.CheckpointNotWritten(
          f"could not write a checkpoint in {self.directory}: {error}; the checkpoints there "
          "before it are intact") from None

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
  with Checkpointer(workdir, read_only=True) as checkpointer:
    step = checkpointer.step_to_restore(step)
    return checkpointer.saved_config(step), step
