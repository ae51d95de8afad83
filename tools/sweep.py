"""The paper's Tables 4-7 and a schedule-length study on Imagenette: train what is missing, report.

    python -m tools.sweep table4 [--runs DIR] [--dry-run] [--report-only]
                                     [-- --config.train.num_epochs=3]
    python -m tools.sweep schedule --epochs 5,10,20 [--variants dws,shallow,conv] [--seeds 0]
    python -m tools.sweep combined
    python -m tools.sweep table6 --lanes 2      # two rows at once, each on half the cores

Each row is an ordinary `train.py` run with `configs/<variant>.py` (the shared protocol lives in
configs/base.py), its workdir under `--runs` (default `runs/` in the project; checkpoints: not
committed). A killed sweep resumes from those checkpoints when run again. Each trained row is then
exported to LiteRT (`python -m tools.export --workdir=<workdir> --int8`), which merges
measured fp32 and int8 latency and int8 top-1 into its eval_results.json; a failed export stops
the sweep, so that no row silently lacks those columns. Finished rows copy `eval_results.json`,
`config.json` and `metrics.jsonl` to `results/runs/<name>/` (the .tflite files are not kept); the
table goes to `results/<table>/`.

`schedule` trains MobileNet-1.0, Shallow MobileNet and Conv MobileNet (and with `--variants
dws_a0.75`, 0.75 MobileNet, Table 5's other side) at 128 px for each epoch count of `--epochs` (the same recipe scaled in time: configs/base.py sets its schedule in epochs),
rows named `dws_a1_r128_e20_s0`; a row trained for the config's own epoch count is the table row
of the plain name (`dws_a1_r128_s0`), so that a finished table run serves as that point. Its
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
import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Callable, Iterable, Optional, Sequence

from absl import flags
from ml_collections import config_flags

from tools import lanes
from mobilenet import protocol
from tools import report

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = PROJECT_ROOT / "results"
RUNS = PROJECT_ROOT / "runs"
BASE_RESOLUTION = 128  # the paper's 224 px, scaled to what this CPU can afford
KEPT_FILES = ("eval_results.json", "config.json", "metrics.jsonl")
SCHEDULE, COMBINED = "schedule", "combined"
# The schedule study's models at 128 px, by the names --variants takes: MobileNet-1.0, Shallow
# MobileNet and Conv MobileNet (the default three), and 0.75 MobileNet, the other side of
# Table 5: {name: (variant, alpha)}, the models whose Table 4 and 5 comparisons may turn with the
# length of training.
STUDY_MODELS = {"dws": ("dws", 1.0), "shallow": ("shallow", 1.0), "conv": ("conv", 1.0),
                "dws_a0.75": ("dws", 0.75)}
STUDY_DEFAULT = ("dws", "shallow", "conv")
STUDY_NAME = re.compile(r"(?P<variant>dws|shallow|conv)_a(?P<alpha>1|0\.75)_r"
                        rf"{BASE_RESOLUTION}"
                        r"(?:_e(?P<epochs>[0-9]+(?:\.[0-9]+)?))?_s(?P<seed>[0-9]+)")
EPOCHS_FLAG = "--config.train.num_epochs"


class ExportError(Exception):
  """An export that exited 0 but left its figures out of eval_results.json."""


class UsageError(Exception):
  """A bad command line, reported as one line naming the flag."""


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


TABLES = {
    # Table 4: standard against depthwise-separable convolutions, two seeds each.
    "table4": (Row("conv"), Row("conv", seed=1), Row("dws"), Row("dws", seed=1)),
    # Table 5: narrower against shallower, at about the same cost, two seeds each.
    "table5": (Row("dws", 0.75), Row("shallow"), Row("dws", 0.75, seed=1),
               Row("shallow", seed=1)),
    # Table 6: the width multiplier, two seeds each.
    "table6": (Row("dws", 1.0), Row("dws", 0.75), Row("dws", 0.5), Row("dws", 0.25),
               Row("dws", 1.0, seed=1), Row("dws", 0.75, seed=1), Row("dws", 0.5, seed=1),
               Row("dws", 0.25, seed=1)),
    # Table 7: the resolution multiplier (224/192/160/128 px scaled to 128/112/96/80), two seeds.
    "table7": (Row("dws", 1.0, 128), Row("dws", 1.0, 112), Row("dws", 1.0, 96),
               Row("dws", 1.0, 80), Row("dws", 1.0, 128, seed=1), Row("dws", 1.0, 112, seed=1),
               Row("dws", 1.0, 96, seed=1), Row("dws", 1.0, 80, seed=1)),
}


def committed_run(row: Row) -> pathlib.Path:
  """Where a finished row's results are kept: results/runs/<name>/."""
  return RESULTS / "runs" / row.name


