"""Accuracy against mult-adds of finished runs, as the paper's Tables 4-7 and Figure 4 show it.

    python -m tools.report PATH [PATH ...] --out DIR [--title TEXT] [--paper]
                               [--paper-panel | --schedule] [--base-resolution 224]

Each PATH is a workdir holding eval_results.json, or that file itself. Writes
DIR/results.md (one table per dataset, one row per model, then every run),
DIR/results.json (the same rows, machine-readable) and
DIR/accuracy_vs_mult_adds.png. Where runs carry the LiteRT figures that
`python -m tools.export --workdir=W --int8` merges into eval_results.json,
the tables gain fp32 and int8 latency and int8 top-1 columns, and
DIR/accuracy_vs_latency.png plots top-1 against the measured fp32 latency: where
the mult-adds proxy and the measurement disagree.

`--paper-panel` makes DIR/accuracy_vs_mult_adds.png two panels, as the paper's
Figures 4 and 5 show the trade-off: one point per model (the mean of its runs)
and, beside it, the paper's ImageNet points for the same models. `--schedule`
reads the runs as a study of training length and writes DIR/schedule.md,
DIR/schedule.json and DIR/schedule.png instead: top-1 against the number of
epochs each run was trained for (its config.json's train.num_epochs), and each
run's top-1 after every evaluation during training, from its metrics.jsonl.

A workdir without eval_results.json yet (a run still training) is skipped with
one warning line; the report fails only when no finished run remains.

Runs of one model (same dataset, variant, alpha and resolution) trained under
the same protocol (e.g. several seeds) are merged into one row: the mean, ±
half the range (max - min) / 2, so that mean ± spread covers every run; with
two seeds the sample standard deviation would be a poor estimate, the half range
is exact about what was seen. The protocol is every setting of the run's
config.json (beside its eval_results.json) that changes what it measures, all
but the seed and BOOKKEEPING_FIELDS, with the step and split it was evaluated
at: runs of one model under different protocols stay separate rows, each named
with the settings that tell it apart.
"""
import argparse
import collections
import dataclasses
import json
import pathlib
import statistics
import sys
from typing import Any, Callable, Iterable, Optional, Sequence

from mobilenet import protocol
from mobilenet import results
from mobilenet import metrics
from mobilenet.metrics import format_duration

RESULTS_FILENAME = results.FILENAME
CONFIG_FILENAME = "config.json"  # what train.py trained the run with, beside its results
MARKDOWN_FILENAME = "results.md"
JSON_FILENAME = "results.json"
PLOT_FILENAME = "accuracy_vs_mult_adds.png"
LATENCY_PLOT_FILENAME = "accuracy_vs_latency.png"
SCHEDULE_MARKDOWN_FILENAME = "schedule.md"
SCHEDULE_JSON_FILENAME = "schedule.json"
SCHEDULE_PLOT_FILENAME = "schedule.png"
EPOCHS_FIELD = "train.num_epochs"

VARIANT_LABELS = {"dws": "MobileNet", "conv": "Conv MobileNet", "shallow": "Shallow MobileNet"}
# Display names by prefix, longest first: the trainer writes a folder's name
# ("imagenette2-224") or a tfds name ("imagenet2012").
DATASET_LABELS = (("imagenette", "Imagenette"), ("imagenet", "ImageNet"))

LATENCY_KEYS = results.LATENCY_KEYS
CPU_PREFIX = "cpu: "  # how devices.description() names a CPU; the export names it bare
# Words that name a CPU's maker or kind rather than the CPU, left out of its short label.
MAKER_WORDS = ("Intel", "AMD", "Processor", "CPU")
# What eval_results.json records about how a run was measured that its config.json may not
# (eval.py can evaluate an earlier checkpoint, or another split, of the same run).
MEASUREMENT_KEYS = ("step", "eval_split")

PAPER_BASE_RESOLUTION = 224
# The paper's resolution ladder is 224/192/160/128, steps of 32 px. A run's
# resolution, rescaled to 224, matches the nearest rung within half a step:
# this project's 128/112/96/80 ladder rescales to 224/196/168/140.
PAPER_RESOLUTIONS = (224, 192, 160, 128)
PAPER_RESOLUTION_TOLERANCE = 16


@dataclasses.dataclass(frozen=True)
class PaperRow:
  name: str
  top1_percent: float
  million_mult_adds: int
  million_params: float
  tables: str


# ImageNet rows of Howard et al. (2017), keyed by (variant, alpha, resolution).
PAPER_IMAGENET = {
    ("dws", 1.0, 224): PaperRow("1.0 MobileNet-224", 70.6, 569, 4.2, "Tables 4, 6, 7"),
    ("conv", 1.0, 224): PaperRow("Conv MobileNet", 71.7, 4866, 29.3, "Table 4"),
    ("dws", 0.75, 224): PaperRow("0.75 MobileNet-224", 68.4, 325, 2.6, "Tables 5, 6"),
    ("shallow", 1.0, 224): PaperRow("Shallow MobileNet", 65.3, 307, 2.9, "Table 5"),
    ("dws", 0.5, 224): PaperRow("0.5 MobileNet-224", 63.7, 149, 1.3, "Table 6"),
    ("dws", 0.25, 224): PaperRow("0.25 MobileNet-224", 50.6, 41, 0.5, "Table 6"),
    ("dws", 1.0, 192): PaperRow("1.0 MobileNet-192", 69.1, 418, 4.2, "Table 7"),
    ("dws", 1.0, 160): PaperRow("1.0 MobileNet-160", 67.2, 290, 4.2, "Table 7"),
    ("dws", 1.0, 128): PaperRow("1.0 MobileNet-128", 64.4, 186, 4.2, "Table 7"),
}


