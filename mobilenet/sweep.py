"""The paper's Tables 4 to 7 on Imagenette: train what is missing, then rebuild the table.

    python -m mobilenet.sweep table4 [--dry-run] [--report-only] [-- --config.train.num_epochs=3]

Each row is an ordinary `train.py` run with `configs/<variant>.py` (the shared protocol lives in
configs/base.py), its workdir under `runs/` (checkpoints: not committed). A killed sweep resumes
from those checkpoints when run again. Each trained row is then exported to LiteRT
(`python -m mobilenet.export --workdir=<workdir> --int8`), which merges measured fp32 and int8
latency and int8 top-1 into its eval_results.json; a failed export stops the sweep, so that no
row silently lacks those columns. Finished rows copy `eval_results.json`, `config.json` and
`metrics.jsonl` to `results/runs/<name>/` (the .tflite files are not kept); the table goes to
`results/<table>/`.

A row whose result (or unfinished run) was made with settings that change what it measures,
say after an edit of configs/base.py, stops the sweep with the first differing field, so that
no table mixes two protocols; `--dry-run` lists such rows as stale.

Each row's train.py picks its malloc itself (mobilenet.allocator: tcmalloc where installed;
MOBILENET_ALLOCATOR=system for glibc's).
"""
import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from mobilenet import report

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = PROJECT_ROOT / "results"
RUNS = PROJECT_ROOT / "runs"
BASE_RESOLUTION = 128  # the paper's 224 px, scaled to what this CPU can afford
KEPT_FILES = ("eval_results.json", "config.json", "metrics.jsonl")


class ExportError(Exception):
  """An export that exited 0 but left its figures out of eval_results.json."""


@dataclasses.dataclass(frozen=True)
class Row:
  variant: str
  alpha: float = 1.0
  resolution: int = BASE_RESOLUTION
  seed: int = 0

  @property
  def name(self) -> str:
    return f"{self.variant}_a{self.alpha:g}_r{self.resolution}_s{self.seed}"

  @property
  def config(self) -> str:
    return (f"configs/{self.variant}.py:alpha={self.alpha},resolution={self.resolution},"
            f"seed={self.seed}")


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
    # Table 7: the resolution multiplier (224/192/160/128 px scaled to 128/112/96/80).
    "table7": (Row("dws", 1.0, 128), Row("dws", 1.0, 112), Row("dws", 1.0, 96),
               Row("dws", 1.0, 80)),
}


def finished(row: Row) -> bool:
  return (RESULTS / "runs" / row.name / "eval_results.json").is_file()


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
  (report.protocol_settings: the same definition by which the report merges seeds)."""
  old, new = report.protocol_settings(stored), report.protocol_settings(requested)
  return [f"{field}={old[field]!r}, the sweep now asks for {new[field]!r}"
          for field in report.differing_fields(old, new)]


def stale_reason(row: Row, requested: dict) -> str | None:
  """Why this row's result, or else its unfinished run, was made with settings other than
  `requested`; None if it was not."""
  if finished(row):
    folder, verb, remedy = RESULTS / "runs" / row.name, "was trained", "move that folder away"
  else:
    folder, verb, remedy = RUNS / row.name, "holds a run started", "delete it"
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


def report_stale(reasons: list[str], *, dry_run: bool) -> int:
  """A dry run lists every stale result (exit 0); a real run stops at the first (exit 1)."""
  if dry_run:
    for reason in reasons:
      print(f"stale: {reason}")
    return 0
  print(f"error: {reasons[0]}", file=sys.stderr)
  return 1


def run_command(command: list[str]) -> None:
  """Runs one step of a row as its own process, echoed first; raises CalledProcessError."""
  print("$ " + " ".join(command), flush=True)
  subprocess.run(command, cwd=PROJECT_ROOT, check=True, env=dict(os.environ))


def export_command(row: Row) -> list[str]:
  return [sys.executable, "-m", "mobilenet.export", f"--workdir={RUNS / row.name}", "--int8"]


def export(row: Row) -> None:
  """Exports the row's finished run; its figures must then be in its eval_results.json."""
  command = export_command(row)
  run_command(command)
  results = RUNS / row.name / "eval_results.json"
  missing = [key for key in report.LATENCY_KEYS if key not in json.loads(results.read_text())]
  if missing:
    raise ExportError(f"`{' '.join(command)}` exited 0 but {results} lacks {', '.join(missing)}")


def train(row: Row, extra_flags: list[str]) -> None:
  """Trains the row, exports it, and keeps its results."""
  run_command([sys.executable, "train.py", f"--config={row.config}",
               f"--workdir={RUNS / row.name}", *extra_flags])
  export(row)
  destination = RESULTS / "runs" / row.name
  destination.mkdir(parents=True, exist_ok=True)
  for file_name in KEPT_FILES:
    shutil.copy2(RUNS / row.name / file_name, destination / file_name)


def rebuild_table(table: str) -> int:
  done = [RESULTS / "runs" / row.name for row in TABLES[table] if finished(row)]
  if not done:
    print(f"{table}: no finished rows yet", file=sys.stderr)
    return 0
  title = f"Table {table.removeprefix('table')} of the paper, on Imagenette"
  return report.main([*map(str, done), "--out", str(RESULTS / table), "--paper",
                      "--base-resolution", str(BASE_RESOLUTION), "--title", title])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mobilenet.sweep", description=__doc__.split("\n")[0],
      epilog="Flags after -- go to every train.py run of the table.")
  parser.add_argument("table", choices=sorted(TABLES))
  parser.add_argument("--dry-run", action="store_true", help="list the rows and what is missing")
  parser.add_argument("--report-only", action="store_true", help="rebuild the table only")
  argv = sys.argv[1:] if argv is None else list(argv)
  split = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:split])
  args.extra = argv[split + 1:]
  rows = TABLES[args.table]
  try:
    stale = {row: stale_reason(row, requested_config(row.config, args.extra)) for row in rows}
  except (flags.Error, KeyError, AttributeError, ValueError) as error:  # bad flags or config.json
    from mobilenet import cli  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
    print(f"error: {cli.flag_error_message(error, ['sweep', *args.extra])}", file=sys.stderr)
    return 2
  for row in rows:
    status = "stale" if stale[row] else "done" if finished(row) else "missing"
    print(f"{row.name:<24} {status}")
  reasons = [reason for reason in stale.values() if reason]
  if args.dry_run or reasons:
    return report_stale(reasons, dry_run=args.dry_run)
  if not args.report_only:
    for row in rows:
      if not finished(row):
        try:
          train(row, args.extra)
        except subprocess.CalledProcessError as error:
          command = " ".join(map(str, error.cmd))
          if error.cmd == export_command(row):
            print(f"error: {row.name} trained, but its export failed (exit {error.returncode}): "
                  f"`{command}`; rerun the sweep to export it again", file=sys.stderr)
          else:
            print(f"error: {row.name} failed (exit {error.returncode}): `{command}`; rerun to "
                  "resume it", file=sys.stderr)
          return 1
        except ExportError as error:
          print(f"error: {row.name} trained, but its export is incomplete: {error}",
                file=sys.stderr)
          return 1
  return rebuild_table(args.table)


if __name__ == "__main__":
  sys.exit(main())
