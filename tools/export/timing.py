"""Running a LiteRT model with the interpreter and XNNPACK, and timing it: batch-1 latency as
the mobile runtime gives it, and the machine it was measured on."""
import statistics
import time
from typing import Sequence

import numpy as np

from mobilenet import devices
from tools.export.conversion import interpreter


class Runner:
  """Batch-1 inference through one interpreter: float images in, float logits out (an int8
  model's input is quantized and its output dequantized with the model's own parameters)."""

  def __init__(self, model_bytes: bytes, num_threads: int = 1):
    self.runtime = interpreter(model_bytes, num_threads)
    self.input = self.runtime.get_input_details()[0]
    self.output = self.runtime.get_output_details()[0]

  def quantize(self, image: np.ndarray) -> np.ndarray:
    dtype = self.input["dtype"]
    if dtype == np.float32:
      return image.astype(np.float32)
    scale, zero_point = self.input["quantization"]
    limits = np.iinfo(dtype)
    return np.clip(np.round(image / scale + zero_point), limits.min, limits.max).astype(dtype)

  def set_input(self, image: np.ndarray) -> None:
    self.runtime.set_tensor(self.input["index"], self.quantize(image[None] if image.ndim == 3
                                                               else image))

  def logits(self, image: np.ndarray) -> np.ndarray:
    self.set_input(image)
    self.runtime.invoke()
    values = self.runtime.get_tensor(self.output["index"])[0]
    if self.output["dtype"] == np.float32:
      return values
    scale, zero_point = self.output["quantization"]
    return (values.astype(np.float32) - zero_point) * scale

  def time_invocations(self, count: int) -> list[float]:
    """Milliseconds of each of `count` invocations on the input already set."""
    times = []
    for _ in range(count):
      start = time.perf_counter()
      self.runtime.invoke()
      times.append(1000 * (time.perf_counter() - start))
    return times


def latency_summary(times_ms: Sequence[float]) -> dict:
  """Median and spread (min, max, quartiles) of measured invocation times."""
  ordered = sorted(times_ms)
  q1, _, q3 = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else (ordered[0],) * 3
  return {"median_ms": statistics.median(ordered), "min_ms": ordered[0], "max_ms": ordered[-1],
          "q1_ms": q1, "q3_ms": q3, "runs": len(ordered)}


def measure_latency(runner: Runner, image: np.ndarray, *, warmup: int = 10,
                    runs: int = 50) -> dict:
  runner.set_input(image)
  runner.time_invocations(warmup)
  return latency_summary(runner.time_invocations(runs))


def cpu_description() -> str:
  """The CPU model and the cores this process may use: the machine the figures are of."""
  return f"{devices.cpu_name()}, {devices.cores_description()}"


def litert_version() -> str:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  try:
    return metadata.version("ai-edge-litert")
  except metadata.PackageNotFoundError:
    return "unknown"