class ReportError(Exception):
  """A problem with the inputs, reported as one line without a traceback."""


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


# ---------------------------------------------------------------- load

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


# ---------------------------------------------------------------- aggregate

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


def paper_resolution(resolution: int, base_resolution: int) -> Optional[int]:
  """The rung of the paper's 224/192/160/128 ladder that a run's resolution stands for."""
  scaled = resolution * PAPER_BASE_RESOLUTION / base_resolution
  nearest = min(PAPER_RESOLUTIONS, key=lambda rung: abs(rung - scaled))
  return nearest if abs(nearest - scaled) <= PAPER_RESOLUTION_TOLERANCE else None


def paper_row(variant: str, alpha: float, resolution: int,
              base_resolution: int) -> Optional[PaperRow]:
  rung = paper_resolution(resolution, base_resolution)
  return PAPER_IMAGENET.get((variant, alpha, rung)) if rung else None


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
    by_protocol += [(model_key, protocol, group)
                    for protocol, group in zip(distinguishing_settings(groups), groups)]
  rows = []
  for (dataset, variant, alpha, resolution), protocol, model_runs in by_protocol:
    name = model_name(variant, alpha, resolution, base_resolution) + protocol_label(protocol)
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
        paper=paper_row(variant, alpha, resolution, base_resolution), protocol=protocol))
  return sorted(rows, key=lambda row: (row.dataset, -row.mult_adds, row.name))


# ---------------------------------------------------------------- format

def dataset_label(dataset: str) -> str:
  """"imagenet2012" -> "ImageNet", "imagenette2-224" -> "Imagenette"; others as written."""
  for prefix, label in DATASET_LABELS:
    if dataset.lower().startswith(prefix):
      return label
  return dataset


def format_images_per_s(value: float) -> str:
  return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def count_label(runs: Sequence[Run]) -> str:
  seeds = [run.seed for run in runs]
  distinct_seeds = None not in seeds and len(set(seeds)) == len(seeds)
  return f"{len(runs)} {'seeds' if distinct_seeds else 'runs'}"


def format_ms(value: Optional[float]) -> str:
  """Milliseconds: a decimal below 100 ms; "—" for a run that was not exported."""
  if value is None:
    return "—"
  return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def device_labels(devices: Sequence[str]) -> dict:
  """Short names for the devices of one table, so that a timing cell can say where it was
  measured: "cpu: Intel(R) Xeon(R) Processor, 2 cores" -> "Xeon", or "Xeon 2 cores" where the
  cores tell two devices apart, or the full names where neither does."""
  def short(device: str, with_cores: bool) -> str:
    name, _, cores = device.removeprefix(CPU_PREFIX).partition(",")
    for mark in ("(R)", "(TM)", "(r)", "(tm)"):
      name = name.replace(mark, "")
    words = [word for word in name.split() if word not in MAKER_WORDS]
    return " ".join(words + (cores.split() if with_cores else []))
  for with_cores in (False, True):
    labels = {device: short(device, with_cores) for device in devices}
    if "" not in labels.values() and len(set(labels.values())) == len(labels):
      return labels
  return {device: device for device in devices}


def timing_labels(devices: Sequence[str]) -> Optional[dict]:
  """device_labels for a table's timing cells; None where every timing comes from one device
  (its cells then go unmarked and the note under the table names it)."""
  return device_labels(devices) if len(devices) > 1 else None


def format_timing(by_device: dict, format_value: Callable[[float], str],
                  labels: Optional[dict]) -> str:
  """A timing cell: the value, or one value per device, each marked with its device, where a
  table's timings come from several (labels given); "—" where none was measured."""
  if not by_device:
    return "—"
  if labels is None:
    return format_value(only_value(by_device))
  return ", ".join(f"{format_value(value)} ({labels[device]})"
                   for device, value in by_device.items())


def format_duration_or_dash(seconds: Optional[float]) -> str:
  return "—" if seconds is None else format_duration(seconds)


def format_percent(value: Optional[float], spread: Optional[float] = None) -> str:
  if value is None:
    return "—"
  return f"{100 * value:.1f}%" + ("" if spread is None else f" ± {100 * spread:.1f}")


LATENCY_HEADER = ["LiteRT fp32 ms", "LiteRT int8 ms", "LiteRT int8 Top-1"]


def format_accuracy(row: ModelRow) -> str:
  text = f"{100 * row.top1_mean:.1f}%"
  if row.top1_spread is not None:
    text += f" ± {100 * row.top1_spread:.1f} ({count_label(row.runs)})"
  return text


def format_paper(paper: Optional[PaperRow]) -> str:
  if paper is None:
    return "—"
  return (f"{paper.top1_percent:.1f}% / {paper.million_mult_adds}M / {paper.million_params:g}M "
          f"({paper.name})")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]],
                   text_columns: Sequence[str]) -> list[str]:
  """Numbers right-aligned so that their digits line up when rendered; text left."""
  align = ["---" if column in text_columns else "---:" for column in header]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def models_table(rows: Sequence[ModelRow], with_paper: bool) -> list[str]:
  header = ["Model", f"{dataset_label(rows[0].dataset)} Accuracy", "Million Mult-Adds",
            "Million Parameters", "Images/s"]
  with_latency = has_latency(rows)
  if with_latency:
    header += LATENCY_HEADER
  if with_paper:
    header.append("Paper: ImageNet Top-1 / Mult-Adds / Params")
  devices = timing_devices(rows)
  labels = timing_labels(devices)
  cells = []
  for row in rows:
    line = [row.name, format_accuracy(row), f"{row.mult_adds / 1e6:.0f}",
            f"{row.params / 1e6:.1f}",
            format_timing(row.infer_images_per_s_by_device, format_images_per_s, labels)]
    if with_latency:
      line += [format_timing(row.litert_fp32_ms_by_device, format_ms, labels),
               format_timing(row.litert_int8_ms_by_device, format_ms, labels),
               format_percent(row.litert_int8_top1_mean, row.litert_int8_top1_spread)]
    if with_paper:
      line.append(format_paper(row.paper))
    cells.append(line)
  return markdown_table(header, cells, text_columns=(header[0], header[-1]) if with_paper
                        else (header[0],))


