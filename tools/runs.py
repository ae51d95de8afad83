"""What the sweep and the recipe search share: where runs live, how a run's train.py is started
(in a lane or not) and its results kept, how a result made under other settings is found, and
the comma-separated lists their flags take.
"""
import contextlib
import json
import math
import os
import pathlib
import shutil
import subprocess
from typing import Callable, Optional

from absl import flags
from ml_collections import config_flags

from mobilenet import errors, protocol
from tools import lanes

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = PROJECT_ROOT / "results"
RUNS = PROJECT_ROOT / "runs"
KEPT_FILES = ("eval_results.json", "config.json", "metrics.jsonl")


class RunFailed(errors.UserError, RuntimeError):
  """A row or trial whose command failed; the message names it and says how to go on."""


# ---------------------------------------------------------------- running

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


def keep_results(workdir: pathlib.Path, destination: pathlib.Path) -> None:
  """Copies a finished run's KEPT_FILES to `destination`, each whole (a temporary file renamed)
  and eval_results.json last: whoever sees that file, from another lane too, sees them all."""
  destination.mkdir(parents=True, exist_ok=True)
  for file_name in sorted(KEPT_FILES, key=lambda name: name == "eval_results.json"):
    partial = destination / f".{file_name}.partial"
    shutil.copy2(workdir / file_name, partial)
    os.replace(partial, destination / file_name)


# ---------------------------------------------------------------- stale results

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


def report_stale(reasons: list[str], *, dry_run: bool) -> None:
  """A dry run lists every stale result; a real run stops at the first (DifferentRun)."""
  if not dry_run:
    raise errors.DifferentRun(reasons[0])
  for reason in reasons:
    print(f"stale: {reason}")


# ---------------------------------------------------------------- flag values

def positive_number(text: str) -> Optional[float]:
  try:
    value = float(text)
  except ValueError:
    return None
  return value if math.isfinite(value) and value > 0 else None


def parse_list(flag: str, text: str, parse: Callable[[str], object], expected: str) -> list:
  """The comma-separated values of `flag`, each through `parse` (None: not valid), repeats
  dropped; a ConfigError naming the flag and the first value that is not valid."""
  values = []
  for item in map(str.strip, text.split(",")):
    value = parse(item)
    if value is None:
      raise errors.ConfigError(f"{flag}: {item!r} is not {expected}")
    if value not in values:
      values.append(value)
  return values


def parse_seeds(text: str) -> list[int]:
  """The seeds of a `--seeds S,S,...` flag; a ConfigError names the first that is not one."""
  return parse_list("--seeds", text, lambda item: int(item) if item.isdigit() else None,
                    "a seed (0, 1, ...)")


def resolved_folder(path: Optional[str], default: pathlib.Path) -> pathlib.Path:
  """A folder flag's value, absolute: train.py runs in the project, not where this started."""
  return (pathlib.Path(path) if path else default).resolve()
