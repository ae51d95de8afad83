"""Training-step and inference images/s of a config on this device, optionally against PyTorch.

  python -m tools.benchmark --config=configs/dws.py [--batch 32] [--resolution 128]
      [--steps N] [--ops] [--torch] [--json] [--variants=dws,conv] [--lanes N]
      [--standard_impls=conv,matmul_grad]

The training step timed is the one train.py runs: `steps.build(config, mesh).train`, with the
state, optimizer and schedule built by the same function as the trainer's (loss with the
config's label smoothing, weight decay, EMA, the finite-state check), on one batch kept on the
device. The PyTorch twin uses the same optimizer (SGD, Nesterov momentum, L2
weight decay on the same kernels) and loss. Compile time is reported apart and the timed steps
follow a warm-up. Other jobs on a shared machine skew absolute numbers, so JAX and PyTorch
(and the variants) are timed in alternating rounds and compared by their medians: ratios from
one run are the figures to trust. Like train.py, it runs under tcmalloc where installed
(mobilenet.allocator; MOBILENET_ALLOCATOR=system for glibc's malloc).

`--standard_impls` times the whole training step once more per listed `model.standard_impl`,
in the same alternating rounds: which of the two is faster depends on the CPU and the layer
shapes, and the single-op rows of `--ops` do not settle it for a whole model.

`--lanes N` asks what `sweep --lanes N` buys: it runs this benchmark once on every core, then
N copies at once, each pinned to its share of the cores (tools.lanes), and compares their
training images/s in all with the single run's.
"""
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from mobilenet import allocator, cli, devices, errors, model, ops, optim, steps
from tools import lanes

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
flags.DEFINE_integer("lanes", 1, "N > 1: this benchmark once on every core, then N copies at "
                     "once, each pinned to its share of the cores; their training images/s "
                     "in all against the single run's.")
FLAGS = flags.FLAGS

OPS_SHAPE = (56, 56, 128)  # the per-op shape: batch x 56 x 56 x 128
# The learning-rate schedule spans config.train.num_epochs of Imagenette's train split, as in
# training; only the learning rate's value depends on it, not the step's work.
SCHEDULE_EXAMPLES = 9469


# ----------------------------------------------------------------------------
# Timing.


def _timed_calls(fn: Callable[[], Any], count: int, cpu_seconds: list | None = None) -> list[float]:
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


def _time_op(fn: Callable[[], Any], min_seconds: float = 0.3, max_calls: int = 20) -> float:
  """Median milliseconds per call, after one warm-up call."""
  fn()
  seconds = [sum(_timed_calls(fn, 1))]
  while sum(seconds) < min_seconds and len(seconds) < max_calls:
    seconds += _timed_calls(fn, 1)
  return 1e3 * statistics.median(seconds)


def _load_average() -> list[float]:
  try:
    return [round(value, 2) for value in os.getloadavg()]
  except OSError:
    return []


# ----------------------------------------------------------------------------
# JAX.


def benchmark_config(config: ml_collections.ConfigDict, batch: int,
                     resolution: int) -> ml_collections.ConfigDict:
  """The config with the benchmark's batch and resolution, as training would read them."""
  config = config.copy_and_resolve_references()
  config.train.global_batch_size = batch
  config.data.resolution = resolution
  return config


class JaxModel:
  """train.py's jitted, compiled training step and the inference of one model, with one batch.

  The optimizer, schedule and state come from steps.build, as the trainer's do, so the step
  timed is the step training runs.
  """

  def __init__(self, config: ml_collections.ConfigDict, variant: str):
    config = config.copy_and_resolve_references()
    config.model.variant = variant
    batch, resolution = config.train.global_batch_size, config.data.resolution
    steps_per_epoch, total_steps = optim.steps_for(SCHEDULE_EXAMPLES, batch,
                                                   config.train.num_epochs)
    training = steps.build(config, devices.device_mesh(), steps_per_epoch=steps_per_epoch,
                           total_steps=total_steps)
    net = training.evaluation.net
    self.state = training.init()
    rng = np.random.default_rng(config.seed)
    self.batch = training.evaluation.global_batch({
        "image": rng.standard_normal((batch, resolution, resolution, 3), np.float32).astype(
            jnp.dtype(config.data.image_dtype)),
        "label": rng.integers(0, net.num_classes, batch, dtype=np.int32)})

    start = time.perf_counter()
    self.train_step = training.train.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    start = time.perf_counter()
    # As evaluation.measure_inference_speed: the weights evaluation uses.
    self.infer = jax.jit(lambda state, images: net.apply(
        {"params": state.ema_params, "batch_stats": state.batch_stats}, images,
        train=False)).lower(self.state, self.batch["image"]).compile()
    self.infer_compile_s = time.perf_counter() - start

  def train(self) -> None:
    # The step donates the state: each call reads the one the previous call returned.
    self.state, step_metrics = self.train_step(self.state, self.batch)
    jax.block_until_ready((self.state, step_metrics))

  def predict(self) -> None:
    jax.block_until_ready(self.infer(self.state, self.batch["image"]))