def runs_table(rows: Sequence[ModelRow]) -> list[str]:
  header = ["Model", "Run", "Seed", "Step", "Top-1", "Top-5", "Million Mult-Adds",
            "Million Parameters", "Images/s", "Train images/s", "Train time", "Device"]
  with_latency = has_latency(rows)
  if with_latency:
    header[-1:-1] = LATENCY_HEADER
  cells = []
  for row in rows:
    for run in row.runs:
      line = [row.name, run.run_name, "—" if run.seed is None else str(run.seed),
              str(run.step), f"{100 * run.top1:.1f}%", f"{100 * run.top5:.1f}%",
              f"{run.mult_adds / 1e6:.0f}", f"{run.params / 1e6:.1f}",
              format_images_per_s(run.infer_images_per_s),
              "—" if run.train_images_per_s is None
              else format_images_per_s(run.train_images_per_s),
              format_duration_or_dash(run.train_wall_s)]
      if with_latency:
        line += [format_ms(run.litert_fp32_ms), format_ms(run.litert_int8_ms),
                 format_percent(run.litert_int8_top1)]
      cells.append(line + [run.device])
  return markdown_table(header, cells, text_columns=("Model", "Run", "Device"))


def devices_note(devices: Sequence[str], runs: str) -> str:
  """Where the timings were measured; with several devices, how the cells mark them."""
  if not devices:  # only optional timings (train time), and no run recorded one
    return "none was recorded."
  if len(devices) == 1:
    return f"on {devices[0]}."
  labels = device_labels(devices)
  return ("on several devices, whose timings are never averaged together: each timing cell "
          f"gives the mean over one device's {runs}, marked with the device: "
          + "; ".join(device if labels[device] == device else f"{labels[device]} = {device}"
                      for device in devices) + ".")


def table_notes(rows: Sequence[ModelRow], with_paper: bool, base_resolution: int) -> list[str]:
  notes = [
      "Accuracy is top-1 on the evaluation split. Where a model has several runs, the row "
      "shows their mean ± half the range, (max − min) / 2, in percentage points, so that "
      "mean ± spread covers every run; all runs are listed below.",
      "Images/s is the measured inference throughput (mean over runs); train images/s and "
      "time are the run's training steps, every session added up, evaluation excluded; "
      + devices_note(timing_devices(rows), "runs"),
  ]
  if has_latency(rows):
    latency_devices = sorted({run.latency_device.removeprefix(CPU_PREFIX) for row in rows
                              for run in row.runs if run.latency_device is not None})
    notes.append(
        "LiteRT: the run exported by `python -m tools.export --int8`, timed with the LiteRT "
        "interpreter and XNNPACK, batch 1, one thread, median of repeated runs (mean over a "
        "model's exported runs on one CPU); int8 top-1 is the full-integer model's accuracy on "
        "the whole evaluation split (mean ± half the range); — where a run was not exported. On "
        + "; ".join(latency_devices) + ": an x86 CPU running the mobile runtime's kernels, "
        "not a phone.")
  if with_paper:
    notes.append(
        "Paper: ImageNet top-1, mult-adds and parameters of Howard et al. (2017), Tables 4–7, "
        f"for the same variant and width, resolution r read as r × 224 / {base_resolution} and "
        "matched to the nearest of 224/192/160/128 within 16 px. Different dataset, resolution "
        "and classifier: compare trends, not numbers.")
  return notes


def unfinished_note(unfinished: Sequence[str]) -> list[str]:
  """A report of part of a table says which of its runs it is still waiting for."""
  if not unfinished:
    return []
  return [f"Not finished yet, so not in this report: {', '.join(unfinished)}.", ""]


def format_markdown(rows: Sequence[ModelRow], title: str, with_paper: bool,
                    base_resolution: int, unfinished: Sequence[str] = ()) -> str:
  lines = [f"# {title}", "", *unfinished_note(unfinished)]
  for dataset in sorted({row.dataset for row in rows}):
    dataset_rows = [row for row in rows if row.dataset == dataset]
    lines += [f"## {dataset_label(dataset)} ({dataset})", ""]
    lines += models_table(dataset_rows, with_paper) + [""]
    for note in table_notes(dataset_rows, with_paper, base_resolution):
      lines += [note, ""]
    lines += [f"### All runs ({dataset_label(dataset)})", ""]
    lines += runs_table(dataset_rows) + [""]
  return "\n".join(lines)


def run_to_json(run: Run, with_latency: bool) -> dict:
  """The run as its eval_results.json gave it; its settings are its config.json's."""
  document = dataclasses.asdict(run)
  del document["settings"], document["has_config"]
  if run.train_device is None:  # trained where it was evaluated, as nearly every run
    del document["train_device"]
  if not with_latency:
    for key in (*LATENCY_KEYS, "litert_device"):
      del document[key]
  return document


