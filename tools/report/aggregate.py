"""Runs merged into one row per model and protocol: seeds as mean and half range, timings kept
apart by the device that measured them."""
import collections
import dataclasses
import statistics
from typing import Callable, Optional, Sequence

from mobilenet import protocol
from tools.report.load import CONFIG_FILENAME, ReportError, Run
from tools.report.paper import PaperRow, paper_row


VARIANT_LABELS = {"dws": "MobileNet", "conv": "Conv MobileNet", "shallow": "Shallow MobileNet"}


@dataclasses.dataclass(frozen=True)
class ModelRow:
  name: str
  dataset: str
  variant: str
  alpha: float
  resolution: int
  runs: tuple[Run, ...]
  top1_mean: float
  top1_spread: Optional[float]  # half the range; None for a single run
  top5_mean: float
  mult_adds: int
  params: int
  paper: Optional[PaperRow]
  # Timings, {device: mean over the row's runs timed there}: a speed measured on one machine
  # and one measured on another do not average into a speed of either.
  infer_images_per_s_by_device: dict = dataclasses.field(default_factory=dict)
  litert_fp32_ms_by_device: dict = dataclasses.field(default_factory=dict)
  litert_int8_ms_by_device: dict = dataclasses.field(default_factory=dict)
  # Mean over the runs that were exported (None where none was), as the accuracy columns.
  litert_int8_top1_mean: Optional[float] = None
  litert_int8_top1_spread: Optional[float] = None
  # The settings that tell this row from other rows of the same model; empty when it has none.
  protocol: dict = dataclasses.field(default_factory=dict)


def format_alpha(alpha: float) -> str:
  """1.0 -> "1.0", 0.75 -> "0.75": the paper writes the width multiplier this way."""
  text = f"{alpha:.4f}".rstrip("0")
  return text + "0" if text.endswith(".") else text


def model_name(variant: str, alpha: float, resolution: int, base_resolution: int) -> str:
  """The paper's names: "0.75 MobileNet-128"; "Conv MobileNet" and "Shallow MobileNet"
  carry a width or resolution only where they leave the base model's."""
  if variant == "dws":
    return f"{format_alpha(alpha)} MobileNet-{resolution}"
  width = "" if alpha == 1.0 else f"{format_alpha(alpha)} "
  size = "" if resolution == base_resolution else f"-{resolution}"
  return f"{width}{VARIANT_LABELS[variant]}{size}"


def half_range(values: Sequence[float]) -> Optional[float]:
  return (max(values) - min(values)) / 2 if len(values) > 1 else None


def measured(runs: Sequence[Run], key: str) -> list[float]:
  """The values of an optional figure, from the runs that have it."""
  return [getattr(run, key) for run in runs if getattr(run, key) is not None]


def mean_if_any(values: Sequence[float]) -> Optional[float]:
  return statistics.fmean(values) if values else None


def means_by_device(runs: Sequence[Run], key: str,
                    device_of: Callable[[Run], Optional[str]]) -> dict:
  """{device: mean of the runs' figure `key` measured there}, devices in name order."""
  values = collections.defaultdict(list)
  for run in runs:
    if getattr(run, key) is not None:
      values[device_of(run)].append(getattr(run, key))
  return {device: statistics.fmean(values[device]) for device in sorted(values)}


def only_value(by_device: dict) -> Optional[float]:
  """The figure of a row timed on one device; None for one timed on several, or on none."""
  return next(iter(by_device.values())) if len(by_device) == 1 else None


def timing_devices(rows: Sequence[ModelRow]) -> list[str]:
  """Every device a timing column of these rows was measured on."""
  return sorted({device for row in rows
                 for by_device in (row.infer_images_per_s_by_device,
                                   row.litert_fp32_ms_by_device, row.litert_int8_ms_by_device)
                 for device in by_device})


def has_latency(rows: Sequence[ModelRow]) -> bool:
  return any(run.litert_fp32_ms is not None for row in rows for run in row.runs)


