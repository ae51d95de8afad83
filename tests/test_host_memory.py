"""The benchmark's --reuse_memory (train.py's opt-in) restarts once under malloc settings that
let XLA:CPU reuse buffers."""
import os
import subprocess
import sys

import pytest

from mobilenet import host_memory

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = ("import os; from mobilenet import host_memory; "
          "host_memory.restart_with_reused_memory(); "
          "print(os.getpid(), repr(os.environ.get('GLIBC_TUNABLES')))")


def _restarted_environment(**env):
  environment = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAX_PLATFORMS")}
  process = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT, text=True,
                             stdout=subprocess.PIPE, env={**environment, **env})
  out, _ = process.communicate(timeout=60)
  assert process.returncode == 0
  pid, tunables = out.split(maxsplit=1)
  return process.pid == int(pid), tunables.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")
def test_cpu_runs_restart_once_in_the_same_process_with_the_tunables():
  same_pid, tunables = _restarted_environment(JAX_PLATFORMS="cpu")
  assert same_pid
  assert tunables == repr(host_memory.REUSE_MEMORY_TUNABLES)


def test_user_set_tunables_and_accelerator_platforms_are_left_alone():
  assert _restarted_environment(JAX_PLATFORMS="cpu", GLIBC_TUNABLES="")[1] == "''"
  assert _restarted_environment(JAX_PLATFORMS="cuda,cpu")[1] == "None"
  assert _restarted_environment(JAX_PLATFORMS="tpu")[1] == "None"