def row_to_json(row: ModelRow, with_latency: bool) -> dict:
  """The row's figures; latency keys (null for a row without them) only where some run of
  the report has them, so that reports of runs never exported keep their former shape."""
  document = {
      "name": row.name, "dataset": row.dataset, "variant": row.variant, "alpha": row.alpha,
      "resolution": row.resolution, "num_runs": len(row.runs),
      "seeds": [run.seed for run in row.runs],
      "top1_mean": row.top1_mean, "top1_half_range": row.top1_spread,
      "top5_mean": row.top5_mean, "mult_adds": row.mult_adds, "params": row.params,
      "infer_images_per_s_mean": only_value(row.infer_images_per_s_by_device),
      "infer_images_per_s_by_device": row.infer_images_per_s_by_device,
      **({"litert_fp32_ms_mean": only_value(row.litert_fp32_ms_by_device),
          "litert_fp32_ms_by_device": row.litert_fp32_ms_by_device,
          "litert_int8_ms_mean": only_value(row.litert_int8_ms_by_device),
          "litert_int8_ms_by_device": row.litert_int8_ms_by_device,
          "litert_int8_top1_mean": row.litert_int8_top1_mean,
          "litert_int8_top1_half_range": row.litert_int8_top1_spread}
         if with_latency else {}),
      "devices": sorted({run.device for run in row.runs}),
      "sources": [run.source for run in row.runs],
      "paper_imagenet": None if row.paper is None else dataclasses.asdict(row.paper),
  }
  if row.protocol:  # only where one model has runs under several protocols
    document["protocol"] = row.protocol
  return document


SPREAD_NOTE = ("top1_half_range = (max - min) / 2 over a model's runs, as a fraction; null for "
               "a single run")


TIMINGS_NOTE = ("*_by_device: a row's timing means over its runs on each device; *_mean: the "
                "same where the row was timed on one device, null where on several (speeds "
                "of different machines are not averaged)")


def document_head(title: str, base_resolution: int, unfinished: Sequence[str]) -> dict:
  """What every JSON report opens with: what it is, and how to read its figures."""
  return {"title": title, "base_resolution": base_resolution, "spread": SPREAD_NOTE,
          "timings": TIMINGS_NOTE, "unfinished": list(unfinished)}


def format_json(rows: Sequence[ModelRow], title: str, base_resolution: int,
                unfinished: Sequence[str] = ()) -> str:
  with_latency = has_latency(rows)
  document = {
      **document_head(title, base_resolution, unfinished),
      "models": [row_to_json(row, with_latency) for row in rows],
      "runs": [run_to_json(run, with_latency) for row in rows for run in row.runs],
  }
  if with_latency:
    document["litert"] = ("litert_*_ms: median batch-1 latency of the exported LiteRT model, "
                          "one thread, XNNPACK; litert_int8_top1: the int8 model's top-1, a "
                          "fraction; row values are means over the runs that have them, null "
                          "where none has")
  return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- plot

def sweep_families(rows: Sequence[ModelRow]) -> list[tuple[str, list[ModelRow]]]:
  """The lines of the paper's Figure 4: MobileNets of one resolution across widths
  ("width"), and of one width across resolutions ("resolution"); two models or more. A line
  joins only rows of one protocol label, so that it never zigzags between protocols."""
  width_sweeps, resolution_sweeps = collections.defaultdict(list), collections.defaultdict(list)
  for row in rows:
    if row.variant == "dws":
      label = protocol_label(row.protocol)
      width_sweeps[(row.dataset, row.resolution, label)].append(row)
      resolution_sweeps[(row.dataset, row.alpha, label)].append(row)
  families = [("width", members) for members in width_sweeps.values()]
  families += [("resolution", members) for members in resolution_sweeps.values()]
  return [(kind, sorted(members, key=lambda row: row.mult_adds))
          for kind, members in families if len(members) > 1]


@dataclasses.dataclass(frozen=True)
class PlotAxis:
  """What a plot puts along x: per model row (its line and label) and per run (its marker)."""
  label: str
  of_row: Callable[[ModelRow], Optional[float]]
  of_run: Callable[[Run], Optional[float]]


MULT_ADDS_AXIS = PlotAxis("Million Mult-Adds (log scale)",
                          lambda row: row.mult_adds / 1e6, lambda run: run.mult_adds / 1e6)
LATENCY_AXIS = PlotAxis("LiteRT fp32 latency, batch 1, one thread (ms, log scale)",
                        lambda row: only_value(row.litert_fp32_ms_by_device),
                        lambda run: run.litert_fp32_ms)


# Where a point's label may go, in points from the point, tried in this order.
LABEL_PLACES = (((6, -3), "left"), ((6, 5), "left"), ((6, -12), "left"),
                ((-6, 5), "right"), ((-6, -12), "right"))


def annotate(axes, text: str, x: float, y: float, offset: tuple[int, int], alignment: str):
  return axes.annotate(text, (x, y), xytext=offset, textcoords="offset points",
                       horizontalalignment=alignment, fontsize=8)


def contains(outer, inner) -> bool:
  return (outer.x0 <= inner.x0 and inner.x1 <= outer.x1
          and outer.y0 <= inner.y0 and inner.y1 <= outer.y1)


def place_labels(axes, renderer, labels: Sequence[tuple[str, float, float]]) -> None:
  """Puts each label at the first of LABEL_PLACES inside the axes that overlaps no label
  placed before: close points' labels would otherwise print over each other."""
  inside = axes.get_window_extent(renderer)
  placed = []
  for text, x, y in labels:
    chosen = None
    for offset, alignment in LABEL_PLACES:
      candidate = annotate(axes, text, x, y, offset, alignment)
      box = candidate.get_window_extent(renderer)
      if contains(inside, box) and not any(box.overlaps(other) for other in placed):
        chosen = candidate
        break
      candidate.remove()
    if chosen is None:  # crowded everywhere: the first place, overlapping
      chosen = annotate(axes, text, x, y, *LABEL_PLACES[0])
    placed.append(chosen.get_window_extent(renderer))


