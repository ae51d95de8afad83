"""glibc malloc settings under which XLA:CPU reuses freed buffers, applied by a re-exec.

XLA:CPU allocates each executable's temporaries (1.2 GB for a MobileNet training step
at batch 32) and outputs anew on every call, from its worker threads; glibc serves
such blocks with fresh mmaps, and the kernel then faults in and zeroes every page
(~300k page faults, ~0.8 s of system time per step here). With one arena, no mmaps
per block and no trimming, freed blocks are reused: `python -m mobilenet.benchmark
--reuse_memory` measures the training step 1.6-2x faster.

Not the default for train.py: in a whole run (tf.data decoding and caching the
dataset, evaluation at another batch size) the process then never returns memory and
its peak resident size doubled (13.4 GB against 6.3 GB for 15 steps and one
evaluation of MobileNet-1.0 on Imagenette at 128 px), too much for a shared 24 GB
machine. Opt in with `GLIBC_TUNABLES=<REUSE_MEMORY_TUNABLES> python train.py ...`.
"""
import importlib.metadata
import importlib.util
import os
import sys

REUSE_MEMORY_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                         "glibc.malloc.trim_threshold=68719476736")


def _runs_on_cpu_only() -> bool:
  """True where JAX can only pick its CPU backend; decided without initialising JAX."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  if importlib.util.find_spec("libtpu") is not None:
    return False
  return not list(importlib.metadata.entry_points(group="jax_plugins"))  # e.g. CUDA plugins


def restart_with_reused_memory(*, only_on_cpu: bool = True) -> None:
  """Re-executes this Python process once with REUSE_MEMORY_TUNABLES.

  Tunables are read at start-up only, hence the re-exec, which keeps the process id
  and the command line. A no-op off Linux, where GLIBC_TUNABLES is already set (set
  it to an empty string to opt out) and, with only_on_cpu, where a GPU or TPU may be
  used: there one arena could slow the input pipeline's threads, for no gain.
  """
  if not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ:
    return
  if only_on_cpu and not _runs_on_cpu_only():
    return
  os.environ["GLIBC_TUNABLES"] = REUSE_MEMORY_TUNABLES
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
