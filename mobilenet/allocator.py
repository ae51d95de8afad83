"""Runs CPU training under tcmalloc (or tuned jemalloc) instead of glibc's malloc, by one re-exec.

XLA:CPU allocates each executable's temporaries (1.2 GB for a MobileNet training step
at batch 32) and outputs anew on every call, from its worker threads. glibc serves such
blocks with fresh mmaps, and the kernel then faults in and zeroes every page (~300k page
faults, ~0.8 s of system time per step here). tcmalloc and jemalloc keep freed blocks for
reuse and still hand memory back: the steps run about as fast as under glibc settings that
never return memory, for a far smaller peak (README, "Speed on a CPU").

An allocator is chosen by LD_PRELOAD, which the dynamic loader reads at start-up only, hence
the re-exec: it keeps the process id and the command line, and happens once (an environment
marker says it did). `MOBILENET_ALLOCATOR=system` opts out; `tcmalloc` or `jemalloc` asks for
one. Where neither library is installed (Debian: `apt-get install libtcmalloc-minimal4`), off
Linux, and where JAX may pick a GPU or TPU (whose memory holds XLA's buffers), the process
keeps glibc's malloc. Every process prints one line saying which allocator runs.
"""
import ctypes
import dataclasses
import importlib.metadata
import importlib.util
import os
import sys
from typing import Callable, Mapping

CHOICE_VARIABLE = "MOBILENET_ALLOCATOR"  # auto (default), tcmalloc, jemalloc or system
REEXEC_MARKER = "MOBILENET_ALLOCATOR_REEXEC"  # set in the re-executed process: never twice
CHOICES = ("auto", "tcmalloc", "jemalloc", "system")
# Preferred first: tcmalloc needs no settings. jemalloc's defaults keep too little for reuse.
LIBRARIES = {"tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}
JEMALLOC_CONF = "oversize_threshold:0,background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:0"
LIBRARY_DIRECTORIES = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                       "/usr/lib", "/usr/local/lib", "/lib/x86_64-linux-gnu", "/lib64")
INSTALL_HINT = "apt-get install libtcmalloc-minimal4"
MALLCTL_ARENAS_ALL = 4096  # jemalloc's arena index meaning "every arena"


@dataclasses.dataclass(frozen=True)
class Decision:
  """What to run under: re-exec with `environment` added, or keep this process as it is."""
  allocator: str  # tcmalloc, jemalloc, or glibc (the system's malloc)
  reexec: bool
  environment: dict[str, str]
  reason: str  # for the log line


def find_library(name: str, directories=LIBRARY_DIRECTORIES) -> str | None:
  for directory in directories:
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def runs_on_cpu_only(environ: Mapping[str, str] = os.environ) -> bool:
  """True where JAX can only pick its CPU backend; decided without initialising JAX."""
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  if importlib.util.find_spec("libtpu") is not None:
    return False
  return not list(importlib.metadata.entry_points(group="jax_plugins"))  # e.g. CUDA plugins


def _preloaded_allocator(preload: str) -> str | None:
  for name in preload.replace(":", " ").split():
    base = os.path.basename(name)
    for allocator in ("tcmalloc", "jemalloc", "mimalloc"):
      if allocator in base:
        return allocator
  return None


def _mapped(name: str) -> bool:
  """Whether a library of that name is loaded into this process (False where unknown)."""
  try:
    with open("/proc/self/maps", encoding="utf-8") as maps:
      return any(name in line for line in maps)
  except OSError:
    return False