VARIANT_MARKERS = {"dws": "o", "conv": "s", "shallow": "^"}
SWEEP_LINE_STYLES = {"width": "-", "resolution": "--"}
PAPER_COLOR = "C3"


def new_figure(width: float, panels: int = 1):
  """A figure of `panels` axes side by side and its Agg canvas: no pyplot state, no display
  needed."""
  # pylint: disable=import-outside-toplevel  (matplotlib loads only where a plot is drawn)
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=(width, 6), dpi=120)
  return figure, FigureCanvasAgg(figure), figure.subplots(1, panels)


def series_colors(names: Iterable[str]) -> dict:
  """A colour of matplotlib's cycle for each series, in name order."""
  return {name: f"C{index}" for index, name in enumerate(sorted(set(names)))}


def draw_sweeps(axes, rows: Sequence[ModelRow],
                point_of: Callable[[ModelRow], tuple[float, float]],
                color_of: Callable[[ModelRow], str], labelled: Optional[set] = None) -> set:
  """The lines of sweep_families between the rows' (x, y) points, each kind once in the
  legend (counting the entries already `labelled`); returns the legend entries drawn."""
  labelled = set() if labelled is None else labelled
  for kind, members in sweep_families(rows):
    axes.plot(*zip(*sorted(map(point_of, members))), SWEEP_LINE_STYLES[kind],
              color=color_of(members[0]), alpha=0.6,
              label=None if kind in labelled else f"{kind} sweep")
    labelled.add(kind)
  return labelled


def finish_axes(axes, x_label: str, title: str) -> None:
  """Log-scale x, top-1 along y, a grid, the legend where it hides fewest points and bars, and
  room for the outermost labels."""
  axes.set_xscale("log")
  axes.set_xlabel(x_label)
  axes.set_ylabel("Top-1 accuracy (%)")
  axes.set_title(title)
  axes.grid(True, which="both", alpha=0.3)
  if axes.get_legend_handles_labels()[0]:
    axes.legend(loc="best", fontsize=8)
  axes.margins(x=0.15, y=0.1)  # room for the labels of the outermost points


def plot(rows: Sequence[ModelRow], title: str, path: pathlib.Path,
         x_axis: PlotAxis = MULT_ADDS_AXIS,
         series_of: Callable[[ModelRow], str] = lambda row: dataset_label(row.dataset),
         colors: Optional[dict] = None, name_series: bool = False) -> None:
  """Figure 4 of the paper for these runs: a marker per run, lines along each sweep; x is
  mult-adds as in the paper, or another measure of cost (rows without it are left out). Each
  series (by default a dataset) has its own colour (`colors`, by series name, where the report
  fixes them) and its own sweep lines; with several series, or `name_series`, the legend and
  every point's label name the series."""
  rows = [row for row in rows if x_axis.of_row(row) is not None]
  figure, canvas, axes = new_figure(8)
  series = sorted({series_of(row) for row in rows})
  colors = colors or series_colors(series)
  # With several series, colour tells the series: the legend then shows shapes in grey.
  several = len(series) > 1 or name_series
  labelled = {*SWEEP_LINE_STYLES, *VARIANT_MARKERS} if several else set()
  kinds = set()
  for name in series:
    members = [row for row in rows if series_of(row) == name]
    kinds |= {kind for kind, _ in sweep_families(members)}
    draw_sweeps(axes, members, lambda row: (x_axis.of_row(row), 100 * row.top1_mean),
                lambda row: colors[name], labelled)
  for row in rows:
    label = VARIANT_LABELS[row.variant] if row.variant not in labelled else None
    labelled.add(row.variant)
    runs = [run for run in row.runs if x_axis.of_run(run) is not None]
    axes.scatter([x_axis.of_run(run) for run in runs], [100 * run.top1 for run in runs],
                 marker=VARIANT_MARKERS[row.variant], color=colors[series_of(row)], alpha=0.8,
                 label=label, zorder=3)
  if several:
    for kind in sorted(kinds):
      axes.plot([], [], SWEEP_LINE_STYLES[kind], color="grey", label=f"{kind} sweep")
    for variant in sorted({row.variant for row in rows}, key=list(VARIANT_MARKERS).index):
      axes.scatter([], [], marker=VARIANT_MARKERS[variant], color="grey",
                   label=VARIANT_LABELS[variant])
    for name in series:
      axes.plot([], [], color=colors[name], linewidth=6, label=name)
  finish_axes(axes, x_axis.label, title)
  figure.tight_layout()
  # Labels last, once the axes are laid out, so that their measured boxes are final.
  place_labels(axes, canvas.get_renderer(), [
      (f"{row.name} ({series_of(row)})" if several else row.name,
       x_axis.of_row(row), 100 * row.top1_mean)
      for row in sorted(rows, key=lambda row: -row.top1_mean)])
  figure.savefig(path, format="png")


def rows_by_latency_device(rows: Sequence[ModelRow], base_resolution: int) -> list[ModelRow]:
  """The exported runs of these rows, as rows of one latency device each: a latency plot's x
  compares only within one machine."""
  timed = [run for row in rows for run in row.runs if run.latency_device is not None]
  return [row for device in sorted({run.latency_device for run in timed})
          for row in aggregate([run for run in timed if run.latency_device == device],
                               base_resolution)]


def latency_device_of(row: ModelRow) -> str:
  """The one device of a row of rows_by_latency_device."""
  return next(iter(row.litert_fp32_ms_by_device))


def latency_series(rows: Sequence[ModelRow],
                   name_datasets: bool = False) -> Callable[[ModelRow], str]:
  """Names the series of rows_by_latency_device's rows: the device, and the dataset where the
  rows have several or `name_datasets` (the report has several, though one was timed)."""
  labels = device_labels(sorted({latency_device_of(row) for row in rows}))
  with_dataset = name_datasets or len({row.dataset for row in rows}) > 1
  return lambda row: (f"{dataset_label(row.dataset)}, " if with_dataset else "") + (
      labels[latency_device_of(row)])