# ----------------------------------------------------------------------------
# PyTorch: the same layers, channels_last, float32 (or CPU autocast for bfloat16).


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise errors.ConfigError("--torch needs PyTorch, which is not installed (it is not a project "
                     "dependency: `pip install torch` to compare against it)") from None
  return torch


class TorchModel:
  """The architecture of `model.architecture()` in PyTorch, with its training step and inference.

  The network and optimizer are tools.torch_twin's, which the parity runs train: TF-style
  'SAME' padding, Flax's initialisation, SGD with Nesterov momentum (or AdamW) at the config's
  peak learning rate with weight decay on the kernels optim.weight_decay_mask decays, optax's
  gradient clipping; the loss is cross-entropy with the config's label smoothing.
  """

  def __init__(self, config: ml_collections.ConfigDict, variant: str, threads: int):
    torch = self.torch = _import_torch()
    from tools import torch_twin  # pylint: disable=import-outside-toplevel  (needs torch)
    self.twin = torch_twin
    opt = config.optimizer
    torch_twin.check_optimizer(opt)
    torch.manual_seed(config.seed)
    torch.set_num_threads(threads)
    m = config.model
    batch, resolution = config.train.global_batch_size, config.data.resolution
    self.net = torch_twin.build_model(config, variant)
    self.optimizer = torch_twin.create_optimizer(opt, self.net,
                                                 optim.peak_learning_rate(opt, batch))
    self.label_smoothing = opt.label_smoothing
    self.grad_clip_norm = opt.grad_clip_norm
    self.images = torch.randn(batch, 3, resolution, resolution).to(
        memory_format=torch.channels_last)
    self.labels = torch.randint(0, m.num_classes, (batch,))
    self.bfloat16 = m.dtype == "bfloat16"

  def _autocast(self):
    if self.bfloat16:
      return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
    return contextlib.nullcontext()

  def train(self) -> None:
    self.net.train()
    self.optimizer.zero_grad(set_to_none=True)
    with self._autocast():
      logits = self.net(self.images)
    loss = self.torch.nn.functional.cross_entropy(logits.float(), self.labels,
                                                  label_smoothing=self.label_smoothing)
    loss.backward()
    self.twin.clip_by_global_norm(self.net.parameters(), self.grad_clip_norm)
    self.optimizer.step()

  def predict(self) -> None:
    self.net.eval()
    with self.torch.inference_mode(), self._autocast():
      self.net(self.images)


# ----------------------------------------------------------------------------
# Per-op timings.


def depthwise_impls() -> tuple[str, ...]:
  """Every concrete depthwise implementation ops offers ("auto" only names one of them)."""
  return tuple(impl for impl in ops.DEPTHWISE_IMPLS if impl != "auto")