def decide(environ: Mapping[str, str], *, linux: bool, cpu_only: bool,
           find: Callable[[str], str | None] = find_library,
           loaded: Callable[[str], bool] = _mapped) -> Decision:
  """The allocator for this process; pure given find and loaded, so every case is testable
  without re-executing."""
  def keep(allocator, reason):
    return Decision(allocator, False, {}, reason)

  if REEXEC_MARKER in environ:  # the re-executed process: never again, whatever happened
    allocator = environ[REEXEC_MARKER]
    preload = environ.get("LD_PRELOAD", "")
    if allocator in LIBRARIES and not loaded(LIBRARIES[allocator]):
      return keep("glibc", f"LD_PRELOAD={preload} did not load")
    return keep(allocator, f"LD_PRELOAD={preload}")
  preloaded = _preloaded_allocator(environ.get("LD_PRELOAD", ""))
  if preloaded:
    return keep(preloaded, f"LD_PRELOAD={environ['LD_PRELOAD']} set by the caller")
  choice = environ.get(CHOICE_VARIABLE, "auto").strip().lower() or "auto"
  if choice not in CHOICES:
    return keep("glibc", f"{CHOICE_VARIABLE}={environ[CHOICE_VARIABLE]!r} is not one of "
                f"{', '.join(CHOICES)}")
  if choice == "system":
    return keep("glibc", f"{CHOICE_VARIABLE}=system")
  if not linux:
    return keep("system malloc", "not Linux")
  if not cpu_only and choice == "auto":
    return keep("glibc", "JAX may run on a GPU or TPU, whose memory holds XLA's buffers")
  wanted = list(LIBRARIES) if choice == "auto" else [choice]
  for allocator in wanted:
    path = find(LIBRARIES[allocator])
    if path is None:
      continue
    preload = ":".join(filter(None, [path, environ.get("LD_PRELOAD", "")]))
    environment = {"LD_PRELOAD": preload, REEXEC_MARKER: allocator}
    if allocator == "jemalloc" and "MALLOC_CONF" not in environ:
      environment["MALLOC_CONF"] = JEMALLOC_CONF
    return Decision(allocator, True, environment, f"LD_PRELOAD={preload}")
  missing = " nor ".join(LIBRARIES[allocator] for allocator in wanted)
  return keep("glibc", f"{'neither ' if len(wanted) > 1 else ''}{missing} found; "
              f"`{INSTALL_HINT}` for faster CPU steps")


def log_line(decision: Decision) -> str:
  name = {"glibc": "glibc malloc"}.get(decision.allocator, decision.allocator)
  opt_out = f"; {CHOICE_VARIABLE}=system for glibc's" if decision.allocator in LIBRARIES else ""
  return f"allocator: {name} ({decision.reason}{opt_out})"


def use_fast_allocator() -> Decision:
  """Re-executes this Python process once under tcmalloc or jemalloc where that helps (see top).

  Call it first in a program's main: in the re-executed process it only prints the log line.
  """
  decision = decide(os.environ, linux=sys.platform.startswith("linux"),
                    cpu_only=runs_on_cpu_only())
  if decision.reexec:
    os.environ.update(decision.environment)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
  print(log_line(decision), file=sys.stderr, flush=True)
  return decision


def release_free_memory() -> str | None:
  """Hands the pages that the running allocator holds free back to the system; returns which
  allocator did (None where none of the three is found).

  A run frees a lot once: the batches of building a split's cache, and the compiler's working
  memory for each step. An allocator keeps such pages for reuse, and XLA's temporaries of later
  steps reuse only part of them, so without this they stay resident to the end. Call it after
  those moments, never per step: the pages of a step's temporaries would be faulted in again.
  """
  if os.name != "posix":  # the process's own symbols are reachable this way on POSIX only
    return None
  process = ctypes.CDLL(None)
  if hasattr(process, "MallocExtension_ReleaseFreeMemory"):
    process.MallocExtension_ReleaseFreeMemory()
    return "tcmalloc"
  if hasattr(process, "mallctl"):
    command = f"arena.{MALLCTL_ARENAS_ALL}.purge".encode()
    process.mallctl(command, None, None, None, ctypes.c_size_t(0))
    return "jemalloc"
  if hasattr(process, "malloc_trim"):
    process.malloc_trim(ctypes.c_size_t(0))
    return "glibc"
  return None
