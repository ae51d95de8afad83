"""Independent runs side by side, each pinned to its own share of the CPU cores (`--lanes N` of
the sweep and the recipe search).

One CPU training run does not keep every core busy (the intra-op threads wait for each other
and for the input pipeline), so on a CPU several narrower runs train more images per second than
one wide run. The cores this process may use are split into N disjoint sets; each run is pinned
to one set, and XLA and tf.data size their thread pools from the cores they are allowed.

    python -m tools.lanes --cpus 0,1 -- python train.py ...   # runs one command pinned
"""
import concurrent.futures
import dataclasses
import os
import pathlib
import sys
from typing import Callable, Optional, Sequence

from absl import flags

from mobilenet import errors
from tools import command_line


class LanesError(errors.ConfigError):
  """A lane count (or core list) this machine cannot give; the message names the flag."""


def available_cpus() -> list[int]:
  if not hasattr(os, "sched_getaffinity"):
    raise LanesError("--lanes: pinning runs to cores needs Linux (os.sched_setaffinity)")
  return sorted(os.sched_getaffinity(0))


def cpu_sets(lanes: int, cpus: Optional[Sequence[int]] = None) -> list[tuple[int, ...]]:
  """`cpus` (default: this process's) split into `lanes` disjoint sets of consecutive cores,
  as equal as they can be."""
  cpus = available_cpus() if cpus is None else sorted(cpus)
  if not 1 <= lanes <= len(cpus):
    raise LanesError(f"--lanes={lanes}: this process may use {len(cpus)} cores, so 1 to "
                     f"{len(cpus)} lanes")
  size, extra = divmod(len(cpus), lanes)
  sets, start = [], 0
  for lane in range(lanes):
    end = start + size + (lane < extra)
    sets.append(tuple(cpus[start:end]))
    start = end
  return sets


def pinned(command: Sequence[str], cpus: Optional[Sequence[int]]) -> list[str]:
  """`command`, run pinned to `cpus` (unchanged when None: the run may use every core)."""
  if cpus is None:
    return list(command)
  return [sys.executable, "-m", "tools.lanes", f"--cpus={','.join(map(str, cpus))}", "--",
          *command]


@dataclasses.dataclass(frozen=True)
class Job:
  """A named piece of work; `run(cpus)` passes `cpus` to every command it starts (pinned())."""
  name: str
  run: Callable[[Optional[tuple[int, ...]]], None]


def run_side_by_side(next_job: Callable[[set[str]], Optional[Job]], lanes: int) -> None:
  """Runs jobs, at most `lanes` at a time, until `next_job(names running)` has none to give
  and none is running; with one lane, one after another on every core. `next_job` is asked
  again whenever a lane is free, so that it may offer jobs that depend on finished ones. After a
  failure no job starts; the running ones finish; the first failure is raised."""
  if lanes == 1:
    while (job := next_job(set())) is not None:
      job.run(None)
    return
  free = cpu_sets(lanes)
  running: dict[concurrent.futures.Future, tuple[str, tuple[int, ...]]] = {}
  failure: Optional[BaseException] = None
  with concurrent.futures.ThreadPoolExecutor(lanes) as pool:
    while True:
      while free and failure is None:
        job = next_job({name for name, _ in running.values()})
        if job is None:
          break
        cpus = free.pop(0)
        running[pool.submit(job.run, cpus)] = (job.name, cpus)
      if not running:
        break
      done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        free.append(running.pop(future)[1])
        if future.exception() is not None and failure is None:
          failure = future.exception()
  if failure is not None:
    raise failure


def log_file(workdir: pathlib.Path) -> pathlib.Path:
  """Where a run in a lane writes its console: `<workdir>.log`, beside the workdir rather than
  in it, so that the workdir holds only what train.py and the export write there."""
  return workdir.with_name(workdir.name + ".log")


def define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string("cpus", None, "comma-separated core numbers, e.g. 0,1",
                      flag_values=flag_values)


def main(command: command_line.CommandLine) -> None:
  """Runs the command after `--` pinned to the cores of --cpus, in place of this process."""
  if command.flags.cpus is None:
    raise errors.ConfigError("--cpus: the cores to pin the command to are required")
  if command.arguments:
    raise errors.ConfigError(f"unexpected arguments: {' '.join(command.arguments)} (the command "
                             "goes after --)")
  if not command.passed_on:
    raise errors.ConfigError("no command after --")
  try:
    os.sched_setaffinity(0, [int(cpu) for cpu in command.flags.cpus.split(",")])
  except (ValueError, OSError) as error:
    raise LanesError(f"--cpus={command.flags.cpus}: {error}") from None
  os.execvp(command.passed_on[0], command.passed_on)


TOOL = command_line.Tool(define_flags, main, takes_arguments=True, passes_on=True)

if __name__ == "__main__":
  TOOL.start()
