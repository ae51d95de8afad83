"""The paper's Tables 4-7 and a schedule-length study on Imagenette: train what is missing, report.

    python -m tools.sweep table4 [--runs DIR] [--dry-run] [--report-only]
                                     [-- --config.train.num_epochs=3]
    python -m tools.sweep schedule --epochs 5,10,20 [--variants dws,shallow,conv] [--seeds 0]
    python -m tools.sweep combined
    python -m tools.sweep table6 --lanes 2      # two rows at once, each on half the cores

The rows of each table and the study's models are data, in configs/experiments.py. Each row is
an ordinary `train.py` run with `configs/<variant>.py` (the shared protocol lives in
configs/base.py), its workdir under `--runs` (default `runs/` in the project; checkpoints: not
committed). A killed sweep resumes from those checkpoints when run again. Each trained row is then
exported to LiteRT (`python -m tools.export --workdir=<workdir> --int8`), which merges
measured fp32 and int8 latency and int8 top-1 into its eval_results.json; a failed export stops
the sweep, so that no row silently lacks those columns. Finished rows copy `eval_results.json`,
`config.json` and `metrics.jsonl` to `results/runs/<name>/` (the .tflite files are not kept); the
table goes to `results/<table>/`.

`schedule` trains MobileNet-1.0, Shallow MobileNet and Conv MobileNet (and with `--variants
dws_a0.75`, 0.75 MobileNet, Table 5's other side) at 128 px for each epoch count of `--epochs`
(the same recipe scaled in time: configs/base.py sets its schedule in epochs), rows named
`dws_a1_r128_e20_s0`; a row trained for the config's own epoch count is the table row of the plain
name (`dws_a1_r128_s0`), so that a finished table run serves as that point. Its
report, `results/schedule/`, shows every finished run of the study in `results/runs/`, those of
earlier commands too (the study is run in parts: longer schedules for the cheaper models only).
`combined` trains nothing: it plots every finished row of Tables 4-7, one point per model, beside
the paper's ImageNet points for the same models, in `results/combined/`.

A row whose result (or unfinished run) was made with settings that change what it measures,
say after an edit of configs/base.py, stops the sweep with the first differing field, so that
no table mixes two protocols; `--dry-run` lists such rows as stale.

`--lanes N` trains up to N rows at once, each pinned to its own share of the cores, its console
in `<workdir>.log` (tools.lanes: on a CPU, narrower runs side by side train more images per
second than one run on every core).

Each row's train.py picks its malloc itself (mobilenet.allocator: tcmalloc where installed;
MOBILENET_ALLOCATOR=system for glibc's).
"""
import dataclasses
import importlib
import json
import pathlib
import re
import subprocess
import sys
from typing import Iterable, Optional, Sequence

from absl import flags

from configs import experiments
from mobilenet import errors, results
from tools import command_line, lanes, runs
from tools.export import ExportError
from tools.report import build as report

BASE_RESOLUTION = experiments.BASE_RESOLUTION
SCHEDULE, COMBINED = "schedule", "combined"
STUDY_NAME = re.compile(r"(?P<variant>dws|shallow|conv)_a(?P<alpha>1|0\.75)_r"
                        rf"{BASE_RESOLUTION}"
                        r"(?:_e(?P<epochs>[0-9]+(?:\.[0-9]+)?))?_s(?P<seed>[0-9]+)")
EPOCHS_FLAG = "--config.train.num_epochs"


@dataclasses.dataclass(frozen=True)
class Row:
  variant: str
  alpha: float = 1.0
  resolution: int = BASE_RESOLUTION
  seed: int = 0
  epochs: Optional[float] = None  # None: the config's own epoch count

  @property
  def name(self) -> str:
    length = "" if self.epochs is None else f"_e{self.epochs:g}"
    return f"{self.variant}_a{self.alpha:g}_r{self.resolution}{length}_s{self.seed}"

  @property
  def config(self) -> str:
    length = "" if self.epochs is None else f",epochs={self.epochs:g}"
    return (f"configs/{self.variant}.py:alpha={self.alpha},resolution={self.resolution},"
            f"seed={self.seed}{length}")


