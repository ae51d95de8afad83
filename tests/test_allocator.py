"""train.py, eval.py and the benchmark re-execute once under tcmalloc (or tuned jemalloc) where it is
installed, and say in one line which allocator runs; never twice, never where the user opted out."""
import os
import subprocess
import sys

import pytest

from mobilenet import allocator

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def _finder(*present):
  return lambda name: next((path for path in present if os.path.basename(path) == name), None)


def _decide(environ=None, *, linux=True, cpu_only=True, present=(TCMALLOC, JEMALLOC),
            loaded=lambda name: True):
  return allocator.decide(environ or {}, linux=linux, cpu_only=cpu_only,
                          find=_finder(*present), loaded=loaded)


def test_a_cpu_run_re_executes_under_tcmalloc_when_it_is_installed():
  decision = _decide({"LD_PRELOAD": "/opt/other.so"})
  assert decision.reexec and decision.allocator == "tcmalloc"
  assert decision.environment == {"LD_PRELOAD": f"{TCMALLOC}:/opt/other.so",
                                  allocator.REEXEC_MARKER: "tcmalloc"}


def test_jemalloc_runs_with_its_reuse_settings_when_tcmalloc_is_absent():
  decision = _decide(present=(JEMALLOC,))
  assert decision.reexec and decision.allocator == "jemalloc"
  assert decision.environment["LD_PRELOAD"] == JEMALLOC
  assert decision.environment["MALLOC_CONF"] == allocator.JEMALLOC_CONF
  # A MALLOC_CONF of the user's is theirs to keep.
  assert "MALLOC_CONF" not in _decide({"MALLOC_CONF": "narenas:1"},
                                      present=(JEMALLOC,)).environment


def test_an_explicit_choice_picks_that_library():
  assert _decide({allocator.CHOICE_VARIABLE: "jemalloc"}).allocator == "jemalloc"
  decision = _decide({allocator.CHOICE_VARIABLE: "jemalloc"}, present=(TCMALLOC,))
  assert not decision.reexec and decision.allocator == "glibc"
  assert "libjemalloc.so.2 found" in decision.reason


def test_without_either_library_the_run_keeps_glibc_and_says_how_to_install_one():
  decision = _decide(present=())
  assert not decision.reexec and decision.allocator == "glibc"
  assert allocator.log_line(decision) == (
      "allocator: glibc malloc (neither libtcmalloc_minimal.so.4 nor libjemalloc.so.2 found; "
      "`apt-get install libtcmalloc-minimal4` for faster CPU steps)")


@pytest.mark.parametrize("environ, reason", [
    ({allocator.CHOICE_VARIABLE: "system"}, "MOBILENET_ALLOCATOR=system"),
    ({allocator.CHOICE_VARIABLE: "hoard"}, "MOBILENET_ALLOCATOR='hoard' is not one of"),
])
def test_opting_out_or_a_misspelt_choice_keeps_glibc(environ, reason):
  decision = _decide(environ)
  assert not decision.reexec and decision.allocator == "glibc"
  assert reason in decision.reason


def test_the_re_executed_process_never_re_executes_again():
  environ = {allocator.REEXEC_MARKER: "tcmalloc", "LD_PRELOAD": TCMALLOC}
  decision = _decide(environ)
  assert not decision.reexec and decision.allocator == "tcmalloc"
  assert allocator.log_line(decision) == (
      f"allocator: tcmalloc (LD_PRELOAD={TCMALLOC}; MOBILENET_ALLOCATOR=system for glibc's)")
  # Had the loader refused the library, the line says glibc runs: still no second re-exec.
  failed = _decide(environ, loaded=lambda name: False)
  assert not failed.reexec and failed.allocator == "glibc"
  assert "did not load" in failed.reason


def test_an_allocator_the_caller_preloaded_is_kept():
  decision = _decide({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
  assert not decision.reexec and decision.allocator == "jemalloc"


def test_accelerator_runs_and_other_systems_keep_their_malloc():
  on_gpu = _decide(cpu_only=False)
  assert not on_gpu.reexec and on_gpu.allocator == "glibc" and "GPU or TPU" in on_gpu.reason
  assert not _decide(linux=False).reexec


@pytest.mark.parametrize("platforms, cpu_only", [("cpu", True), ("cuda,cpu", False),
                                                  ("tpu", False)])
def test_jax_platforms_decides_whether_only_the_cpu_can_run(platforms, cpu_only):
  assert allocator.runs_on_cpu_only({"JAX_PLATFORMS": platforms}) == cpu_only


SCRIPT = ("import os; from mobilenet import allocator; allocator.use_fast_allocator(); "
          "print(os.getpid(), os.environ.get('LD_PRELOAD', '-'))")


@pytest.mark.end_to_end
@pytest.mark.skipif(allocator.find_library(allocator.LIBRARIES["tcmalloc"]) is None,
                    reason="libtcmalloc_minimal.so.4 is not installed")
def test_a_real_re_exec_keeps_the_process_and_loads_tcmalloc_once():
  environment = {k: v for k, v in os.environ.items()
                 if k not in ("LD_PRELOAD", allocator.CHOICE_VARIABLE, allocator.REEXEC_MARKER)}
  process = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**environment, "JAX_PLATFORMS": "cpu"})
  out, err = process.communicate(timeout=60)
  assert process.returncode == 0, err
  pid, preload = out.split()
  assert int(pid) == process.pid
  assert preload == allocator.find_library(allocator.LIBRARIES["tcmalloc"])
  assert [line for line in err.splitlines() if line.startswith("allocator:")] == [
      f"allocator: tcmalloc (LD_PRELOAD={preload}; MOBILENET_ALLOCATOR=system for glibc's)"]


RELEASE_SCRIPT = """
import sys
from mobilenet import allocator
def resident():
  return int(open("/proc/self/statm").read().split()[1]) * 4096
size = int(sys.argv[1])
blocks = [bytearray(b"x" * size) for _ in range(400)]  # touched: resident
del blocks[::2]  # every other block freed: holes the allocator keeps
before = resident()
print(allocator.release_free_memory(), (before - resident()) // 2**20)
"""


def _released(preload: str | None, block_bytes: int) -> tuple[str, int]:
  environment = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
  if preload == JEMALLOC:
    environment["MALLOC_CONF"] = allocator.JEMALLOC_CONF
  if preload:
    environment["LD_PRELOAD"] = preload
  out = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT, str(block_bytes)], cwd=PROJECT_ROOT,
                       env=environment, capture_output=True, text=True, check=True, timeout=60).stdout
  name, mib = out.split()
  return name, int(mib)


@pytest.mark.parametrize("preload, name, block_bytes", [
    (None, "glibc", 100 * 1024),  # under glibc's mmap threshold: from its heap
    (TCMALLOC, "tcmalloc", 2 * 2**20),
    (JEMALLOC, "jemalloc", 2 * 2**20)])
def test_free_memory_the_allocator_holds_goes_back_to_the_system(preload, name, block_bytes):
  if preload and not os.path.isfile(preload):
    pytest.skip(f"{preload} is not installed")
  released_by, released_mib = _released(preload, block_bytes)
  assert released_by == name
  freed_mib = 200 * block_bytes // 2**20
  assert released_mib >= freed_mib // 2, (released_mib, freed_mib)
