"""Training-step and inference images/s of a config on this device, optionally against PyTorch.

  python -m mobilenet.benchmark --config=configs/dws.py [--batch 32] [--resolution 128]
      [--steps N] [--ops] [--torch] [--json] [--variants=dws,conv]

The training step is what training runs: forward in train mode (BatchNorm batch
statistics, dropout), softmax cross-entropy, backward and an optax SGD-momentum
update, jitted with the state donated. Compile time is reported apart and the
timed steps follow a warm-up. Other jobs on a shared machine skew absolute
numbers, so JAX and PyTorch (and the variants) are timed in alternating rounds
and compared by their medians: ratios from one run are the figures to trust.
"""
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from mobilenet import host_memory, model, ops, train_lib

config_flags.DEFINE_config_file("config", "configs/dws.py", "Config file (configs/*.py[:args]).")
flags.DEFINE_integer("batch", 32, "Images per step.")
flags.DEFINE_integer("resolution", 0, "Input size in pixels; 0: config.data.resolution.")
flags.DEFINE_integer("steps", 10, "Timed steps per round, after the warm-up.")
flags.DEFINE_integer("rounds", 3, "Rounds of timed steps, alternating JAX and PyTorch.")
flags.DEFINE_integer("warmup", 2, "Untimed steps before timing (after compilation).")
flags.DEFINE_bool("ops", False, "Also time single ops: depthwise grouped vs shifted, 1x1 conv vs "
                  "matmul, standard 3x3 conv vs matmul_grad.")
flags.DEFINE_bool("torch", False, "Also run the same architecture in PyTorch (CPU, channels_last).")
flags.DEFINE_bool("json", False, "Print one JSON object instead of the text report.")
flags.DEFINE_list("variants", [], "Model variants to measure in this run (e.g. dws,conv); "
                  "default: config.model.variant. Other fields come from the config.")
flags.DEFINE_bool("reuse_memory", False, "Restart under glibc malloc settings that reuse freed "
                  "buffers (mobilenet.host_memory; train.py's opt-in, not its default).")
FLAGS = flags.FLAGS

OPS_SHAPE = (56, 56, 128)  # the per-op shape: batch x 56 x 56 x 128


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


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _device_description() -> str:
  device = jax.devices()[0]
  if device.platform != "cpu":
    return f"{device.platform}: {device.device_kind} x{jax.device_count()}"
  name = platform.processor() or "cpu"
  flags_seen = set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
          flags_seen = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags_seen]
  return f"cpu: {name}, {_cores()} cores ({', '.join(isa) or 'no AVX2'})"


# ----------------------------------------------------------------------------
# JAX.


class JaxModel:
  """The jitted, compiled training step and inference of one model, with their inputs."""

  def __init__(self, net: model.MobileNet, batch: int, resolution: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.images = jnp.asarray(rng.standard_normal((batch, resolution, resolution, 3),
                                                  dtype=np.float32)).astype(net.dtype)
    self.labels = jnp.asarray(rng.integers(0, net.num_classes, batch), jnp.int32)
    self.dropout_key = jax.random.key(seed + 1)
    variables = jax.jit(lambda: net.init(jax.random.key(seed), self.images[:1]))()
    self.tx = optax.sgd(learning_rate=0.01, momentum=0.9)
    self.state = (variables["params"], variables["batch_stats"],
                  self.tx.init(variables["params"]))
    self.net = net

    start = time.perf_counter()
    self.train_step = jax.jit(self._train_step, donate_argnums=0).lower(
        self.state, self.images, self.labels, self.dropout_key).compile()
    self.compile_s = time.perf_counter() - start
    start = time.perf_counter()
    self.infer = jax.jit(lambda v, x: net.apply(v, x, train=False)).lower(
        self._variables(), self.images).compile()
    self.infer_compile_s = time.perf_counter() - start

  def _train_step(self, state, images, labels, dropout_key):
    params, batch_stats, opt_state = state

    def loss_fn(params):
      logits, updates = self.net.apply(
          {"params": params, "batch_stats": batch_stats}, images, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = self.tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  def train(self) -> None:
    self.state, loss = self.train_step(self.state, self.images, self.labels, self.dropout_key)
    jax.block_until_ready((self.state, loss))

  def _variables(self):
    # The training step donates the state, so inference reads the current one.
    params, batch_stats, _ = self.state
    return {"params": params, "batch_stats": batch_stats}

  def predict(self) -> None:
    jax.block_until_ready(self.infer(self._variables(), self.images))


# ----------------------------------------------------------------------------
# PyTorch: the same layers, channels_last, float32 (or CPU autocast for bfloat16).


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError("--torch needs PyTorch, which is not installed (it is not a project "
                     "dependency: `pip install torch` to compare against it)") from None
  return torch


class TorchModel:
  """The architecture of `model.architecture()` in PyTorch, with its training step and inference.

  PyTorch pads 3x3 convolutions symmetrically, TF-style 'SAME' pads stride-2
  layers 0 before and 1 after: the output sizes and the work are the same.
  """

  def __init__(self, config: ml_collections.ConfigDict, variant: str, batch: int,
               resolution: int, threads: int, seed: int = 0):
    torch = self.torch = _import_torch()
    nn = torch.nn
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    m = config.model
    *convs, classifier = model.architecture(variant, m.alpha, m.num_classes)
    layers = []
    for layer in convs:
      layers += [
          nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                    padding=layer.kernel_size // 2, groups=layer.groups, bias=False),
          nn.BatchNorm2d(layer.out_channels, eps=m.bn_epsilon, momentum=1.0 - m.bn_momentum),
          nn.ReLU(inplace=True),
      ]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(m.dropout_rate),
               nn.Linear(classifier.in_channels, classifier.out_channels)]
    self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)
    self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
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
    loss = self.torch.nn.functional.cross_entropy(logits.float(), self.labels)
    loss.backward()
    self.optimizer.step()

  def predict(self) -> None:
    self.net.eval()
    with self.torch.inference_mode(), self._autocast():
      self.net(self.images)