def _jax_op_timings(batch: int, dtype) -> tuple[dict[str, float], dict[str, str]]:
  """(milliseconds per op row, why a row is missing): an implementation that cannot run on
  this machine (say, an FFI kernel that was not built) is skipped with its error."""
  height, width, channels = OPS_SHAPE
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, height, width, channels), np.float32), dtype)
  depthwise_kernel = jnp.asarray(rng.standard_normal((3, 3, 1, channels), np.float32), dtype)
  pointwise_kernel = jnp.asarray(rng.standard_normal((1, 1, channels, channels), np.float32),
                                 dtype)
  standard_kernel = jnp.asarray(rng.standard_normal((3, 3, channels, channels), np.float32), dtype)
  numbers = ("NHWC", "HWIO", "NHWC")
  cases = [(f"depthwise_s{stride}", impl, lambda impl=impl: ops.depthwise_conv_fn(impl),
            depthwise_kernel, stride) for stride in (1, 2) for impl in depthwise_impls()]
  cases += [("pointwise", impl, lambda impl=impl: ops.pointwise_conv_fn(impl), pointwise_kernel, 1)
            for impl in ("conv", "matmul")]
  cases += [("standard_s1", impl, lambda impl=impl: ops.standard_conv_fn(impl), standard_kernel, 1)
            for impl in ("conv", "matmul_grad")]
  timings, skipped = {}, {}
  for op, impl, conv_fn, kernel, stride in cases:
    groups = channels if op.startswith("depthwise") else 1
    try:
      conv = conv_fn()
      apply = lambda x, k, conv=conv, stride=stride, groups=groups: conv(
          x, k, (stride, stride), "SAME", dimension_numbers=numbers, feature_group_count=groups)
      cotangent = jnp.ones(jax.eval_shape(apply, x, kernel).shape, dtype)
      forward = jax.jit(apply)
      backward = jax.jit(jax.grad(
          lambda x, k, apply=apply, cotangent=cotangent: jnp.sum(
              (apply(x, k) * cotangent).astype(jnp.float32)), argnums=(0, 1)))
      jax.block_until_ready((forward(x, kernel), backward(x, kernel)))
    except Exception as error:  # pylint: disable=broad-except  (unavailable here: note, go on)
      skipped[f"{op}_{impl}"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
      continue
    timings[f"{op}_{impl}_fwd_ms"] = _time_op(
        lambda forward=forward: jax.block_until_ready(forward(x, kernel)))
    timings[f"{op}_{impl}_fwd_bwd_ms"] = _time_op(
        lambda backward=backward: jax.block_until_ready(backward(x, kernel)))
  return timings, skipped


def _torch_op_timings(batch: int, threads: int, bfloat16: bool) -> dict[str, float]:
  torch = _import_torch()
  torch.set_num_threads(threads)
  height, width, channels = OPS_SHAPE
  x = torch.randn(batch, channels, height, width).to(memory_format=torch.channels_last)
  autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if bfloat16
              else contextlib.nullcontext())
  timings = {}
  for op, groups, size, stride in [("depthwise_s1", channels, 3, 1),
                                   ("depthwise_s2", channels, 3, 2), ("pointwise", 1, 1, 1),
                                   ("standard_s1", 1, 3, 1)]:
    conv = torch.nn.Conv2d(channels, channels, size, stride, padding=size // 2, groups=groups,
                           bias=False).to(memory_format=torch.channels_last)

    def forward(conv=conv):
      with torch.inference_mode(), autocast:
        conv(x)

    def forward_backward(conv=conv):
      inputs = x.detach().requires_grad_(True)
      with autocast:
        out = conv(inputs)
      out.backward(torch.ones_like(out))

    timings[f"{op}_torch_fwd_ms"] = _time_op(forward)
    timings[f"{op}_torch_fwd_bwd_ms"] = _time_op(forward_backward)
  return timings


# ----------------------------------------------------------------------------
# The run.


def _median_rate(seconds: list[float], batch: int) -> float:
  return batch / statistics.median(seconds)


