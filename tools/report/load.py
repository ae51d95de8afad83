"""Reads finished runs: each eval_results.json, checked, and the settings of the config.json
beside it, which decide what may merge as seeds of one protocol."""
import dataclasses
import pathlib
from typing import Any, Iterable, Optional

from mobilenet import errors, protocol, results


RESULTS_FILENAME = results.FILENAME
CONFIG_FILENAME = "config.json"  # what train.py trained the run with, beside its results
LATENCY_KEYS = results.LATENCY_KEYS
CPU_PREFIX = "cpu: "  # how devices.description() names a CPU; the export names it bare

# What eval_results.json records about how a run was measured that its config.json may not
# (eval.py can evaluate an earlier checkpoint, or another split, of the same run).
MEASUREMENT_KEYS = ("step", "eval_split")


class ReportError(errors.UserError, ValueError):
  """A problem with the inputs (a missing path, a malformed file, runs that disagree)."""


@dataclasses.dataclass(frozen=True)
class Run:
  source: str  # the eval_results.json it came from
  run_name: str  # `name` from the file, else the workdir's name
  top1: float
  top5: float
  params: int
  mult_adds: int
  variant: str
  alpha: float
  resolution: int
  dataset: str
  step: int
  infer_images_per_s: float
  device: str
  seed: Optional[int] = None
  train_wall_s: Optional[float] = None
  train_images_per_s: Optional[float] = None
  litert_fp32_ms: Optional[float] = None
  litert_int8_ms: Optional[float] = None
  litert_int8_top1: Optional[float] = None
  litert_device: Optional[str] = None
  # Where train_wall_s was measured, where eval.py later evaluated the run on another device.
  train_device: Optional[str] = None
  # protocol.settings of its config.json and its MEASUREMENT_KEYS; has_config: whether a
  # config.json was there at all (without one, the training settings are unknown).
  settings: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
  has_config: bool = dataclasses.field(default=False, compare=False, repr=False)

  @property
  def model_key(self) -> tuple:
    return (self.dataset, self.variant, self.alpha, self.resolution)

  @property
  def latency_device(self) -> Optional[str]:
    """The CPU its LiteRT model was timed on, named as `device` names one; None if not timed."""
    if self.litert_fp32_ms is None:
      return None
    if self.litert_device is None:
      return self.device
    return self.litert_device if self.litert_device.startswith(CPU_PREFIX) else (
        CPU_PREFIX + self.litert_device)


def results_file(path: pathlib.Path) -> Optional[pathlib.Path]:
  """The eval_results.json that a command-line PATH stands for; None for a workdir that has
  none yet (a run still training)."""
  if path.is_dir():
    candidate = path / RESULTS_FILENAME
    return candidate if candidate.is_file() else None
  if not path.exists():
    raise ReportError(f"{path}: no such file or directory")
  return path


def read_json(path: pathlib.Path):
  """The JSON value in `path`; a ReportError naming the file where it cannot be read."""
  try:
    return results.read_json(path)
  except results.ResultsError as error:
    raise ReportError(str(error)) from None


def load_settings(source: pathlib.Path, record: dict) -> tuple[dict, bool]:
  """The run's protocol: its config.json's settings (but the seed) and how it was measured."""
  measured = {key: record[key] for key in MEASUREMENT_KEYS if record.get(key) is not None}
  config_path = source.parent / CONFIG_FILENAME
  if not config_path.is_file():
    return measured, False
  config = read_json(config_path)
  if not isinstance(config, dict):
    raise ReportError(f"{config_path}: expected one JSON object, got {type(config).__name__}")
  return {**protocol.settings(config, ignoring=(protocol.SEED_FIELD,)), **measured}, True


def parse_run(record: Any, source: pathlib.Path) -> Run:
  """Checks one decoded eval_results.json and turns it into a Run."""
  try:
    results.validate(record, source)
  except results.ResultsError as error:
    raise ReportError(str(error)) from None
  seed = None if record.get("seed") is None else int(record["seed"])
  optional = {key: record.get(key) for key in ("train_wall_s", "train_images_per_s",
                                                *LATENCY_KEYS, "litert_device", "train_device")}
  return Run(
      source=str(source),
      run_name=record.get("name") or source.parent.name or str(source),
      top1=float(record["top1"]), top5=float(record["top5"]),
      params=int(record["params"]), mult_adds=int(record["mult_adds"]),
      variant=record["variant"], alpha=round(float(record["alpha"]), 4),
      resolution=int(record["resolution"]), dataset=record["dataset"], step=int(record["step"]),
      infer_images_per_s=float(record["infer_images_per_s"]), device=record["device"],
      seed=seed, **optional)


def load_run(source: pathlib.Path) -> Run:
  """Reads and checks one eval_results.json, and the config.json beside it."""
  record = read_json(source)
  run = parse_run(record, source)
  settings, has_config = load_settings(source, record)
  return dataclasses.replace(run, settings=settings, has_config=has_config)


def load_runs(paths: Iterable[pathlib.Path]) -> tuple[list[Run], list[pathlib.Path]]:
  """One Run per distinct file (a workdir named twice, or with its file, counts once), and
  the workdirs skipped because they have no results yet."""
  runs, skipped, seen = [], [], set()
  for path in paths:
    source = results_file(path)
    if source is None:
      skipped.append(path)
    elif source.resolve() not in seen:
      seen.add(source.resolve())
      runs.append(load_run(source))
  if not runs:
    raise ReportError(f"no finished run to report: {', '.join(map(str, skipped))} "
                      f"{'has' if len(skipped) == 1 else 'have'} no {RESULTS_FILENAME} yet")
  return runs, skipped
