"""`eval_results.json`: a run's measured figures, written by training, eval.py and the export,
read by the report and the sweeps. Its schema lives here only. Imports no JAX.

Writers merge: each replaces the keys it measures and keeps the rest (training's time and speed,
the export's latency), through a temporary file and a rename, so no reader sees half a file.
"""
import json
import os
import pathlib
from typing import Any

from mobilenet import costs, errors, protocol

FILENAME = "eval_results.json"
NUMBER = (int, float)
# Keys every eval_results.json has, and the JSON types they may take.
REQUIRED_KEYS = {
    "top1": NUMBER, "top5": NUMBER, "params": int, "mult_adds": int, "variant": str,
    "alpha": NUMBER, "resolution": int, "dataset": str, "step": int,
    "infer_images_per_s": NUMBER, "device": str,
}
OPTIONAL_KEYS = {"seed": int, "train_wall_s": NUMBER, "train_images_per_s": NUMBER, "name": str,
                 "litert_fp32_ms": NUMBER, "litert_int8_ms": NUMBER, "litert_int8_top1": NUMBER,
                 "litert_device": str}
VARIANTS = ("dws", "conv", "shallow")
# What tools.export measures: batch-1 median latency with one thread, int8 accuracy.
LATENCY_KEYS = ("litert_fp32_ms", "litert_int8_ms", "litert_int8_top1")


class ResultsError(errors.UserError, ValueError):
  """An eval_results.json that cannot be read or does not follow the schema."""


def _is_of_type(value: Any, expected) -> bool:
  # bool is an int in Python, never a count or a score here; an integral float
  # (e.g. 400.0 written by a serializer) still counts as an int.
  if isinstance(value, bool):
    return False
  if expected is int and isinstance(value, float):
    return value.is_integer()
  return isinstance(value, expected)


def validate(record: Any, source) -> dict:
  """The record, after checking it against the schema; a ResultsError naming the key if not."""
  if not isinstance(record, dict):
    raise ResultsError(f"{source}: expected one JSON object, got {type(record).__name__}")
  for key in REQUIRED_KEYS:
    if key not in record:
      raise ResultsError(f"{source}: missing key '{key}'")
  for key, expected in {**REQUIRED_KEYS, **OPTIONAL_KEYS}.items():
    if record.get(key) is not None and not _is_of_type(record[key], expected):
      raise ResultsError(f"{source}: key '{key}' has the wrong type ({record[key]!r})")
  if record["variant"] not in VARIANTS:
    raise ResultsError(f"{source}: key 'variant' must be one of {', '.join(VARIANTS)}; "
                       f"got {record['variant']!r}")
  for key in ("top1", "top5", "litert_int8_top1"):
    if key in record and not 0 <= record[key] <= 1:
      raise ResultsError(f"{source}: key '{key}' must be a fraction in [0, 1]; got {record[key]!r}")
  for key in ("mult_adds", "params", "resolution", "alpha", "litert_fp32_ms", "litert_int8_ms"):
    if key in record and not record[key] > 0:
      raise ResultsError(f"{source}: key '{key}' must be > 0; got {record[key]!r}")
  return record


def read_json(path) -> Any:
  """The JSON value in `path`; a ResultsError naming the file where it cannot be read."""
  try:
    return json.loads(pathlib.Path(path).read_text())
  except json.JSONDecodeError as error:
    raise ResultsError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: "
                       f"{error.msg})") from None
  except (OSError, UnicodeDecodeError) as error:
    raise ResultsError(f"{path}: cannot read ({error})") from None


def read(path) -> dict:
  """A checked eval_results.json."""
  return validate(read_json(path), path)


def read_if_any(path) -> dict:
  """What an eval_results.json holds, or {} where there is none (or it is not a record)."""
  try:
    record = json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError):
    return {}
  return record if isinstance(record, dict) else {}


def merge(path, figures: dict) -> dict:
  """Read-modify-write: every key already there is kept, those of `figures` replaced."""
  record = {}
  if os.path.exists(path):
    record = read_json(path)
    if not isinstance(record, dict):
      raise ResultsError(f"{path} holds a {type(record).__name__}, not one JSON object")
  record.update(figures)
  return write(path, record)


def write(path, record: dict) -> dict:
  """Replaces the file with `record`, through a temporary file and a rename."""
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w", encoding="utf-8") as out:
    json.dump(record, out, indent=2)
  os.replace(temporary, path)
  return record


def evaluation_record(config, step: int, totals: dict, device: str) -> dict:
  """What evaluating a model of `config` at `step` measured, with what identifies it."""
  cost = costs.count(config.model.variant, config.model.alpha, config.data.resolution,
                     config.model.num_classes)
  return {
      "top1": totals["top1"], "top5": totals["top5"], "loss": totals["loss"],
      "num_examples": totals["count"],
      "params": cost.params, "mult_adds": cost.mult_adds,
      "variant": config.model.variant, "alpha": config.model.alpha,
      "resolution": config.data.resolution, "eval_split": config.data.eval_split,
      "dataset": protocol.dataset_name(config.data),
      "step": int(step), "seed": config.seed, "device": device,
      **({"init_from": config.train.init_from} if config.train.init_from else {}),
  }


def finished_run(workdir: str, latest_step: int | None, total_steps: int) -> dict | None:
  """The results of a run that already ended: its latest checkpoint is the final step and its
  eval_results.json evaluates that step (a run killed in its final evaluation has none)."""
  if latest_step is None or latest_step < total_steps:
    return None
  record = read_if_any(os.path.join(workdir, FILENAME))
  return record if record.get("step") == latest_step else None
