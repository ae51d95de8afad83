"""Orbax checkpoints in `<workdir>/checkpoints`, each with the config it was trained with."""
import os

import ml_collections
import orbax.checkpoint as ocp

# Fields that decide the shapes of the parameters or of the optimizer state: a checkpoint can
# only be restored into a run that agrees on them.
MODEL_FIELDS = ("model.variant", "model.alpha", "model.num_classes")


def _lookup(config: dict, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value.get(part) if isinstance(value, dict) else None
  return value


def _optimizer_structure(config: dict) -> tuple:
  opt = config.get("optimizer", {})
  return (opt.get("name"), (opt.get("grad_clip_norm") or 0) > 0,
          opt.get("name") != "adamw" and (opt.get("weight_decay") or 0) > 0)


class IncompatibleCheckpoint(ValueError):
  pass


def check_compatible(saved: dict, current: dict, workdir: str, *, for_training: bool) -> None:
  """Refuses a checkpoint of another model (or, to resume training, another optimizer)."""
  for field in MODEL_FIELDS:
    if _lookup(saved, field) != _lookup(current, field):
      raise IncompatibleCheckpoint(
          f"{workdir} holds a checkpoint of a different model: {field} is "
          f"{_lookup(saved, field)!r} there but {_lookup(current, field)!r} in this config; "
          "use another --workdir or the checkpoint's config")
  if for_training and _optimizer_structure(saved) != _optimizer_structure(current):
    raise IncompatibleCheckpoint(
        f"{workdir} holds a checkpoint trained with another optimizer setup "
        f"(name, clipping, weight decay = {_optimizer_structure(saved)} there, "
        f"{_optimizer_structure(current)} here); use another --workdir")


class Checkpointer:
  """Saves every K steps and at the end, keeps the last few, restores the latest.

  Orbax writes each checkpoint into a temporary folder and renames it when complete,
  so a run killed mid-save leaves no checkpoint that restore would pick up.
  """

  def __init__(self, workdir: str, *, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def saved_config(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored.config

  def save(self, step: int, state, config: ml_collections.ConfigDict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict())),
        force=True)

  def restore(self, target_state, step: int | None = None):
    """Restores into the structure, shapes and shardings of `target_state`."""
    step = self.latest_step() if step is None else step
    if step not in self.manager.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                              f"(steps there: {list(self.manager.all_steps())})")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target_state)))
    return restored.state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
