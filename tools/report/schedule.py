"""The schedule study: top-1 against the number of epochs trained, and each run's top-1 during
training from its metrics.jsonl."""
import dataclasses
import json
import pathlib
from typing import Iterable, Sequence

from mobilenet import metrics
from mobilenet.metrics import format_duration
from tools.report.aggregate import ModelRow, has_latency, means_by_device, model_name, only_value
from tools.report.aggregate import protocol_label
from tools.report.formatting import dataset_label, devices_note, format_accuracy, format_timing
from tools.report.formatting import markdown_table, timing_labels, unfinished_note
from tools.report.load import CONFIG_FILENAME, ReportError, Run
from tools.report.plots import VARIANT_MARKERS, finish_axes, new_figure
from tools.report.tables import document_head, row_to_json


SCHEDULE_MARKDOWN_FILENAME = "schedule.md"
SCHEDULE_JSON_FILENAME = "schedule.json"
SCHEDULE_PLOT_FILENAME = "schedule.png"
EPOCHS_FIELD = "train.num_epochs"


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