def latency_colors(rows: Sequence[ModelRow], series_of: Callable[[ModelRow], str],
                   dataset_colors: dict) -> dict:
  """The latency plot's colour of each series: its dataset's colour in the report's other plot
  where one device timed them all; else colours no dataset of the report uses."""
  names = sorted({series_of(row) for row in rows})
  if len({latency_device_of(row) for row in rows}) == 1:
    return {series_of(row): dataset_colors[dataset_label(row.dataset)] for row in rows}
  return {name: f"C{len(dataset_colors) + index}" for index, name in enumerate(names)}


@dataclasses.dataclass(frozen=True)
class PlanePoint:
  """A model on an accuracy-versus-mult-adds panel; spread: half the range of its runs."""
  label: str
  million_mult_adds: float
  top1_percent: float
  spread: Optional[float] = None


def measured_point(row: ModelRow) -> PlanePoint:
  return PlanePoint(row.name, row.mult_adds / 1e6, 100 * row.top1_mean,
                    None if row.top1_spread is None else 100 * row.top1_spread)


def paper_point(row: ModelRow) -> Optional[PlanePoint]:
  """The paper's ImageNet figures for the row's model; None where the paper has no such row."""
  if row.paper is None:
    return None
  return PlanePoint(row.paper.name, row.paper.million_mult_adds, row.paper.top1_percent)


def draw_models(axes, rows: Sequence[ModelRow], point_of: Callable[[ModelRow], PlanePoint],
                color_of: Callable[[ModelRow], str]) -> list[tuple[str, float, float]]:
  """A marker per model (its bar: the spread of its runs) and the sweep lines between them;
  returns the labels, to be placed once the figure is laid out."""
  labelled = draw_sweeps(axes, rows, lambda row: (point_of(row).million_mult_adds,
                                                  point_of(row).top1_percent), color_of)
  labels = []
  for row in rows:
    point = point_of(row)
    axes.errorbar(point.million_mult_adds, point.top1_percent, yerr=point.spread,
                  fmt=VARIANT_MARKERS[row.variant], color=color_of(row), capsize=3, zorder=3,
                  label=None if row.variant in labelled else VARIANT_LABELS[row.variant])
    labelled.add(row.variant)
    labels.append((point.label, point.million_mult_adds, point.top1_percent))
  return sorted(labels, key=lambda label: -label[2])


def plot_beside_paper(rows: Sequence[ModelRow], title: str, path: pathlib.Path) -> None:
  """The paper's Figures 4 and 5 for these models: ours, one point per model (the mean of its
  runs), beside the paper's ImageNet points for the same models, so that the two trade-offs
  compare at a glance (each panel on its own scales: the numbers do not compare)."""
  figure, canvas, (ours, theirs) = new_figure(15, panels=2)
  colors = series_colors(dataset_label(row.dataset) for row in rows)
  in_paper = list({row.paper.name: row for row in rows if row.paper is not None}.values())
  labels = [(ours, draw_models(ours, rows, measured_point,
                               lambda row: colors[dataset_label(row.dataset)])),
            (theirs, draw_models(theirs, in_paper, paper_point, lambda row: PAPER_COLOR))]
  datasets = ", ".join(colors)
  finish_axes(ours, MULT_ADDS_AXIS.label, f"This reproduction: {datasets}, mean of the seeds")
  finish_axes(theirs, MULT_ADDS_AXIS.label, "The paper: ImageNet, 224 px and below "
              "(Howard et al., 2017)")
  figure.suptitle(title)
  figure.tight_layout()
  for axes, texts in labels:
    place_labels(axes, canvas.get_renderer(), texts)
  figure.savefig(path, format="png")


# ---------------------------------------------------------------- schedule study

@dataclasses.dataclass(frozen=True)
class SchedulePoint:
  """A model trained for one number of epochs, its runs (seeds) merged; `model` names the
  line of the study that it is a point of."""
  model: str
  epochs: float
  row: ModelRow


@dataclasses.dataclass(frozen=True)
class EvalCurve:
  """A run's top-1 after each evaluation during training, against the epochs trained by then."""
  model: str
  run: Run
  epochs: tuple[float, ...]
  top1: tuple[float, ...]


def run_epochs(run: Run) -> float:
  """The number of epochs the run was trained for, from the config.json beside its results."""
  epochs = run.settings.get(EPOCHS_FIELD)
  if epochs is None:
    raise ReportError(f"{run.source}: no {EPOCHS_FIELD} in a {CONFIG_FILENAME} beside it, so "
                      "how long it trained is unknown")
  return float(epochs)


def schedule_points(rows: Sequence[ModelRow], base_resolution: int) -> list[SchedulePoint]:
  """A point per row, its model named as the paper does, with any setting but the length of
  training that tells it from another row: each model is one line of the study."""
  points = []
  for row in rows:
    epochs = [run_epochs(run) for run in row.runs]  # one protocol: one number of epochs
    others = {field: value for field, value in row.protocol.items()
              if field not in (EPOCHS_FIELD, "step")}
    model = (model_name(row.variant, row.alpha, row.resolution, base_resolution)
             + protocol_label(others))
    points.append(SchedulePoint(model, epochs[0], row))
  return sorted(points, key=lambda point: (point.model, point.epochs))