# ----------------------------------------------------------------------------
# Per-op timings.


def _jax_op_timings(batch: int, dtype) -> dict[str, float]:
  height, width, channels = OPS_SHAPE
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, height, width, channels), np.float32), dtype)
  depthwise_kernel = jnp.asarray(rng.standard_normal((3, 3, 1, channels), np.float32), dtype)
  pointwise_kernel = jnp.asarray(rng.standard_normal((1, 1, channels, channels), np.float32),
                                 dtype)
  standard_kernel = jnp.asarray(rng.standard_normal((3, 3, channels, channels), np.float32), dtype)
  numbers = ("NHWC", "HWIO", "NHWC")
  timings = {}
  cases = [("depthwise_s1", "grouped", ops.depthwise_conv_fn("grouped"), depthwise_kernel, 1),
           ("depthwise_s1", "shifted", ops.depthwise_conv_fn("shifted"), depthwise_kernel, 1),
           ("depthwise_s2", "grouped", ops.depthwise_conv_fn("grouped"), depthwise_kernel, 2),
           ("depthwise_s2", "shifted", ops.depthwise_conv_fn("shifted"), depthwise_kernel, 2),
           ("pointwise", "conv", ops.pointwise_conv_fn("conv"), pointwise_kernel, 1),
           ("pointwise", "matmul", ops.pointwise_conv_fn("matmul"), pointwise_kernel, 1),
           ("standard_s1", "conv", ops.standard_conv_fn("conv"), standard_kernel, 1),
           ("standard_s1", "matmul_grad", ops.standard_conv_fn("matmul_grad"), standard_kernel, 1)]
  for op, impl, conv, kernel, stride in cases:
    groups = channels if op.startswith("depthwise") else 1
    apply = lambda x, k, conv=conv, stride=stride, groups=groups: conv(
        x, k, (stride, stride), "SAME", dimension_numbers=numbers, feature_group_count=groups)
    cotangent = jnp.ones(jax.eval_shape(apply, x, kernel).shape, dtype)
    forward = jax.jit(apply)
    backward = jax.jit(jax.grad(
        lambda x, k, apply=apply, cotangent=cotangent: jnp.sum(
            (apply(x, k) * cotangent).astype(jnp.float32)), argnums=(0, 1)))
    timings[f"{op}_{impl}_fwd_ms"] = _time_op(
        lambda forward=forward: jax.block_until_ready(forward(x, kernel)))
    timings[f"{op}_{impl}_fwd_bwd_ms"] = _time_op(
        lambda backward=backward: jax.block_until_ready(backward(x, kernel)))
  return timings


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