def measure(config: ml_collections.ConfigDict, variants: list[str], steps: int, rounds: int,
            warmup: int, with_torch: bool, threads: int,
            standard_impls: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
  """Images/s per variant (and framework, and listed standard_impl), from alternating rounds
  of timed steps."""
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
  for key, runner in runners.items():
    _timed_calls(runner.train, warmup)
    if key in inferring:
      _timed_calls(runner.predict, warmup)
  train_seconds = {key: [] for key in runners}
  infer_seconds = {key: [] for key in inferring}
  train_cpu = {key: [] for key in runners}
  for _ in range(rounds):
    for key, runner in runners.items():
      train_seconds[key] += _timed_calls(runner.train, steps, train_cpu[key])
    for key in inferring:
      infer_seconds[key] += _timed_calls(runners[key].predict, steps)

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
    _import_torch()
  threads = devices.usable_cores()
  report = {
      "device": devices.description(),
      "jax": jax.__version__,
      "threads": threads,
      "load_average_start": _load_average(),
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
  }
  if FLAGS.torch:
    report["torch"] = _import_torch().__version__
  results = measure(config, variants, steps, rounds, FLAGS.warmup, FLAGS.torch, threads,
                    standard_impls)
  report.update(results[variants[0]])
  if len(variants) > 1:
    report["variants"] = results
  if FLAGS.ops:
    dtype = jnp.dtype(config.model.dtype)
    report["ops_shape"] = [batch, *OPS_SHAPE]
    report["ops"], skipped = _jax_op_timings(batch, dtype)
    if skipped:
      report["ops_skipped"] = skipped
    if FLAGS.torch:
      report["ops"].update(_torch_op_timings(batch, threads, config.model.dtype == "bfloat16"))
  report["load_average_end"] = _load_average()
  report["peak_rss_bytes"] = peak_rss_bytes()
  return report


def compare_lanes(child_command: list[str], count: int,
                  run_children: Callable[[list[list[str]]], list[dict]] | None = None
                  ) -> dict[str, Any]:
  """The benchmark `child_command` (a --json run) once unpinned, then `count` copies at once,
  each pinned to one of lanes.cpu_sets(count): the training images/s of each and in all."""
  run_children = run_children or _run_at_once
  sets = lanes.cpu_sets(count)
  single, = run_children([child_command])
  in_lanes = run_children([lanes.pinned(child_command, cpus) for cpus in sets])
  total = sum(report["train_images_per_s"] for report in in_lanes)
  return {"one_run": single, "lanes": in_lanes, "lane_cpus": [list(cpus) for cpus in sets],
          "lanes_train_images_per_s": total,
          "lanes_over_one_run": total / single["train_images_per_s"]}


def _run_at_once(commands: list[list[str]]) -> list[dict]:
  """Starts every command, waits for them all; each one's last stdout line, as JSON."""
  processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for command in commands]
  outputs = [process.communicate()[0] for process in processes]
  for command, process in zip(commands, processes):
    if process.returncode:
      raise errors.UserError(f"`{' '.join(command)}` exited {process.returncode}")
  return [json.loads(output.strip().splitlines()[-1]) for output in outputs]


def _print_lanes(report: dict[str, Any]) -> None:
  single = report["one_run"]
  print(f"device: {single['device']}; {single['variant']} alpha={single['alpha']} "
        f"{single['resolution']} px, batch {single['batch']}, {single['dtype']}")
  print(f"one run on {single['threads']} cores: train {single['train_images_per_s']:.1f} img/s")
  rates = " + ".join(f"{lane['train_images_per_s']:.1f}" for lane in report["lanes"])
  print(f"{len(report['lanes'])} lanes at once, cores {report['lane_cpus']}: train {rates} = "
        f"{report['lanes_train_images_per_s']:.1f} img/s ({report['lanes_over_one_run']:.2f}x)")


