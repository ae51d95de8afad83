"""Where numbers go: a JSON-lines file and TensorBoard events in the workdir, and the console."""
import json
import os
import time

import jax


class MetricWriter:
  """Writes scalars from process 0 only, so a pod slice leaves one copy."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tensorboard = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      from flax.metrics import tensorboard  # imports TensorFlow; only process 0 pays
      self._tensorboard = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, kind: str, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "kind": kind, "time": time.time()}
    record.update({name: float(value) for name, value in scalars.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tensorboard.scalar(f"{kind}/{name}", float(value), int(step))
    self._tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()


def console(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def training_seconds(workdir: str) -> float:
  """Seconds spent in training steps over every session of a run, from its metrics.jsonl.

  Each train record holds the mean step time over the steps since the one before.
  Steps that a restart redid (from a checkpoint older than the last record) count
  once, with their last timing. Evaluation and start-up between sessions are not
  included; the first steps of a session include compilation.
  """
  seconds_by_step, previous = {}, 0
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as lines:
    for line in lines:
      record = json.loads(line)
      if record.get("kind") != "train":
        continue
      step = record["step"]
      # Records before "steps" was logged: the gap to the previous one, if it is one.
      steps = record.get("steps") or (step - previous if step > previous else 0)
      seconds_by_step[step] = steps * record["step_time_s"]
      previous = step
  return sum(seconds_by_step.values())
