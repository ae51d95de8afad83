"""Wall and CPU seconds of repeated calls."""
import statistics
import time
from typing import Any, Callable


def timed_calls(fn: Callable[[], Any], count: int, cpu_seconds: list | None = None) -> list[float]:
  """Wall seconds per call of fn (which must block until its result is ready).

  With cpu_seconds, also appends the process CPU time of each call: less
  sensitive than wall time to other jobs on a shared machine (both frameworks'
  idle threads may spin, which counts).
  """
  seconds = []
  for _ in range(count):
    cpu_start = time.process_time()
    start = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - start)
    if cpu_seconds is not None:
      cpu_seconds.append(time.process_time() - cpu_start)
  return seconds


def time_op(fn: Callable[[], Any], min_seconds: float = 0.3, max_calls: int = 20) -> float:
  """Median milliseconds per call, after one warm-up call."""
  fn()
  seconds = [sum(timed_calls(fn, 1))]
  while sum(seconds) < min_seconds and len(seconds) < max_calls:
    seconds += timed_calls(fn, 1)
  return 1e3 * statistics.median(seconds)

