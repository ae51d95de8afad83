"""train.py with a SIGKILL at one point of one step, for the kill-and-resume tests:

    python tests/fault_injection.py <point>:<step> <train.py flags...>

point: train (the step in flight), save (its checkpoint written but not yet renamed into place)
or eval (the evaluation after the step). The hooks are passed to train.py's main, as the
library takes them: it has no fault switch of its own.
"""
import collections
import functools
import os
import pathlib
import signal
import sys
import time

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from mobilenet import allocator, native_stderr  # pylint: disable=wrong-import-position

allocator.use_fast_allocator()  # re-executes this script, as train.py would re-execute itself
native_stderr.quiet_command()

from absl import flags  # pylint: disable=wrong-import-position

import train  # pylint: disable=wrong-import-position  (defines train.py's flags)
from mobilenet import cli, trainer  # pylint: disable=wrong-import-position


def kill() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def saves_committed(workdir: str, timeout_s: float = 120.0) -> None:
  """Waits until no checkpoint is still being written (orbax renames a finished one from its
  temporary name): a kill in a step then follows the event the tests expect, the commit of
  the checkpoint saved before it, however loaded the machine."""
  folder = pathlib.Path(workdir) / "checkpoints"
  deadline = time.monotonic() + timeout_s
  while (folder.is_dir() and any("tmp" in path.name for path in folder.iterdir())
         and time.monotonic() < deadline):
    time.sleep(0.05)


def workdir_flag() -> str:
  return next(arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--workdir="))


def fault(point: str, step: int) -> trainer.Hooks:
  if point == "train":
    def in_step(done):
      if done == step:
        saves_committed(workdir_flag())
        kill()
    return trainer.Hooks(step_done=in_step)
  if point == "eval":
    return trainer.Hooks(eval_batch_done=lambda at: kill() if at == step else None)
  if point == "save":
    started = collections.deque()  # orbax completes saves in the order they started
    return trainer.Hooks(save_started=started.append,
                         save_committing=lambda: kill() if started.popleft() == step else None)
  raise SystemExit(f"unknown fault point {point!r}: train, save or eval")


if __name__ == "__main__":
  fault_point, _, fault_step = sys.argv.pop(1).partition(":")
  hooks = fault(fault_point, int(fault_step))
  sys.argv[0] = str(PROJECT_ROOT / "train.py")
  flags.mark_flag_as_required("config")
  cli.run(functools.partial(train.main, hooks=hooks))
