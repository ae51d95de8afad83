"""A whole report, from the paths of runs to the files written: what `python -m tools.report`
and the sweep's rebuilds do."""
import pathlib
import sys
from typing import Optional, Sequence

from tools.report.aggregate import ModelRow, aggregate, has_latency
from tools.report.formatting import dataset_label
from tools.report.plots import LATENCY_AXIS, LATENCY_PLOT_FILENAME, PLOT_FILENAME, latency_colors
from tools.report.plots import latency_series, plot, plot_beside_paper, rows_by_latency_device
from tools.report.load import RESULTS_FILENAME, ReportError, load_runs
from tools.report.paper import PAPER_BASE_RESOLUTION
from tools.report.plots import series_colors
from tools.report.schedule import write_schedule
from tools.report.tables import JSON_FILENAME, MARKDOWN_FILENAME, format_json, format_markdown


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


def build(paths: Sequence[pathlib.Path], out: pathlib.Path, *, title: Optional[str] = None,
          with_paper: bool = False, paper_panel: bool = False, schedule: bool = False,
          base_resolution: int = PAPER_BASE_RESOLUTION, unfinished: Sequence[str] = ()) -> None:
  """The report of the runs at `paths` in `out`: the tables and plots, or with `schedule` the
  study of training length (`paper_panel` implies `with_paper`). A workdir without results yet
  is skipped with a warning; raises ReportError."""
  try:
    runs, skipped = load_runs(paths)
    for path in skipped:
      print(f"warning: {path}: no {RESULTS_FILENAME} yet (run not finished?); skipped",
            file=sys.stderr)
    rows = aggregate(runs, base_resolution)
    if schedule:
      written = write_schedule(rows, out, title or default_title(rows, "epochs"),
                               base_resolution, unfinished)
    else:
      written = write_report(rows, out, title or default_title(rows), with_paper or paper_panel,
                             base_resolution, paper_panel, unfinished)
  except OSError as error:  # e.g. --out not writable
    raise ReportError(f"{error.filename or out}: {error.strerror or error}") from None
  run_count = sum(len(row.runs) for row in rows)
  print(f"wrote {len(rows)} model{'s' * (len(rows) != 1)} from {run_count} "
        f"run{'s' * (run_count != 1)} to " + ", ".join(map(str, written)))