def the_same(runs: Sequence[Run], key: str, name: str):
  """A value that all runs of one model must agree on (their size is analytic)."""
  values = {getattr(run, key) for run in runs}
  if len(values) > 1:
    sources = ", ".join(run.source for run in runs)
    raise ReportError(f"runs of {name} disagree on '{key}' ({sorted(values)}): {sources}")
  return values.pop()


def same_protocol(first: Run, second: Run) -> bool:
  """Whether two runs of one model measure the same thing, so that they may merge as seeds.
  A run without a config.json merges only with others that lack one too."""
  return (first.has_config == second.has_config
          and not protocol.differing_fields(first.settings, second.settings))


def protocol_groups(runs: Sequence[Run]) -> list[list[Run]]:
  """The runs of one model split into groups of one protocol, each run in the first group
  all of whose runs share its protocol."""
  groups = []
  for run in sorted(runs, key=lambda run: run.source):
    group = next((group for group in groups
                  if all(same_protocol(run, member) for member in group)), None)
    if group is None:
      groups.append([run])
    else:
      group.append(run)
  return groups


def distinguishing_settings(groups: Sequence[Sequence[Run]]) -> list[dict]:
  """For each group of one model, the settings in which it differs from another group:
  {} for a single group; {"config.json": "missing"} for runs whose settings are unknown."""
  if len(groups) == 1:
    return [{}]
  fields = []
  for index, group in enumerate(groups):
    for other in groups[index + 1:]:
      fields += [field for field in protocol.differing_fields(other[0].settings, group[0].settings)
                 if field not in fields]
  labels = []
  for group in groups:
    settings = group[0].settings
    label = {field: settings[field] for field in sorted(fields) if field in settings}
    if not group[0].has_config:
      label = {CONFIG_FILENAME: "missing", **label}
    labels.append(label)
  return labels


def protocol_label(protocol: dict) -> str:
  """{"train.num_epochs": 3.0} -> " (train.num_epochs=3.0)"; "" for no settings."""
  if not protocol:
    return ""
  return " (" + ", ".join(f"{field}={value}" for field, value in protocol.items()) + ")"


def aggregate(runs: Sequence[Run], base_resolution: int) -> list[ModelRow]:
  """One row per model and protocol, sorted as the paper's tables: most mult-adds first."""
  by_model = collections.defaultdict(list)
  for run in runs:
    by_model[run.model_key].append(run)
  by_protocol = []
  for model_key, model_runs in by_model.items():
    groups = protocol_groups(model_runs)
    by_protocol += [(model_key, settings, group)
                    for settings, group in zip(distinguishing_settings(groups), groups)]
  rows = []
  for (dataset, variant, alpha, resolution), settings, model_runs in by_protocol:
    name = model_name(variant, alpha, resolution, base_resolution) + protocol_label(settings)
    model_runs = sorted(model_runs, key=lambda run: (run.seed is None, run.seed or 0, run.source))
    top1s = [run.top1 for run in model_runs]
    rows.append(ModelRow(
        name=name, dataset=dataset, variant=variant, alpha=alpha, resolution=resolution,
        runs=tuple(model_runs),
        top1_mean=statistics.fmean(top1s), top1_spread=half_range(top1s),
        top5_mean=statistics.fmean(run.top5 for run in model_runs),
        mult_adds=the_same(model_runs, "mult_adds", name),
        params=the_same(model_runs, "params", name),
        infer_images_per_s_by_device=means_by_device(
            model_runs, "infer_images_per_s", lambda run: run.device),
        litert_fp32_ms_by_device=means_by_device(
            model_runs, "litert_fp32_ms", lambda run: run.latency_device),
        litert_int8_ms_by_device=means_by_device(
            model_runs, "litert_int8_ms", lambda run: run.latency_device),
        litert_int8_top1_mean=mean_if_any(measured(model_runs, "litert_int8_top1")),
        litert_int8_top1_spread=half_range(measured(model_runs, "litert_int8_top1")),
        paper=paper_row(variant, alpha, resolution, base_resolution), protocol=settings))
  return sorted(rows, key=lambda row: (row.dataset, -row.mult_adds, row.name))