def relative_to_cwd(path: pathlib.Path) -> pathlib.Path:
  """The path from the working directory where it lies below it: the reports record their
  runs' sources, and a committed report should not carry one machine's absolute paths."""
  try:
    return path.relative_to(pathlib.Path.cwd())
  except ValueError:
    return path


def finished(row: Row) -> bool:
  return (committed_run(row) / "eval_results.json").is_file()


def requested_config(config: str, extra_flags: list[str]) -> dict:
  """The config train.py builds from `--config=<config>` and these flags, as its config.json
  stores it."""
  overrides = [flag for flag in extra_flags if flag.startswith("--config.")]
  argv = ["sweep", f"--config={PROJECT_ROOT / config}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return json.loads(flag_values.config.to_json_best_effort())


def config_differences(stored: dict, requested: dict) -> list[str]:
  """`field=stored, now requested` for each field, present in both, that changes the result
  (mobilenet.protocol: the same rule by which train.py resumes and the report merges seeds)."""
  old, new = protocol.settings(stored), protocol.settings(requested)
  return [f"{field}={old[field]!r}, the sweep now asks for {new[field]!r}"
          for field in protocol.differing_fields(old, new)]


def stale_reason(row: Row, runs: pathlib.Path, requested: dict) -> str | None:
  """Why this row's result, or else its unfinished run in `runs`, was made with settings other
  than `requested`; None if it was not."""
  if finished(row):
    folder, verb, remedy = committed_run(row), "was trained", "move that folder away"
  else:
    folder, verb, remedy = runs / row.name, "holds a run started", "delete it"
  if not (folder / "config.json").is_file():
    return None
  try:
    stored = json.loads((folder / "config.json").read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{folder / 'config.json'} is not valid JSON: {error}") from None
  differences = config_differences(stored, requested)
  if not differences:
    return None
  more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
  shown = folder.relative_to(PROJECT_ROOT) if folder.is_relative_to(PROJECT_ROOT) else folder
  return f"{shown} {verb} with {differences[0]}{more}; {remedy} to train the row afresh"


def stale_reasons(rows: Iterable[Row], runs: pathlib.Path, extra_flags: list[str]) -> dict:
  """{row: its stale_reason} under the protocol that these flags ask for."""
  return {row: stale_reason(row, runs, requested_config(row.config, extra_flags)) for row in rows}


def report_stale(reasons: list[str], *, dry_run: bool) -> int:
  """A dry run lists every stale result (exit 0); a real run stops at the first (exit 1)."""
  if dry_run:
    for reason in reasons:
      print(f"stale: {reason}")
    return 0
  print(f"error: {reasons[0]}", file=sys.stderr)
  return 1


def run_command(command: list[str], cpus: Optional[tuple[int, ...]] = None,
                log: Optional[pathlib.Path] = None) -> None:
  """Runs one step of a row as its own process, echoed first; pinned to `cpus` and its console
  appended to `log` where given. Raises CalledProcessError naming the command as given."""
  line = "$ " + " ".join(map(str, command))
  where = "" if log is None else f"  [cores {','.join(map(str, cpus or ()))}; console in {log}]"
  print(line + where, flush=True)
  if log is not None:
    log.parent.mkdir(parents=True, exist_ok=True)
  with open(log, "a", encoding="utf-8") if log else contextlib.nullcontext() as console:
    if console:
      console.write(line + "\n")
      console.flush()
    try:
      subprocess.run(lanes.pinned(command, cpus), cwd=PROJECT_ROOT, check=True,
                     env=dict(os.environ), stdout=console,
                     stderr=subprocess.STDOUT if console else None)
    except subprocess.CalledProcessError as error:
      raise subprocess.CalledProcessError(error.returncode, list(command)) from None


def keep_results(workdir: pathlib.Path, destination: pathlib.Path) -> None:
  """Copies a finished run's KEPT_FILES to `destination`, each whole (a temporary file renamed)
  and eval_results.json last: whoever sees that file, from another lane too, sees them all."""
  destination.mkdir(parents=True, exist_ok=True)
  for file_name in sorted(KEPT_FILES, key=lambda name: name == "eval_results.json"):
    partial = destination / f".{file_name}.partial"
    shutil.copy2(workdir / file_name, partial)
    os.replace(partial, destination / file_name)


class RunFailed(Exception):
  """A row or trial whose command failed; the message names it and says how to go on."""


def failure_message(name: str, error: subprocess.CalledProcessError,
                    log: Optional[pathlib.Path], *, what: str = "failed",
                    remedy: str = "rerun to resume it") -> str:
  console = f" (its console: {log})" if log is not None else ""
  return (f"{name} {what} (exit {error.returncode}): `{' '.join(map(str, error.cmd))}`; "
          f"{remedy}{console}")


def console_log(workdir: pathlib.Path, cpus: Optional[tuple[int, ...]]) -> Optional[pathlib.Path]:
  """Where a run writes its console: this one (None) unless it runs in a lane."""
  return None if cpus is None else lanes.log_file(workdir)


def run_training(name: str, command: list[str], workdir: pathlib.Path,
                 cpus: Optional[tuple[int, ...]]) -> None:
  """Runs a row's or a trial's train.py; raises RunFailed naming it and how to resume."""
  log = console_log(workdir, cpus)
  try:
    run_command(command, cpus, log)
  except subprocess.CalledProcessError as error:
    raise RunFailed(failure_message(name, error, log)) from None


def export_command(row: Row, runs: pathlib.Path) -> list[str]:
  return [sys.executable, "-m", "tools.export", f"--workdir={runs / row.name}", "--int8"]


def export(row: Row, runs: pathlib.Path, cpus: Optional[tuple[int, ...]] = None,
           log: Optional[pathlib.Path] = None) -> None:
  """Exports the row's finished run; its figures must then be in its eval_results.json."""
  command = export_command(row, runs)
  run_command(command, cpus, log)
  results = runs / row.name / "eval_results.json"
  missing = [key for key in report.LATENCY_KEYS if key not in json.loads(results.read_text())]
  if missing:
    raise ExportError(f"`{' '.join(command)}` exited 0 but {results} lacks {', '.join(missing)}")


def train(row: Row, runs: pathlib.Path, extra_flags: list[str],
          cpus: Optional[tuple[int, ...]] = None) -> None:
  """Trains the row in `runs` (pinned to `cpus` where given), exports it, and keeps its results;
  raises RunFailed."""
  run_training(row.name, [sys.executable, "train.py", f"--config={row.config}",
                          f"--workdir={runs / row.name}", *extra_flags], runs / row.name, cpus)
  log = console_log(runs / row.name, cpus)
  try:
    export(row, runs, cpus, log)
  except subprocess.CalledProcessError as error:
    raise RunFailed(failure_message(row.name, error, log, what="trained, but its export failed",
                                    remedy="rerun the sweep to export it again")) from None
  except ExportError as error:
    raise RunFailed(f"{row.name} trained, but its export is incomplete: {error}") from None
  keep_results(runs / row.name, committed_run(row))


def train_missing(rows: tuple[Row, ...], runs: pathlib.Path, extra_flags: list[str],
                  lane_count: int = 1) -> int:
  """Trains every row without a result, in order, `lane_count` at a time; after a failure
  starts no other row (exit 1)."""
  waiting = [row for row in rows if not finished(row)]

  def next_job(_running: set[str]) -> Optional[lanes.Job]:
    if not waiting:
      return None
    row = waiting.pop(0)
    return lanes.Job(row.name, lambda cpus: train(row, runs, extra_flags, cpus))

  try:
    lanes.run_side_by_side(next_job, lane_count)
  except RunFailed as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  return 0


# ---------------------------------------------------------------- the schedule study

def default_epochs(variant: str) -> float:
  """The epoch count configs/<variant>.py trains for: the tables' rows are trained for it."""
  return importlib.import_module(f"configs.{variant}").get_config().train.num_epochs


def schedule_row(variant: str, epochs: float, seed: int, alpha: float = 1.0) -> Row:
  """A row of the study; at the config's own epoch count it is the table row of that name."""
  return Row(variant, alpha, seed=seed,
             epochs=None if epochs == default_epochs(variant) else epochs)


def positive_number(text: str) -> Optional[float]:
  try:
    value = float(text)
  except ValueError:
    return None
  return value if math.isfinite(value) and value > 0 else None


def parse_list(flag: str, text: str, parse: Callable[[str], object], expected: str) -> list:
  """The comma-separated values of `flag`, each through `parse` (None: not valid), repeats
  dropped; a UsageError naming the flag and the first value that is not valid."""
  values = []
  for item in map(str.strip, text.split(",")):
    value = parse(item)
    if value is None:
      raise UsageError(f"{flag}: {item!r} is not {expected}")
    if value not in values:
      values.append(value)
  return values


def parse_seeds(text: str) -> list[int]:
  """The seeds of a `--seeds S,S,...` flag; a UsageError names the first that is not one."""
  return parse_list("--seeds", text, lambda item: int(item) if item.isdigit() else None,
                    "a seed (0, 1, ...)")


def schedule_rows(args: argparse.Namespace) -> tuple[Row, ...]:
  """The study's rows that this command asks for, shortest schedules first; none for a report
  (or dry run) of the runs finished so far."""
  if args.epochs is None:
    if args.report_only or args.dry_run:
      return ()
    raise UsageError("--epochs: the schedule target needs the epoch counts to train, "
                     "e.g. --epochs 5,10,20")
  if any(flag.startswith(EPOCHS_FLAG) for flag in args.extra):
    raise UsageError(f"{EPOCHS_FLAG}: the schedule target sets each row's epoch count; give "
                     "the counts to --epochs")
  epochs = parse_list("--epochs", args.epochs, positive_number, "a positive number of epochs")
  models = parse_list("--variants", args.variants or ",".join(STUDY_DEFAULT),
                      lambda text: STUDY_MODELS.get(text), f"one of {', '.join(STUDY_MODELS)}")
  seeds = parse_seeds(args.seeds or "0")
  return tuple(schedule_row(variant, count, seed, alpha)
               for count in sorted(epochs) for variant, alpha in models for seed in seeds)


def study_rows_found(rows: tuple[Row, ...]) -> list[Row]:
  """The finished rows of the study in results/runs/ that are not among `rows`: those of earlier
  commands, which the study's report shows too."""
  found = []
  folder = RESULTS / "runs"
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


def target_rows(args: argparse.Namespace) -> tuple[Row, ...]:
  """The rows the command's target trains (combined: every table's, trained by the tables)."""
  if args.target == SCHEDULE:
    return schedule_rows(args)
  given = [flag for flag in ("epochs", "variants", "seeds") if getattr(args, flag) is not None]
  if given:
    raise UsageError(f"--{given[0]}: only the schedule target takes it")
  if args.target == COMBINED:
    return tuple(dict.fromkeys(row for rows in TABLES.values() for row in rows))
  return TABLES[args.target]


# ---------------------------------------------------------------- reports

def rebuild_report(rows: Sequence[Row], out: pathlib.Path, title: str, *report_flags: str) -> int:
  """report.main over the rows that have finished, into `out`, naming those that have not."""
  done = [row for row in rows if finished(row)]
  if not done:
    print(f"{out.name}: no finished rows yet", file=sys.stderr)
    return 0
  unfinished = [row.name for row in rows if row not in done]
  sources = [str(relative_to_cwd(committed_run(row))) for row in done]
  return report.main([*sources, "--out", str(out),
                      "--base-resolution", str(BASE_RESOLUTION), "--title", title, *report_flags,
                      *(["--unfinished", *unfinished] if unfinished else [])])


def rebuild(args: argparse.Namespace, rows: tuple[Row, ...], found: list[Row]) -> int:
  if args.target == SCHEDULE:
    return rebuild_report([*rows, *found], RESULTS / SCHEDULE,
                          "Top-1 against training epochs, on Imagenette at 128 px", "--schedule")
  if args.target == COMBINED:
    return rebuild_report(rows, RESULTS / COMBINED,
                          "Tables 4 to 7 of the paper, on Imagenette", "--paper-panel")
  return rebuild_report(rows, RESULTS / args.target,
                        f"Table {args.target.removeprefix('table')} of the paper, on Imagenette",
                        "--paper")


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m tools.sweep", description=__doc__.split("\n")[0],
      epilog="Flags after -- go to every train.py run of the target.")
  parser.add_argument("target", choices=[*sorted(TABLES), SCHEDULE, COMBINED])
  parser.add_argument("--runs", type=pathlib.Path, metavar="DIR",
                      help="where the training workdirs live (default: runs/ in the project)")
  parser.add_argument("--epochs", metavar="E,E,...", help="schedule: the epoch counts to train")
  parser.add_argument("--variants", metavar="V,V,...",
                      help=f"schedule: of {', '.join(STUDY_MODELS)} (default: "
                           f"{','.join(STUDY_DEFAULT)})")
  parser.add_argument("--seeds", metavar="S,S,...", help="schedule: the seeds (default: 0)")
  parser.add_argument("--lanes", type=int, default=1, metavar="N",
                      help="train up to N rows at once, each pinned to its share of the cores")
  parser.add_argument("--dry-run", action="store_true", help="list the rows and what is missing")
  parser.add_argument("--report-only", action="store_true", help="rebuild the report only")
  split = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:split])
  args.extra = argv[split + 1:]
  args.runs = (args.runs or RUNS).resolve()  # train.py runs in the project, not here
  return args


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else list(argv))
  try:
    lanes.cpu_sets(args.lanes)  # a lane count this machine cannot give stops here
    rows = target_rows(args)
    stale = stale_reasons(rows, args.runs, args.extra)
    found = stale_reasons(study_rows_found(rows) if args.target == SCHEDULE else (), args.runs,
                          args.extra)
  except (UsageError, lanes.LanesError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  except (flags.Error, KeyError, AttributeError, ValueError) as error:  # bad flags or config.json
    from mobilenet import cli  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
    print(f"error: {cli.flag_error_message(error, ['sweep', *args.extra])}", file=sys.stderr)
    return 2
  width = max([24, *(len(row.name) for row in [*rows, *found])])
  for row in rows:
    status = "stale" if stale[row] else "done" if finished(row) else "missing"
    print(f"{row.name:<{width}} {status}")
  for row, reason in found.items():  # finished by an earlier command: reported, never trained
    print(f"{row.name:<{width}} {'stale, left out of the report' if reason else 'done'} (found)")
  reasons = [reason for reason in stale.values() if reason]
  left_out = [reason for reason in found.values() if reason]
  if args.dry_run or reasons:
    return report_stale(reasons + left_out if args.dry_run else reasons, dry_run=args.dry_run)
  for reason in left_out:
    print(f"warning: left out of the report: {reason}", file=sys.stderr)
  if not args.report_only and args.target != COMBINED:
    failed = train_missing(rows, args.runs, args.extra, args.lanes)
    if failed:
      return failed
  return rebuild(args, rows, [row for row, reason in found.items() if reason is None])


if __name__ == "__main__":
  sys.exit(main())
