"""The command line of `python -m tools.report` (see the package's docstring)."""
import pathlib

from absl import flags

from mobilenet import errors, metrics
from tools import command_line
from tools.report.build import build
from tools.report.load import RESULTS_FILENAME
from tools.report.paper import PAPER_BASE_RESOLUTION
from tools.report.plots import LATENCY_PLOT_FILENAME, PLOT_FILENAME
from tools.report.schedule import SCHEDULE_JSON_FILENAME, SCHEDULE_MARKDOWN_FILENAME
from tools.report.schedule import SCHEDULE_PLOT_FILENAME
from tools.report.tables import JSON_FILENAME, MARKDOWN_FILENAME


def define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string("out", None, f"where to write {MARKDOWN_FILENAME}, {JSON_FILENAME}, "
                      f"{PLOT_FILENAME} (and {LATENCY_PLOT_FILENAME} where runs were exported)",
                      flag_values=flag_values)
  flags.DEFINE_string("title", None, "title of the report and the plot", flag_values=flag_values)
  flags.DEFINE_boolean("paper", False, "add the paper's ImageNet top-1 / mult-adds / params for "
                       "matching models", flag_values=flag_values)
  flags.DEFINE_boolean("paper-panel", False, "plot one point per model (the mean of its runs) in "
                       f"{PLOT_FILENAME}, beside a panel of the paper's ImageNet points for the "
                       "same models; implies --paper", flag_values=flag_values)
  flags.DEFINE_boolean("schedule", False, "the runs are one model or more trained for several "
                       f"numbers of epochs: write {SCHEDULE_MARKDOWN_FILENAME}, "
                       f"{SCHEDULE_JSON_FILENAME} and {SCHEDULE_PLOT_FILENAME} (top-1 against "
                       f"epochs, and each run's top-1 during training from its {metrics.FILENAME})"
                       " instead of the tables", flag_values=flag_values)
  flags.DEFINE_multi_string("unfinished", [], "runs that belong in this report but have not "
                            "finished: named under the title and in the JSON, so that part of a "
                            "table does not pass for all of it (`--unfinished A B` or "
                            "`--unfinished=A --unfinished=B`)", flag_values=flag_values)
  flags.DEFINE_integer("base-resolution", PAPER_BASE_RESOLUTION, "the resolution that stands for "
                       "the paper's 224 (this project: 128)", flag_values=flag_values)


def main(command: command_line.CommandLine) -> None:
  """Each argument is a run's workdir, or its eval_results.json."""
  values = command.flags
  if not command.arguments:
    raise errors.ConfigError(f"no PATH given: name the runs' workdirs or {RESULTS_FILENAME} files")
  if values.out is None:
    raise errors.ConfigError("--out: the folder to write the report to is required")
  if values["paper-panel"].value and values.schedule:
    raise errors.ConfigError("--paper-panel and --schedule: give one of them")
  if values["base-resolution"].value <= 0:
    raise errors.ConfigError("--base-resolution must be > 0")
  build([pathlib.Path(path) for path in command.arguments], pathlib.Path(values.out),
        title=values.title, with_paper=values.paper, paper_panel=values["paper-panel"].value,
        schedule=values.schedule, base_resolution=values["base-resolution"].value,
        unfinished=values.unfinished)


TOOL = command_line.Tool(define_flags, main, takes_arguments=True, several_values=("unfinished",))
