"""`python -m tools.benchmark`: see the package's docstring."""
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

from mobilenet import allocator, cli, devices, errors, ops
from tools.benchmark.lanes_comparison import child_flags, compare_lanes
from tools.benchmark.measure import check_config, measure, peak_rss_bytes
from tools.benchmark.models import import_torch, benchmark_config
from tools.benchmark.op_timings import OPS_SHAPE, jax_op_timings, torch_op_timings
from tools.benchmark.text import print_lanes, print_text
from mobilenet.devices import load_average


config_flags.DEFINE_config_file("config", "configs/dws.py", "Config file (configs/*.py[:args]).")


flags.DEFINE_integer("batch", 32, "Images per step.")


flags.DEFINE_integer("resolution", 0, "Input size in pixels; 0: config.data.resolution.")


flags.DEFINE_integer("steps", 10, "Timed steps per round, after the warm-up.")


flags.DEFINE_integer("rounds", 3, "Rounds of timed steps, alternating JAX and PyTorch.")


flags.DEFINE_integer("warmup", 2, "Untimed steps before timing (after compilation).")


flags.DEFINE_bool("ops", False, "Also time single ops: every depthwise implementation, 1x1 conv "
                  "vs matmul, standard 3x3 conv vs matmul_grad.")


flags.DEFINE_bool("torch", False, "Also run the same architecture in PyTorch (CPU, channels_last).")


flags.DEFINE_bool("json", False, "Print one JSON object instead of the text report.")


flags.DEFINE_list("variants", [], "Model variants to measure in this run (e.g. dws,conv); "
                  "default: config.model.variant. Other fields come from the config.")


flags.DEFINE_list("standard_impls", [], "Also time the training step with each of these "
                  "model.standard_impl choices (e.g. conv,matmul_grad), per variant, in the "
                  "same alternating rounds.")


flags.DEFINE_bool("ynn_convolutions", False, "Also time the training step compiled with "
                  "jaxlib's default of handing convolutions to YNNPACK (training keeps them "
                  "with XLA: mobilenet.ops.compiler_options), in the same alternating rounds.")


flags.DEFINE_bool("memory_scheduler", False, "Also time the training step compiled with XLA's "
                  "memory-optimized scheduler, in the same alternating rounds, with both "
                  "steps' temporaries.")


flags.DEFINE_integer("lanes", 1, "N > 1: this benchmark once on every core, then N copies at "
                     "once, each pinned to its share of the cores; their training images/s "
                     "in all against the single run's.")


FLAGS = flags.FLAGS


def run(config: ml_collections.ConfigDict, allocator_decision: allocator.Decision | None = None
        ) -> dict[str, Any]:
  batch, steps, rounds = FLAGS.batch, FLAGS.steps, FLAGS.rounds
  resolution = FLAGS.resolution or config.data.resolution
  variants = FLAGS.variants or [config.model.variant]
  for name, value, least in (("batch", batch, 1), ("steps", steps, 1), ("rounds", rounds, 1),
                             ("resolution", resolution, 32), ("warmup", FLAGS.warmup, 0)):
    if value < least:
      raise errors.ConfigError(f"--{name} must be >= {least}; got {value}")
  standard_impls = list(dict.fromkeys(FLAGS.standard_impls))
  check_config(config, variants, standard_impls)
  config = benchmark_config(config, batch, resolution)
  if FLAGS.torch:
    import_torch()
  threads = devices.usable_cores()
  report = {
      "device": devices.description(),
      "jax": jax.__version__,
      "threads": threads,
      "load_average_start": load_average(),
      "variant": variants[0],
      "alpha": config.model.alpha,
      "batch": batch,
      "resolution": resolution,
      "dtype": config.model.dtype,
      "optimizer": config.optimizer.name,
      # Which implementation the config's choice (often "auto") stands for on this backend.
      "depthwise_impl_config": config.model.depthwise_impl,
      "depthwise_impl": ops.resolve_depthwise_impl(config.model.depthwise_impl),
      "pointwise_impl_config": config.model.pointwise_impl,
      "pointwise_impl": ops.resolve_pointwise_impl(config.model.pointwise_impl),
      "standard_impl_config": config.model.standard_impl,
      "standard_impl": ops.resolve_standard_impl(config.model.standard_impl),
      "allocator": allocator_decision.allocator if allocator_decision else "unknown",
      "allocator_log": allocator.log_line(allocator_decision) if allocator_decision else "",
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "compiler_options": ops.compiler_options(),
  }
  if FLAGS.torch:
    report["torch"] = import_torch().__version__
  results = measure(config, variants, steps, rounds, FLAGS.warmup, FLAGS.torch, threads,
                    standard_impls, FLAGS.ynn_convolutions, FLAGS.memory_scheduler)
  report.update(results[variants[0]])
  if len(variants) > 1:
    report["variants"] = results
  if FLAGS.ops:
    dtype = jnp.dtype(config.model.dtype)
    report["ops_shape"] = [batch, *OPS_SHAPE]
    report["ops"], skipped = jax_op_timings(batch, dtype)
    if skipped:
      report["ops_skipped"] = skipped
    if FLAGS.torch:
      report["ops"].update(torch_op_timings(batch, threads, config.model.dtype == "bfloat16"))
  report["load_average_end"] = load_average()
  report["peak_rss_bytes"] = peak_rss_bytes()
  return report


def main(_):
  if FLAGS.lanes != 1:
    report, show = _measure_lanes(), print_lanes
  else:
    decision = allocator.use_fast_allocator()  # re-executes once where tcmalloc is installed
    report, show = run(FLAGS.config, decision), print_text
  if FLAGS.json:
    print(json.dumps(report))
  else:
    show(report)


def _measure_lanes() -> dict[str, Any]:
  if (FLAGS.torch or FLAGS.ops or len(FLAGS.variants) > 1 or FLAGS.standard_impls
      or FLAGS.ynn_convolutions or FLAGS.memory_scheduler):
    raise errors.UserError("--lanes times the JAX training step of one variant: leave out "
                           "--torch, --ops, --standard_impls, --ynn_convolutions, "
                           "--memory_scheduler and a list of --variants")
  child = [sys.executable, "-m", "tools.benchmark", "--json", *child_flags(sys.argv[1:])]
  return compare_lanes(child, FLAGS.lanes)


if __name__ == "__main__":
  cli.run(main)