TABLES = {table: tuple(Row(**row) for row in rows) for table, rows in experiments.TABLES.items()}


def committed_run(row: Row) -> pathlib.Path:
  """Where a finished row's results are kept: results/runs/<name>/."""
  return runs.RESULTS / "runs" / row.name


def relative_to_cwd(path: pathlib.Path) -> pathlib.Path:
  """The path from the working directory where it lies below it: the reports record their
  runs' sources, and a committed report should not carry one machine's absolute paths."""
  try:
    return path.relative_to(pathlib.Path.cwd())
  except ValueError:
    return path


def finished(row: Row) -> bool:
  return (committed_run(row) / "eval_results.json").is_file()


def stale_reason(row: Row, workdirs: pathlib.Path, requested: dict) -> str | None:
  """Why this row's result, or else its unfinished run in `workdirs`, was made with settings
  other than `requested`; None if it was not."""
  if finished(row):
    folder, verb, remedy = committed_run(row), "was trained", "move that folder away"
  else:
    folder, verb, remedy = workdirs / row.name, "holds a run started", "delete it"
  if not (folder / "config.json").is_file():
    return None
  try:
    stored = json.loads((folder / "config.json").read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{folder / 'config.json'} is not valid JSON: {error}") from None
  differences = runs.config_differences(stored, requested)
  if not differences:
    return None
  more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
  shown = (folder.relative_to(runs.PROJECT_ROOT) if folder.is_relative_to(runs.PROJECT_ROOT)
           else folder)
  return f"{shown} {verb} with {differences[0]}{more}; {remedy} to train the row afresh"


def stale_reasons(rows: Iterable[Row], workdirs: pathlib.Path, extra_flags: list[str]) -> dict:
  """{row: its stale_reason} under the protocol that these flags ask for; a ConfigError where
  the flags for train.py, or a stored config.json, cannot be read."""
  try:
    return {row: stale_reason(row, workdirs, runs.requested_config(row.config, extra_flags))
            for row in rows}
  except (flags.Error, KeyError, AttributeError, ValueError) as error:
    from mobilenet import cli  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
    raise errors.ConfigError(cli.flag_error_message(error, ["sweep", *extra_flags])) from None


def export_command(row: Row, workdirs: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "tools.export", f"--workdir={workdirs / row.name}", "--int8"]


def export(row: Row, workdirs: pathlib.Path, cpus: Optional[tuple[int, ...]] = None,
           log: Optional[pathlib.Path] = None) -> None:
  """Exports the row's finished run; its figures must then be in its eval_results.json."""
  command = export_command(row, workdirs)
  runs.run_command(command, cpus, log)
  merged = workdirs / row.name / "eval_results.json"
  missing = [key for key in results.LATENCY_KEYS if key not in json.loads(merged.read_text())]
  if missing:
    raise ExportError(f"`{' '.join(command)}` exited 0 but {merged} lacks {', '.join(missing)}")


def train(row: Row, workdirs: pathlib.Path, extra_flags: list[str],
          cpus: Optional[tuple[int, ...]] = None) -> None:
  """Trains the row in `workdirs` (pinned to `cpus` where given), exports it, and keeps its
  results; raises RunFailed."""
  workdir = workdirs / row.name
  runs.run_training(row.name, [sys.executable, "train.py", f"--config={row.config}",
                               f"--workdir={workdir}", *extra_flags], workdir, cpus)
  log = runs.console_log(workdir, cpus)
  try:
    export(row, workdirs, cpus, log)
  except subprocess.CalledProcessError as error:
    raise runs.RunFailed(runs.failure_message(
        row.name, error, log, what="trained, but its export failed",
        remedy="rerun the sweep to export it again")) from None
  except ExportError as error:
    raise runs.RunFailed(f"{row.name} trained, but its export is incomplete: {error}") from None
  runs.keep_results(workdir, committed_run(row))


def train_missing(rows: tuple[Row, ...], workdirs: pathlib.Path, extra_flags: list[str],
                  lane_count: int = 1) -> None:
  """Trains every row without a result, in order, `lane_count` at a time; after a failure
  starts no other row (raises RunFailed)."""
  waiting = [row for row in rows if not finished(row)]

  def next_job(_running: set[str]) -> Optional[lanes.Job]:
    if not waiting:
      return None
    row = waiting.pop(0)
    return lanes.Job(row.name, lambda cpus: train(row, workdirs, extra_flags, cpus))

  lanes.run_side_by_side(next_job, lane_count)


# ---------------------------------------------------------------- the schedule study

def default_epochs(variant: str) -> float:
  """The epoch count configs/<variant>.py trains for: the tables' rows are trained for it."""
  return importlib.import_module(f"configs.{variant}").get_config().train.num_epochs


def schedule_row(variant: str, epochs: float, seed: int, alpha: float = 1.0) -> Row:
  """A row of the study; at the config's own epoch count it is the table row of that name."""
  return Row(variant, alpha, seed=seed,
             epochs=None if epochs == default_epochs(variant) else epochs)


@dataclasses.dataclass(frozen=True)
class Request:
  """What the command line asks for: a target, and the flags of its rows."""
  target: str
  workdirs: pathlib.Path
  epochs: Optional[str]
  variants: Optional[str]
  seeds: Optional[str]
  lanes: int
  dry_run: bool
  report_only: bool
  extra: list[str]  # the flags after `--`, for every train.py run


def schedule_rows(request: Request) -> tuple[Row, ...]:
  """The study's rows that this command asks for, shortest schedules first; none for a report
  (or dry run) of the runs finished so far."""
  if request.epochs is None:
    if request.report_only or request.dry_run:
      return ()
    raise errors.ConfigError("--epochs: the schedule target needs the epoch counts to train, "
                             "e.g. --epochs 5,10,20")
  if any(flag.startswith(EPOCHS_FLAG) for flag in request.extra):
    raise errors.ConfigError(f"{EPOCHS_FLAG}: the schedule target sets each row's epoch count; "
                             "give the counts to --epochs")
  epochs = runs.parse_list("--epochs", request.epochs, runs.positive_number,
                           "a positive number of epochs")
  models = runs.parse_list(
      "--variants", request.variants or ",".join(experiments.STUDY_DEFAULT),
      lambda text: experiments.STUDY_MODELS.get(text),
      f"one of {', '.join(experiments.STUDY_MODELS)}")
  seeds = runs.parse_seeds(request.seeds or "0")
  return tuple(schedule_row(variant, count, seed, alpha)
               for count in sorted(epochs) for variant, alpha in models for seed in seeds)


def study_rows_found(rows: tuple[Row, ...]) -> list[Row]:
  """The finished rows of the study in results/runs/ that are not among `rows`: those of earlier
  commands, which the study's report shows too."""
  found = []
  folder = runs.RESULTS / "runs"
  for path in sorted(folder.iterdir()) if folder.is_dir() else ():
    match = STUDY_NAME.fullmatch(path.name)
    if match is None:
      continue
    variant = match["variant"]
    epochs = float(match["epochs"]) if match["epochs"] else default_epochs(variant)
    row = schedule_row(variant, epochs, int(match["seed"]), float(match["alpha"]))
    if row.name == path.name and row not in rows and finished(row):
      found.append(row)
  return found


def target_rows(request: Request) -> tuple[Row, ...]:
  """The rows the command's target trains (combined: every table's, trained by the tables)."""
  if request.target == SCHEDULE:
    return schedule_rows(request)
  given = [flag for flag in ("epochs", "variants", "seeds") if getattr(request, flag) is not None]
  if given:
    raise errors.ConfigError(f"--{given[0]}: only the schedule target takes it")
  if request.target == COMBINED:
    return tuple(dict.fromkeys(row for rows in TABLES.values() for row in rows))
  return TABLES[request.target]


# ---------------------------------------------------------------- reports

def rebuild_report(rows: Sequence[Row], out: pathlib.Path, title: str, **layout) -> None:
  """The report of the rows that have finished, into `out`, naming those that have not."""
  done = [row for row in rows if finished(row)]
  if not done:
    print(f"{out.name}: no finished rows yet", file=sys.stderr)
    return
  report.build([relative_to_cwd(committed_run(row)) for row in done], out, title=title,
               base_resolution=BASE_RESOLUTION,
               unfinished=[row.name for row in rows if row not in done], **layout)


def rebuild(request: Request, rows: tuple[Row, ...], found: list[Row]) -> None:
  if request.target == SCHEDULE:
    rebuild_report([*rows, *found], runs.RESULTS / SCHEDULE,
                   "Top-1 against training epochs, on Imagenette at 128 px", schedule=True)
  elif request.target == COMBINED:
    rebuild_report(rows, runs.RESULTS / COMBINED, "Tables 4 to 7 of the paper, on Imagenette",
                   paper_panel=True)
  else:
    rebuild_report(rows, runs.RESULTS / request.target,
                   f"Table {request.target.removeprefix('table')} of the paper, on Imagenette",
                   with_paper=True)


# ---------------------------------------------------------------- command line

TARGETS = (*sorted(TABLES), SCHEDULE, COMBINED)


def define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string("runs", None, "where the training workdirs live (default: runs/ in the "
                      "project)", flag_values=flag_values)
  flags.DEFINE_string("epochs", None, "schedule: the epoch counts to train, E,E,...",
                      flag_values=flag_values)
  flags.DEFINE_string("variants", None, f"schedule: of {', '.join(experiments.STUDY_MODELS)} "
                      f"(default: {','.join(experiments.STUDY_DEFAULT)})", flag_values=flag_values)
  flags.DEFINE_string("seeds", None, "schedule: the seeds, S,S,... (default: 0)",
                      flag_values=flag_values)
  flags.DEFINE_integer("lanes", 1, "train up to N rows at once, each pinned to its share of the "
                       "cores", flag_values=flag_values)
  flags.DEFINE_boolean("dry-run", False, "list the rows and what is missing",
                       flag_values=flag_values)
  flags.DEFINE_boolean("report-only", False, "rebuild the report only", flag_values=flag_values)


def request_of(command: command_line.CommandLine) -> Request:
  """The command line as a Request; a ConfigError for a missing or unknown target."""
  if len(command.arguments) != 1 or command.arguments[0] not in TARGETS:
    given = " ".join(command.arguments) or "none"
    raise errors.ConfigError(f"expected one target of {', '.join(TARGETS)} (got {given}); "
                             "flags after -- go to every train.py run of the target")
  values = command.flags
  return Request(target=command.arguments[0],
                 workdirs=runs.resolved_folder(values.runs, runs.RUNS), epochs=values.epochs,
                 variants=values.variants, seeds=values.seeds, lanes=values.lanes,
                 dry_run=values["dry-run"].value, report_only=values["report-only"].value,
                 extra=command.passed_on)


def main(command: command_line.CommandLine) -> None:
  request = request_of(command)
  lanes.cpu_sets(request.lanes)  # a lane count this machine cannot give stops here
  rows = target_rows(request)
  stale = stale_reasons(rows, request.workdirs, request.extra)
  found = stale_reasons(study_rows_found(rows) if request.target == SCHEDULE else (),
                        request.workdirs, request.extra)
  width = max([24, *(len(row.name) for row in [*rows, *found])])
  for row in rows:
    status = "stale" if stale[row] else "done" if finished(row) else "missing"
    print(f"{row.name:<{width}} {status}")
  for row, reason in found.items():  # finished by an earlier command: reported, never trained
    print(f"{row.name:<{width}} {'stale, left out of the report' if reason else 'done'} (found)")
  reasons = [reason for reason in stale.values() if reason]
  left_out = [reason for reason in found.values() if reason]
  if request.dry_run or reasons:
    runs.report_stale(reasons + left_out if request.dry_run else reasons,
                      dry_run=request.dry_run)
    return
  for reason in left_out:
    print(f"warning: left out of the report: {reason}", file=sys.stderr)
  if not request.report_only and request.target != COMBINED:
    train_missing(rows, request.workdirs, request.extra, request.lanes)
  rebuild(request, rows, [row for row, reason in found.items() if reason is None])


TOOL = command_line.Tool(define_flags, main, takes_arguments=True, passes_on=True)

if __name__ == "__main__":
  TOOL.start()