def _print_text(report: dict[str, Any]) -> None:
  print(f"device: {report['device']}; jax {report['jax']}"
        + (f", torch {report['torch']}" if "torch" in report else "")
        + f"; {report['threads']} threads; load average {report['load_average_start']} -> "
        f"{report['load_average_end']}")
  impls = ", ".join(
      f"{layer}={report[f'{layer}_impl']}"
      + (f" ({report[f'{layer}_impl_config']})"
         if report[f"{layer}_impl_config"] != report[f"{layer}_impl"] else "")
      for layer in ("depthwise", "pointwise", "standard"))
  print(f"model: alpha={report['alpha']} {report['resolution']} px, batch {report['batch']}, "
        f"{report['dtype']}, {report['optimizer']}; {impls}")
  print(f"memory: {report['allocator']} allocator, peak RSS {report['peak_rss_bytes'] / 2**30:.2f} GiB"
        + (f", GLIBC_TUNABLES={report['glibc_tunables']}" if report["glibc_tunables"] else "")
        + (f", XLA_FLAGS={report['xla_flags']}" if report["xla_flags"] else ""))
  results = report.get("variants", {report["variant"]: report})
  for variant, r in results.items():
    step = r["train_step_ms"]
    print(f"{variant:8s} jax   train {r['train_images_per_s']:8.1f} img/s  "
          f"infer {r['infer_images_per_s']:8.1f} img/s  (step median {step['median']:.1f} ms, "
          f"min {step['min']:.1f}, CPU {r['train_step_cpu_ms']:.0f} ms; compile {r['compile_s']:.1f} s train, "
          f"{r['infer_compile_s']:.1f} s infer)")
    if "torch_train_images_per_s" in r:
      print(f"{variant:8s} torch train {r['torch_train_images_per_s']:8.1f} img/s  "
            f"infer {r['torch_infer_images_per_s']:8.1f} img/s  (step CPU {r['torch_train_step_cpu_ms']:.0f} ms)")
      print(f"{variant:8s} jax/torch: train {r['jax_over_torch_train']:.2f}x  "
            f"infer {r['jax_over_torch_infer']:.2f}x")
    impls = r.get("standard_impls", {})
    first, first_timing = next(iter(impls.items()), (None, None))
    for impl, timing in impls.items():
      print(f"{variant:8s} jax   train {timing['train_images_per_s']:8.1f} img/s  with "
            f"standard_impl={impl} ({timing['resolved']}): "
            f"{timing['train_images_per_s'] / first_timing['train_images_per_s']:.2f}x of "
            f"{first}'s  (step median {timing['train_step_ms']['median']:.1f} ms)")
  if "dws" in results and "conv" in results:
    for prefix, name in (("", "jax"), ("torch_", "torch")):
      key = f"{prefix}train_images_per_s"
      if key in results["dws"]:
        print(f"dws/conv training-step speed-up, {name}: "
              f"{results['dws'][key] / results['conv'][key]:.2f}x  (inference "
              f"{results['dws'][f'{prefix}infer_images_per_s'] / results['conv'][f'{prefix}infer_images_per_s']:.2f}x)")
  if "ops" in report:
    timings = report["ops"]
    print(f"ops at {'x'.join(map(str, report['ops_shape']))}, ms fwd / fwd+bwd:")
    for op in ("depthwise_s1", "depthwise_s2", "pointwise", "standard_s1"):
      parts = []
      for key in timings:  # in the order measured: ours, then PyTorch's
        impl = key.removeprefix(f"{op}_").removesuffix("_fwd_ms")
        if key.startswith(f"{op}_") and key.endswith("_fwd_ms"):  # not _fwd_bwd_ms
          parts.append(f"{impl} {timings[key]:.1f} / {timings[f'{op}_{impl}_fwd_bwd_ms']:.1f}")
      print(f"  {op:13s} " + "   ".join(parts))
    for row, why in report.get("ops_skipped", {}).items():
      print(f"  skipped {row}: {why}")


def main(_):
  if FLAGS.lanes != 1:
    measure, print_text = _measure_lanes, _print_lanes
  else:
    decision = allocator.use_fast_allocator()  # re-executes once where tcmalloc is installed
    measure, print_text = (lambda: run(FLAGS.config, decision)), _print_text
  try:
    report = measure()
  except (errors.UserError, lanes.LanesError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  if FLAGS.json:
    print(json.dumps(report))
  else:
    print_text(report)


def _child_flags(argv: list[str]) -> list[str]:
  """This command's flags, less --lanes (and its value) and --json."""
  kept, skip_value = [], False
  for arg in argv:
    if skip_value:
      skip_value = False
    elif arg == "--lanes":
      skip_value = True
    elif not arg.startswith("--lanes=") and arg not in ("--json", "--nojson"):
      kept.append(arg)
  return kept


def _measure_lanes() -> dict[str, Any]:
  if FLAGS.torch or FLAGS.ops or len(FLAGS.variants) > 1 or FLAGS.standard_impls:
    raise errors.UserError("--lanes times the JAX training step of one variant: leave out "
                           "--torch, --ops, --standard_impls and a list of --variants")
  child = [sys.executable, "-m", "tools.benchmark", "--json", *_child_flags(sys.argv[1:])]
  return compare_lanes(child, FLAGS.lanes)


if __name__ == "__main__":
  cli.run(main)
