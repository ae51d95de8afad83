"""The benchmark proper: each variant's training step and inference, JAX and PyTorch (and each
`--standard_impls` choice) in alternating rounds, compared by their medians."""
import resource
import statistics
import sys
from typing import Any, Callable, Sequence

import ml_collections

from mobilenet import errors, model, ops
from tools.benchmark.models import JaxModel, TorchModel
from tools.benchmark.timing import timed_calls


def _median_rate(seconds: list[float], batch: int) -> float:
  return batch / statistics.median(seconds)


def measure(config: ml_collections.ConfigDict, variants: list[str], steps: int, rounds: int,
            warmup: int, with_torch: bool, threads: int,
            standard_impls: Sequence[str] = (), ynn_convolutions: bool = False,
            memory_scheduler: bool = False) -> dict[str, dict[str, Any]]:
  """Images/s per variant (and framework, listed standard_impl, with jaxlib's default of
  YNNPACK convolutions, and with XLA's memory-optimized scheduler), from alternating rounds of
  timed steps."""
  batch = config.train.global_batch_size
  own_impl = ops.resolve_standard_impl(config.model.standard_impl)

  def impl_runner_key(variant: str, impl: str) -> tuple[str, str]:
    """A listed impl that resolves like the config's own is timed with the config's own step."""
    same = ops.resolve_standard_impl(impl) == own_impl
    return (variant, "jax") if same else (variant, impl)

  runners, inferring = {}, []
  for variant in variants:
    runners[variant, "jax"] = JaxModel(config, variant)
    inferring.append((variant, "jax"))
    if with_torch:
      runners[variant, "torch"] = TorchModel(config, variant, threads)
      inferring.append((variant, "torch"))
    for impl in standard_impls:
      if impl_runner_key(variant, impl) == (variant, impl):
        impl_config = config.copy_and_resolve_references()
        impl_config.model.standard_impl = impl
        runners[variant, impl] = JaxModel(impl_config, variant)
    if ynn_convolutions:
      runners[variant, "ynn_convolutions"] = JaxModel(config, variant, ynn_convolutions=True)
    if memory_scheduler:
      runners[variant, "memory_scheduler"] = JaxModel(config, variant, memory_scheduler=True)
  for key, runner in runners.items():
    timed_calls(runner.train, warmup)
    if key in inferring:
      timed_calls(runner.predict, warmup)
  train_seconds = {key: [] for key in runners}
  infer_seconds = {key: [] for key in inferring}
  train_cpu = {key: [] for key in runners}
  for _ in range(rounds):
    for key, runner in runners.items():
      train_seconds[key] += timed_calls(runner.train, steps, train_cpu[key])
    for key in inferring:
      infer_seconds[key] += timed_calls(runners[key].predict, steps)

  results = {}
  for variant in variants:
    jax_model = runners[variant, "jax"]
    train = train_seconds[variant, "jax"]
    result = {
        "train_images_per_s": _median_rate(train, batch),
        "infer_images_per_s": _median_rate(infer_seconds[variant, "jax"], batch),
        "compile_s": jax_model.compile_s,
        "infer_compile_s": jax_model.infer_compile_s,
        "train_step_ms": _step_ms(train),
        "train_step_cpu_ms": 1e3 * statistics.median(train_cpu[variant, "jax"]),
        "train_temp_bytes": jax_model.train_temp_bytes,
    }
    if with_torch:
      result["torch_train_images_per_s"] = _median_rate(train_seconds[variant, "torch"], batch)
      result["torch_infer_images_per_s"] = _median_rate(infer_seconds[variant, "torch"], batch)
      result["torch_train_step_cpu_ms"] = 1e3 * statistics.median(train_cpu[variant, "torch"])
      result["jax_over_torch_train"] = (result["train_images_per_s"]
                                        / result["torch_train_images_per_s"])
      result["jax_over_torch_infer"] = (result["infer_images_per_s"]
                                        / result["torch_infer_images_per_s"])
    if standard_impls:
      result["standard_impls"] = {
          impl: {"resolved": ops.resolve_standard_impl(impl),
                 "train_images_per_s": _median_rate(
                     train_seconds[impl_runner_key(variant, impl)], batch),
                 "train_step_ms": _step_ms(train_seconds[impl_runner_key(variant, impl)])}
          for impl in standard_impls}
    if ynn_convolutions:
      ynn = train_seconds[variant, "ynn_convolutions"]
      result["ynn_convolutions"] = {
          "train_images_per_s": _median_rate(ynn, batch), "train_step_ms": _step_ms(ynn),
          "compiler_options": ops.compiler_options(ynn_convolutions=True)}
    if memory_scheduler:
      seconds = train_seconds[variant, "memory_scheduler"]
      result["memory_scheduler"] = {
          "train_images_per_s": _median_rate(seconds, batch), "train_step_ms": _step_ms(seconds),
          "train_temp_bytes": runners[variant, "memory_scheduler"].train_temp_bytes,
          "compiler_options": ops.compiler_options(memory_scheduler=True)}
    results[variant] = result
  return results


def _step_ms(seconds: list[float]) -> dict[str, float]:
  return {"median": 1e3 * statistics.median(seconds), "min": 1e3 * min(seconds),
          "max": 1e3 * max(seconds)}


def peak_rss_bytes() -> int:
  """The process's peak resident size so far (Linux reports kilobytes, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024


def check_config(config: ml_collections.ConfigDict, variants: list[str],
                 standard_impls: Sequence[str] = ()) -> None:
  """One-line ConfigErrors naming the bad field or flag, before anything compiles: the model's
  own checks for each variant, and whether its implementations (and the --standard_impls
  listed) exist on this backend."""
  for variant in variants:
    model_config = config.model.copy_and_resolve_references()
    model_config.variant = variant
    model.check_config(model_config)
  for field, resolve in (("depthwise_impl", ops.resolve_depthwise_impl),
                         ("pointwise_impl", ops.resolve_pointwise_impl),
                         ("standard_impl", ops.resolve_standard_impl)):
    _check_impl(resolve, config.model[field], "config.model.")
  for impl in standard_impls:
    _check_impl(ops.resolve_standard_impl, impl, "--standard_impls: ")


def _check_impl(resolve: Callable[[str], str], impl: str, where: str) -> None:
  try:
    resolve(impl)
  except errors.ConfigError as error:
    raise errors.ConfigError(f"{where}{error}") from None
