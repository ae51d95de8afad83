"""Where numbers go: a JSON-lines file and TensorBoard events in the workdir, and the console.

Imports no JAX (the report and the sweep tools format durations with it); process 0 is asked
for only when something is written.
"""
import json
import os
import time

FILENAME = "metrics.jsonl"


def _is_first_process() -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


class MetricWriter:
  """Writes scalars from process 0 only, so a pod slice leaves one copy."""

  def __init__(self, workdir: str):
    self.enabled = _is_first_process()
    self._jsonl = None
    self._tensorboard = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, FILENAME), "a", encoding="utf-8")
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


def read_records(path) -> list[dict]:
  """Every record of a metrics.jsonl, in order; a ValueError naming the file and the line that
  is not JSON (OSError where the file cannot be read)."""
  records = []
  with open(path, encoding="utf-8") as file:
    for number, line in enumerate(file, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        raise ValueError(f"{path}: line {number} is not valid JSON") from None
  return records


def evaluation_curve(path, num_epochs: float, final_step: int) -> tuple[list, list]:
  """(epochs, top-1) after each evaluation logged in a metrics.jsonl. A step evaluated again
  by a resumed run counts with its last record; a record without an epoch (train.py's) is at
  step * num_epochs / final_step, its evaluations being at multiples of an epoch's steps."""
  evaluations = {int(record["step"]): record for record in read_records(path)
                 if isinstance(record, dict) and record.get("kind") == "eval"}
  steps = sorted(evaluations)
  return ([float(evaluations[step].get("epoch", step * num_epochs / final_step))
           for step in steps],
          [float(evaluations[step]["top1"]) for step in steps])


def console(message: str) -> None:
  if _is_first_process():
    print(message, flush=True)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