def measure(config: ml_collections.ConfigDict, variants: list[str], batch: int,
            resolution: int, steps: int, rounds: int, warmup: int, with_torch: bool,
            threads: int) -> dict[str, dict[str, Any]]:
  """Images/s per variant (and framework), from alternating rounds of timed steps."""
  runners = {}
  for variant in variants:
    jax_model = JaxModel(train_lib.build_model(config, variant), batch, resolution, config.seed)
    runners[variant, "jax"] = jax_model
    if with_torch:
      runners[variant, "torch"] = TorchModel(config, variant, batch, resolution, threads,
                                             config.seed)
  for runner in runners.values():
    _timed_calls(runner.train, warmup)
    _timed_calls(runner.predict, warmup)
  train_seconds = {key: [] for key in runners}
  infer_seconds = {key: [] for key in runners}
  train_cpu = {key: [] for key in runners}
  for _ in range(rounds):
    for key, runner in runners.items():
      train_seconds[key] += _timed_calls(runner.train, steps, train_cpu[key])
    for key, runner in runners.items():
      infer_seconds[key] += _timed_calls(runner.predict, steps)

  results = {}
  for variant in variants:
    jax_model = runners[variant, "jax"]
    train = train_seconds[variant, "jax"]
    result = {
        "train_images_per_s": _median_rate(train, batch),
        "infer_images_per_s": _median_rate(infer_seconds[variant, "jax"], batch),
        "compile_s": jax_model.compile_s,
        "infer_compile_s": jax_model.infer_compile_s,
        "train_step_ms": {"median": 1e3 * statistics.median(train), "min": 1e3 * min(train),
                          "max": 1e3 * max(train)},
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
    results[variant] = result
  return results


def check_config(config: ml_collections.ConfigDict, variants: list[str]) -> None:
  """One-line ValueErrors naming the bad field, before anything compiles."""
  for variant in variants:
    try:
      model.check_hyperparameters(variant, config.model.alpha)
    except ValueError as error:
      raise ValueError(f"config.model.{error}") from None
  if config.model.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.model.dtype must be float32 or bfloat16; got {config.model.dtype!r}")
  for field, resolve in (("depthwise_impl", ops.resolve_depthwise_impl),
                         ("pointwise_impl", ops.resolve_pointwise_impl),
                         ("standard_impl", ops.resolve_standard_impl)):
    try:
      resolve(config.model[field])
    except ValueError as error:
      raise ValueError(f"config.model.{error}") from None


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  batch, steps, rounds = FLAGS.batch, FLAGS.steps, FLAGS.rounds
  resolution = FLAGS.resolution or config.data.resolution
  variants = FLAGS.variants or [config.model.variant]
  for name, value, least in (("batch", batch, 1), ("steps", steps, 1), ("rounds", rounds, 1),
                             ("resolution", resolution, 32), ("warmup", FLAGS.warmup, 0)):
    if value < least:
      raise ValueError(f"--{name} must be >= {least}; got {value}")
  check_config(config, variants)
  if FLAGS.torch:
    _import_torch()
  threads = _cores()
  report = {
      "device": _device_description(),
      "jax": jax.__version__,
      "threads": threads,
      "load_average_start": _load_average(),
      "variant": variants[0],
      "alpha": config.model.alpha,
      "batch": batch,
      "resolution": resolution,
      "dtype": config.model.dtype,
      "depthwise_impl": ops.resolve_depthwise_impl(config.model.depthwise_impl),
      "pointwise_impl": ops.resolve_pointwise_impl(config.model.pointwise_impl),
      "standard_impl": ops.resolve_standard_impl(config.model.standard_impl),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if FLAGS.torch:
    report["torch"] = _import_torch().__version__
  results = measure(config, variants, batch, resolution, steps, rounds, FLAGS.warmup,
                    FLAGS.torch, threads)
  report.update(results[variants[0]])
  if len(variants) > 1:
    report["variants"] = results
  if FLAGS.ops:
    dtype = jnp.dtype(config.model.dtype)
    report["ops_shape"] = [batch, *OPS_SHAPE]
    report["ops"] = _jax_op_timings(batch, dtype)
    if FLAGS.torch:
      report["ops"].update(_torch_op_timings(batch, threads, config.model.dtype == "bfloat16"))
  report["load_average_end"] = _load_average()
  return report


def _print_text(report: dict[str, Any]) -> None:
  print(f"device: {report['device']}; jax {report['jax']}"
        + (f", torch {report['torch']}" if "torch" in report else "")
        + f"; {report['threads']} threads; load average {report['load_average_start']} -> "
        f"{report['load_average_end']}")
  print(f"model: alpha={report['alpha']} {report['resolution']} px, batch {report['batch']}, "
        f"{report['dtype']}, depthwise={report['depthwise_impl']}, "
        f"pointwise={report['pointwise_impl']}, standard={report['standard_impl']}"
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
      for impl in ("grouped", "shifted", "conv", "matmul", "matmul_grad", "torch"):
        if f"{op}_{impl}_fwd_ms" in timings:
          parts.append(f"{impl} {timings[f'{op}_{impl}_fwd_ms']:.1f} / "
                       f"{timings[f'{op}_{impl}_fwd_bwd_ms']:.1f}")
      print(f"  {op:13s} " + "   ".join(parts))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.reuse_memory:
    host_memory.restart_with_reused_memory()
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    report = run(FLAGS.config)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  if FLAGS.json:
    print(json.dumps(report))
  else:
    _print_text(report)


if __name__ == "__main__":
  app.run(main)
