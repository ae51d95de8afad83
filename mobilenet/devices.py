"""Which devices a run uses: multi-host start-up, the data-parallel mesh, and their description."""
import os
import platform

import jax
import numpy as np
from jax.sharding import Mesh

DATA_AXIS = "data"


def initialize_distributed(distributed_config) -> None:
  """jax.distributed.initialize() when `config.distributed.initialize` asks for it (multi-host)."""
  if not distributed_config.initialize:
    return
  # Cross-process collectives on CPU need gloo; the setting does not touch GPU or TPU backends.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if distributed_config.coordinator_address:
    kwargs = dict(coordinator_address=distributed_config.coordinator_address,
                  num_processes=distributed_config.num_processes,
                  process_id=distributed_config.process_id)
  jax.distributed.initialize(**kwargs)


def device_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices (of all processes): pure data parallelism."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def usable_cores() -> int:
  """The CPU cores this process may run on (fewer than the machine's when it is pinned, as in a
  lane of tools.lanes): what XLA, tf.data and PyTorch size their thread pools by."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def cpu_name() -> str:
  """The CPU model, from /proc/cpuinfo where there is one."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      return next(line.split(":", 1)[1].strip() for line in cpuinfo
                  if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "cpu"


def load_average() -> list[float]:
  """The 1, 5 and 15-minute load averages (empty where the OS has none): benchmarks record them
  so that a figure measured beside other work shows it."""
  try:
    return [round(value, 2) for value in os.getloadavg()]
  except OSError:
    return []


def cores_description() -> str:
  """`2 cores`, or `1 of 2 cores` for a process pinned to some of them."""
  usable, total = usable_cores(), os.cpu_count()
  return f"{usable} cores" if usable == total else f"{usable} of {total} cores"


def description() -> str:
  """What results name as their device: the CPU model and core count, or the accelerator."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"cpu: {cpu_name()}, {cores_description()}"
  return f"{device.platform}: {device.device_kind} x{jax.device_count()}"