def eval_curve(point: SchedulePoint, run: Run) -> EvalCurve:
  """The run's evaluations (metrics.evaluation_curve); none where the run kept no metrics."""
  path = pathlib.Path(run.source).parent / metrics.FILENAME
  if not path.is_file():
    return EvalCurve(point.model, run, (), ())
  try:
    epochs, top1 = metrics.evaluation_curve(path, point.epochs, run.step)
  except ValueError as error:
    raise ReportError(str(error)) from None
  return EvalCurve(point.model, run, tuple(epochs), tuple(top1))


def train_time_by_device(runs: Sequence[Run]) -> dict:
  return means_by_device(runs, "train_wall_s", lambda run: run.train_device or run.device)


def format_schedule_markdown(points: Sequence[SchedulePoint], title: str,
                             unfinished: Sequence[str] = ()) -> str:
  header = ["Model", "Epochs", "Seeds", "Top-1", "Million Mult-Adds", "Train time"]
  # Sittings of one study run on machines of different speeds: a train time means nothing
  # without its device, and the times of two devices do not average.
  train_times = [train_time_by_device(point.row.runs) for point in points]
  devices = sorted({device for by_device in train_times for device in by_device})
  labels = timing_labels(devices)
  cells = [[point.model, f"{point.epochs:g}",
            ", ".join("—" if run.seed is None else str(run.seed) for run in point.row.runs),
            format_accuracy(point.row), f"{point.row.mult_adds / 1e6:.0f}",
            format_timing(by_device, format_duration, labels)]
           for point, by_device in zip(points, train_times)]
  runs = [run for point in points for run in point.row.runs]
  datasets = ", ".join(sorted({dataset_label(run.dataset) for run in runs}))
  lines = [f"# {title}", "", *unfinished_note(unfinished),
           *markdown_table(header, cells, text_columns=("Model", "Seeds")), "",
           f"Top-1 on the evaluation split ({datasets}) at the end of training; where a model "
           "has several seeds, their mean ± half the range, (max − min) / 2, in percentage "
           "points. Train time: the training steps of one run, every sitting added up, "
           "evaluation excluded, on the device of its last training sitting; "
           + devices_note(devices, "seeds"), "",
           f"{SCHEDULE_PLOT_FILENAME}: top-1 against the number of epochs (a line per model, a "
           "dot per seed), and each run's top-1 after every evaluation during training, from "
           f"its {metrics.FILENAME}: how far from convergence each schedule ends."]
  return "\n".join(lines) + "\n"


def schedule_point_to_json(point: SchedulePoint, with_latency: bool) -> dict:
  train_times = train_time_by_device(point.row.runs)
  return {"model": point.model, "epochs": point.epochs,
          "train_wall_s_mean": only_value(train_times), "train_wall_s_by_device": train_times,
          **row_to_json(point.row, with_latency)}


def format_schedule_json(points: Sequence[SchedulePoint], curves: Sequence[EvalCurve],
                         title: str, base_resolution: int, unfinished: Sequence[str] = ()) -> str:
  with_latency = has_latency([point.row for point in points])
  document = {
      **document_head(title, base_resolution, unfinished),
      "points": [schedule_point_to_json(point, with_latency) for point in points],
      "curves": [{"model": curve.model, "source": curve.run.source,
                  "run_name": curve.run.run_name, "seed": curve.run.seed,
                  "epochs": curve.epochs, "top1": curve.top1} for curve in curves],
  }
  return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def epoch_axis(axes, epochs: Iterable[float]) -> None:
  """Ticks at these numbers of epochs, written as numbers, on the log scale."""
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel
  axes.set_xticks(sorted(set(epochs)))
  axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
  axes.xaxis.set_minor_formatter(ticker.NullFormatter())


def plot_schedule(points: Sequence[SchedulePoint], curves: Sequence[EvalCurve], title: str,
                  path: pathlib.Path) -> None:
  """Top-1 against the number of epochs, a line per model through the means and a dot per
  seed; beside it every run's top-1 during training: whether a gap between models closes with
  training, and how far from convergence each schedule ends."""
  figure, _, (final, during) = new_figure(15, panels=2)
  models = list(dict.fromkeys(point.model for point in points))
  colors = {model: f"C{index}" for index, model in enumerate(models)}
  for model in models:
    members = [point for point in points if point.model == model]
    final.plot([point.epochs for point in members],
               [100 * point.row.top1_mean for point in members], "-",
               marker=VARIANT_MARKERS[members[0].row.variant], color=colors[model], label=model)
    final.scatter([point.epochs for point in members for _ in point.row.runs],
                  [100 * run.top1 for point in members for run in point.row.runs],
                  s=12, color=colors[model], alpha=0.5, zorder=3)
  labelled = set()
  for curve in curves:
    during.plot(curve.epochs, [100 * top1 for top1 in curve.top1], color=colors[curve.model],
                alpha=0.6, linewidth=1, label=None if curve.model in labelled else curve.model)
    labelled.add(curve.model)
  finish_axes(final, "Epochs of training (log scale)",
              "At the end of training: mean of the seeds (line), each seed (dots)")
  finish_axes(during, "Epoch (log scale)", "During training: every run, after each evaluation")
  epochs = [point.epochs for point in points]
  epoch_axis(final, epochs)
  epoch_axis(during, [1, *epochs])
  figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, format="png")


def write_schedule(rows: Sequence[ModelRow], out: pathlib.Path, title: str,
                   base_resolution: int, unfinished: Sequence[str] = ()) -> list[pathlib.Path]:
  """The study's table, its JSON and its plot; returns the files written."""
  points = schedule_points(rows, base_resolution)
  curves = [eval_curve(point, run) for point in points for run in point.row.runs]
  out.mkdir(parents=True, exist_ok=True)
  markdown, document, figure = (out / SCHEDULE_MARKDOWN_FILENAME, out / SCHEDULE_JSON_FILENAME,
                                out / SCHEDULE_PLOT_FILENAME)
  markdown.write_text(format_schedule_markdown(points, title, unfinished), encoding="utf-8")
  document.write_text(format_schedule_json(points, curves, title, base_resolution, unfinished),
                      encoding="utf-8")
  plot_schedule(points, curves, title, figure)
  return [markdown, document, figure]


