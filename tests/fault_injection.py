"""train.py with a SIGKILL at one point of one step, for the kill-and-resume tests:

    python tests/fault_injection.py <point>:<step> <train.py flags...>

point: train (the step in flight), save (its checkpoint written but not yet renamed into place)
or eval (the evaluation after the step). The hooks go into trainer.HOOKS: the library itself
has no fault switch.
"""
import collections
import os
import pathlib
import runpy
import signal
import sys

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from mobilenet import allocator  # pylint: disable=wrong-import-position

allocator.use_fast_allocator()  # re-executes this script, as train.py would re-execute itself

from mobilenet import trainer  # pylint: disable=wrong-import-position


def kill() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, step: int) -> None:
  if point == "train":
    trainer.HOOKS.step_done = lambda done: kill() if done == step else None
  elif point == "eval":
    trainer.HOOKS.eval_batch_done = lambda at: kill() if at == step else None
  elif point == "save":
    started = collections.deque()  # orbax completes saves in the order they started
    trainer.HOOKS.save_started = started.append
    trainer.HOOKS.save_committing = lambda: kill() if started.popleft() == step else None
  else:
    raise SystemExit(f"unknown fault point {point!r}: train, save or eval")


if __name__ == "__main__":
  fault_point, _, fault_step = sys.argv.pop(1).partition(":")
  install(fault_point, int(fault_step))
  sys.argv[0] = str(PROJECT_ROOT / "train.py")
  runpy.run_path(sys.argv[0], run_name="__main__")
