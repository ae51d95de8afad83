"""The report's figures: top-1 against mult-adds (the paper's Figure 4) or measured latency, and
beside the paper's own points (its Figures 4 and 5)."""
import collections
import dataclasses
import pathlib
from typing import Callable, Iterable, Optional, Sequence

from tools.report.aggregate import ModelRow, VARIANT_LABELS, aggregate, only_value, protocol_label
from tools.report.formatting import dataset_label, device_labels
from tools.report.load import Run


PLOT_FILENAME = "accuracy_vs_mult_adds.png"
LATENCY_PLOT_FILENAME = "accuracy_vs_latency.png"


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