# ---------------------------------------------------------------- command line

def default_title(rows: Sequence[ModelRow], cost: str = "mult-adds") -> str:
  datasets = ", ".join(dataset_label(dataset) for dataset in sorted({row.dataset for row in rows}))
  return f"MobileNet accuracy vs {cost} ({datasets})"


def latency_title(rows: Sequence[ModelRow], timed_rows: Sequence[ModelRow], title: str) -> str:
  """The latency plot's title: the default title names its own x and only the datasets that
  were timed; a given one gains a line."""
  if title == default_title(rows):
    return default_title(timed_rows, "LiteRT fp32 latency")
  return f"{title}\nTop-1 against measured LiteRT fp32 latency"


def write_report(rows: Sequence[ModelRow], out: pathlib.Path, title: str, with_paper: bool,
                 base_resolution: int, paper_panel: bool = False,
                 unfinished: Sequence[str] = ()) -> list[pathlib.Path]:
  """The tables, their JSON and the plots; returns the files written."""
  out.mkdir(parents=True, exist_ok=True)
  (out / MARKDOWN_FILENAME).write_text(
      format_markdown(rows, title, with_paper, base_resolution, unfinished), encoding="utf-8")
  (out / JSON_FILENAME).write_text(format_json(rows, title, base_resolution, unfinished),
                                   encoding="utf-8")
  dataset_colors = series_colors(dataset_label(row.dataset) for row in rows)
  if paper_panel:
    plot_beside_paper(rows, title, out / PLOT_FILENAME)
  else:
    plot(rows, title, out / PLOT_FILENAME, colors=dataset_colors)
  written = [out / MARKDOWN_FILENAME, out / JSON_FILENAME, out / PLOT_FILENAME]
  latency_plot = out / LATENCY_PLOT_FILENAME
  if has_latency(rows):
    timed_rows = rows_by_latency_device(rows, base_resolution)
    several_datasets = len(dataset_colors) > 1
    series_of = latency_series(timed_rows, name_datasets=several_datasets)
    plot(timed_rows, latency_title(rows, timed_rows, title), latency_plot, x_axis=LATENCY_AXIS,
         series_of=series_of, colors=latency_colors(timed_rows, series_of, dataset_colors),
         name_series=several_datasets)
    written.append(latency_plot)
  else:  # an earlier report's plot of other runs would pass for these runs'
    latency_plot.unlink(missing_ok=True)
  return written


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m tools.report", description=__doc__.split("\n")[0])
  parser.add_argument("paths", nargs="+", type=pathlib.Path, metavar="PATH",
                      help=f"a run's workdir, or its {RESULTS_FILENAME}")
  parser.add_argument("--out", required=True, type=pathlib.Path, metavar="DIR",
                      help=f"where to write {MARKDOWN_FILENAME}, {JSON_FILENAME}, {PLOT_FILENAME} "
                      f"(and {LATENCY_PLOT_FILENAME} where runs were exported)")
  parser.add_argument("--title", help="title of the report and the plot")
  parser.add_argument("--paper", action="store_true",
                      help="add the paper's ImageNet top-1 / mult-adds / params for matching "
                      "models")
  layout = parser.add_mutually_exclusive_group()
  layout.add_argument("--paper-panel", action="store_true",
                      help=f"plot one point per model (the mean of its runs) in {PLOT_FILENAME}, "
                      "beside a panel of the paper's ImageNet points for the same models; "
                      "implies --paper")
  layout.add_argument("--schedule", action="store_true",
                      help="the runs are one model or more trained for several numbers of "
                      f"epochs: write {SCHEDULE_MARKDOWN_FILENAME}, {SCHEDULE_JSON_FILENAME} and "
                      f"{SCHEDULE_PLOT_FILENAME} (top-1 against epochs, and each run's top-1 "
                      f"during training from its {metrics.FILENAME}) instead of the tables")
  parser.add_argument("--unfinished", nargs="+", default=[], metavar="NAME",
                      help="runs that belong in this report but have not finished: named under "
                      "the title and in the JSON, so that part of a table does not pass for all "
                      "of it")
  parser.add_argument("--base-resolution", type=int, default=PAPER_BASE_RESOLUTION,
                      help="the resolution that stands for the paper's 224 (this project: 128)")
  args = parser.parse_args(argv)
  if args.base_resolution <= 0:
    parser.error("--base-resolution must be > 0")
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  try:
    runs, skipped = load_runs(args.paths)
    for path in skipped:
      print(f"warning: {path}: no {RESULTS_FILENAME} yet (run not finished?); skipped",
            file=sys.stderr)
    rows = aggregate(runs, args.base_resolution)
    if args.schedule:
      written = write_schedule(rows, args.out, args.title or default_title(rows, "epochs"),
                               args.base_resolution, args.unfinished)
    else:
      written = write_report(rows, args.out, args.title or default_title(rows),
                             args.paper or args.paper_panel, args.base_resolution,
                             args.paper_panel, args.unfinished)
  except ReportError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  except OSError as error:  # e.g. --out not writable
    print(f"error: {error.filename or args.out}: {error.strerror or error}", file=sys.stderr)
    return 1
  run_count = sum(len(row.runs) for row in rows)
  print(f"wrote {len(rows)} model{'s' * (len(rows) != 1)} from {run_count} "
        f"run{'s' * (run_count != 1)} to " + ", ".join(map(str, written)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
