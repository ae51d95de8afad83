"""`--lanes N`: this benchmark once on every core, then N pinned copies at once, compared."""
import json
import subprocess
from typing import Any, Callable

from mobilenet import errors
from tools import lanes


def compare_lanes(child_command: list[str], count: int,
                  run_children: Callable[[list[list[str]]], list[dict]] | None = None
                  ) -> dict[str, Any]:
  """The benchmark `child_command` (a --json run) once unpinned, then `count` copies at once,
  each pinned to one of lanes.cpu_sets(count): the training images/s of each and in all."""
  run_children = run_children or _run_at_once
  sets = lanes.cpu_sets(count)
  single, = run_children([child_command])
  in_lanes = run_children([lanes.pinned(child_command, cpus) for cpus in sets])
  total = sum(report["train_images_per_s"] for report in in_lanes)
  return {"one_run": single, "lanes": in_lanes, "lane_cpus": [list(cpus) for cpus in sets],
          "lanes_train_images_per_s": total,
          "lanes_over_one_run": total / single["train_images_per_s"]}


def _run_at_once(commands: list[list[str]]) -> list[dict]:
  """Starts every command, waits for them all; each one's last stdout line, as JSON."""
  processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for command in commands]
  outputs = [process.communicate()[0] for process in processes]
  for command, process in zip(commands, processes):
    if process.returncode:
      raise errors.UserError(f"`{' '.join(command)}` exited {process.returncode}")
  return [json.loads(output.strip().splitlines()[-1]) for output in outputs]


def child_flags(argv: list[str]) -> list[str]:
  """This command's flags, less --lanes (and its value) and --json."""
  kept, skip_value = [], False
  for arg in argv:
    if skip_value:
      skip_value = False
    elif arg == "--lanes":
      skip_value = True
    elif not arg.startswith("--lanes=") and arg not in ("--json", "--nojson"):
      kept.append(arg)
  return kept
