"""The paper's Tables 4 to 7 on Imagenette: train what is missing, then rebuild the table.

    python -m mobilenet.sweep table4 [--dry-run] [--report-only] [-- --config.train.num_epochs=3]

Each row is an ordinary `train.py` run with `configs/<variant>.py` (the shared protocol lives in
configs/base.py), its workdir under `runs/` (checkpoints: not committed). A killed sweep resumes
from those checkpoints when run again. Finished rows copy `eval_results.json`, `config.json` and
`metrics.jsonl` to `results/runs/<name>/`; the table goes to `results/<table>/`.
"""
import argparse
import dataclasses
import pathlib
import shutil
import subprocess
import sys

from mobilenet import report

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = PROJECT_ROOT / "results"
RUNS = PROJECT_ROOT / "runs"
BASE_RESOLUTION = 128  # the paper's 224 px, scaled to what this CPU can afford
KEPT_FILES = ("eval_results.json", "config.json", "metrics.jsonl")


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
    # Table 5: narrower against shallower, at about the same cost.
    "table5": (Row("dws", 0.75), Row("shallow")),
    # Table 6: the width multiplier.
    "table6": (Row("dws", 1.0), Row("dws", 0.75), Row("dws", 0.5), Row("dws", 0.25)),
    # Table 7: the resolution multiplier (224/192/160/128 px scaled to 128/112/96/80).
    "table7": (Row("dws", 1.0, 128), Row("dws", 1.0, 112), Row("dws", 1.0, 96),
               Row("dws", 1.0, 80)),
}


def finished(row: Row) -> bool:
  return (RESULTS / "runs" / row.name / "eval_results.json").is_file()


def train(row: Row, extra_flags: list[str]) -> None:
  command = [sys.executable, "train.py", f"--config={row.config}", f"--workdir={RUNS / row.name}",
             *extra_flags]
  print("$ " + " ".join(command), flush=True)
  subprocess.run(command, cwd=PROJECT_ROOT, check=True)
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
  parser = argparse.ArgumentParser(prog="python -m mobilenet.sweep", description=__doc__.split("\n")[0])
  parser.add_argument("table", choices=sorted(TABLES))
  parser.add_argument("--dry-run", action="store_true", help="list the rows and what is missing")
  parser.add_argument("--report-only", action="store_true", help="rebuild the table only")
  parser.add_argument("extra", nargs="*", help="flags passed to train.py (after --)")
  args = parser.parse_args(argv)
  rows = TABLES[args.table]
  for row in rows:
    print(f"{row.name:<24} {'done' if finished(row) else 'missing'}")
  if args.dry_run:
    return 0
  if not args.report_only:
    for row in rows:
      if not finished(row):
        try:
          train(row, args.extra)
        except subprocess.CalledProcessError as error:
          print(f"error: {row.name} failed (exit {error.returncode}); rerun to resume it",
                file=sys.stderr)
          return 1
  return rebuild_table(args.table)


if __name__ == "__main__":
  sys.exit(main())
