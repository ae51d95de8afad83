"""Exports a trained run to LiteRT (TensorFlow Lite) and measures it with the mobile runtime.

    python -m tools.export --workdir=W [--int8] [--threads N] [--data_folder DIR]
    python -m tools.export --latency-table --out results/latency [--resolutions 224,128]

The first form restores the latest checkpoint of W (its EMA weights and BatchNorm statistics,
with the model config saved in the checkpoint), writes W/export/model_fp32.tflite (and with
--int8 a full-integer model_int8.tflite, calibrated on training images), checks the fp32 graph
against the Flax forward pass on validation images, measures batch-1 latency with the LiteRT
interpreter and its XNNPACK delegate, evaluates the int8 model on the whole evaluation split,
and merges the figures into W/eval_results.json (every key already there is kept).

The second form measures untrained copies of every model of the paper's Tables 4 to 7, fp32 and
int8, in alternating rounds of one process, and writes latency.json and latency.md.

The model is rebuilt with the library convolutions (grouped depthwise, lax 1x1 and 3x3): this
project's CPU training implementations compute the same function, but export as hundreds of
MUL/ADD/SLICE ops that XNNPACK splits into several partitions, which the graph check refuses.
"""
import collections
import json
import math
import os
import statistics
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence

from absl import flags  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import base
from mobilenet import checkpoints, costs, devices, errors, evaluation, model, results
from mobilenet.input import Dataset

EXPORT_SUBDIRECTORY = "export"
FP32_FILENAME = "model_fp32.tflite"
INT8_FILENAME = "model_int8.tflite"
# The convolutions that LiteRT has builtin kernels for: each layer becomes one CONV_2D or
# DEPTHWISE_CONV_2D op, and BatchNorm folds into it.
EXPORT_IMPLS = dict(depthwise_impl="grouped", pointwise_impl="conv", standard_impl="conv")
DELEGATE_OP_NAME = "DELEGATE"  # what the interpreter calls a node that a delegate took over
CUSTOM_OPCODE = 32  # BuiltinOperator.CUSTOM in the TFLite schema: Flex and custom ops


class ExportError(errors.UserError, ValueError):
  """A graph the mobile runtime would not run as one XNNPACK partition of builtin ops."""


# ---------------------------------------------------------------- conversion

def inference_fn(net: model.MobileNet, variables) -> Callable:
  """images -> logits in inference mode (BatchNorm uses its statistics and folds; no dropout)."""
  return lambda images: net.apply(variables, images, train=False)


def _tf_function(fn: Callable, resolution: int):
  """The JAX function as a TensorFlow function of one static batch-1 input; the weights are
  closed over, so they become constants of the graph."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  converted = jax2tf.convert(fn, with_gradient=False, native_serialization_platforms=("cpu",))
  return tf.function(converted, autograph=False,
                     input_signature=[tf.TensorSpec((1, resolution, resolution, 3), tf.float32)])


def convert(fn: Callable, resolution: int, *,
            calibration_images: Optional[Callable[[], Iterable[np.ndarray]]] = None) -> bytes:
  """A .tflite flatbuffer of fn; with calibration_images, full-integer int8 (int8 input and
  output too), its activation ranges measured on those images (each [1, R, R, 3] float32)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  function = _tf_function(fn, resolution)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()], function)
  if calibration_images is None:
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  else:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image] for image in calibration_images())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
  return converter.convert()


# ---------------------------------------------------------------- graph check

def operator_counts(model_bytes: bytes) -> collections.Counter:
  """Op name -> count over every subgraph, read from the flatbuffer's operator codes; a custom
  or Flex op is named by its custom code (e.g. "FlexErfinv")."""
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
  names = {code: name for name, code in vars(schema.BuiltinOperator).items()
           if not name.startswith("_")}
  flatbuffer = schema.Model.GetRootAsModel(model_bytes, 0)
  opcode_names = []
  for index in range(flatbuffer.OperatorCodesLength()):
    opcode = flatbuffer.OperatorCodes(index)
    # Codes below 127 live in the deprecated int8 field; the newer field holds all of them.
    code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
    if code == CUSTOM_OPCODE:
      custom = opcode.CustomCode()
      opcode_names.append("custom:" + (custom.decode() if custom else "?"))
    else:
      opcode_names.append(names.get(code, f"builtin:{code}"))
  counts = collections.Counter()
  for subgraph_index in range(flatbuffer.SubgraphsLength()):
    subgraph = flatbuffer.Subgraphs(subgraph_index)
    for op_index in range(subgraph.OperatorsLength()):
      counts[opcode_names[subgraph.Operators(op_index).OpcodeIndex()]] += 1
  return counts


def interpreter(model_bytes: bytes, num_threads: int = 1):
  """The LiteRT interpreter with its default XNNPACK delegate, tensors allocated."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  runtime = Interpreter(model_content=model_bytes, num_threads=num_threads)
  runtime.allocate_tensors()
  return runtime


def check_graph(model_bytes: bytes, name: str) -> dict:
  """Raises ExportError (one line, naming the model) unless every op is a builtin and XNNPACK
  takes the whole graph as one partition; returns what it saw.

  Non-builtin ops are read from the flatbuffer before any interpreter exists (one without the
  Flex delegate could not even load them). Partitions are the interpreter's DELEGATE nodes;
  one partition covers the whole graph when it reads the model's input and writes its output.
  """
  counts = operator_counts(model_bytes)
  custom = sorted(op for op in counts if op.startswith("custom:"))
  if custom:
    raise ExportError(f"{name}: {sum(counts[op] for op in custom)} non-builtin op(s) "
                      f"({', '.join(op.removeprefix('custom:') for op in custom)}); the mobile "
                      "runtime needs TFLITE_BUILTINS only")
  runtime = interpreter(model_bytes)
  nodes = runtime._get_ops_details()  # pylint: disable=protected-access  (the only view of nodes)
  partitions = [node for node in nodes if node["op_name"] == DELEGATE_OP_NAME]
  model_inputs = {detail["index"] for detail in runtime.get_input_details()}
  model_outputs = {detail["index"] for detail in runtime.get_output_details()}
  whole = (len(partitions) == 1 and model_inputs <= set(partitions[0]["inputs"])
           and model_outputs == set(partitions[0]["outputs"]))
  if not whole:
    summary = ", ".join(f"{count} {op}" for op, count in counts.most_common(4))
    raise ExportError(
        f"{name}: XNNPACK runs it as {len(partitions)} delegate partitions, not one over the "
        f"whole graph ({sum(counts.values())} ops: {summary}, ...); export with the library "
        "convolutions (depthwise_impl=grouped, pointwise_impl=conv, standard_impl=conv)")
  return {"ops": dict(counts), "num_ops": sum(counts.values()), "partitions": len(partitions)}


# ---------------------------------------------------------------- running and timing

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


def load_average() -> list[float]:
  return [round(value, 2) for value in os.getloadavg()]


# ---------------------------------------------------------------- a trained run

def config_from_checkpoint(workdir: str, step: Optional[int] = None,
                           data_folder: Optional[str] = None
                           ) -> tuple[ml_collections.ConfigDict, int]:
  """The config a checkpoint was saved with (the latest by default), and its step.

  The same role as the config of model.from_config, read from the checkpoint itself so that the
  export cannot disagree with the weights; data_folder replaces where the images were."""
  saved, step = checkpoints.read_trained_config(workdir, step)
  config = ml_collections.ConfigDict(saved)
  if data_folder:
    config.data.folder = data_folder
  return config, step


def export_model(model_config: ml_collections.ConfigDict) -> model.MobileNet:
  """The model of `model_config` with the library convolutions, computing in float32."""
  exported = ml_collections.ConfigDict(model_config.to_dict())
  exported.update(dtype="float32", **EXPORT_IMPLS)
  return model.from_config(exported)


def restore_variables(config: ml_collections.ConfigDict, workdir: str, step: int) -> dict:
  """{'params': the EMA weights, 'batch_stats': ...} of the checkpoint of `step`."""
  with checkpoints.Checkpointer(workdir, read_only=True) as checkpointer:
    _, variables = evaluation.restore_variables(config, checkpointer, step, devices.device_mesh())
  return jax.device_get({"params": variables["ema_params"],
                         "batch_stats": variables["batch_stats"]})


def float32_dataset(data_config, **changes) -> Dataset:
  """The Dataset of data_config (with `changes`) in float32, what the models take."""
  data_config = ml_collections.ConfigDict(data_config.to_dict())
  data_config.update(image_dtype="float32", **changes)
  return Dataset(data_config)


def calibration_images(dataset: Dataset, count: int, seed: int = 0) -> Callable[[], Iterator]:
  """`count` training images (the train pipeline's crops, never validation images), one at a
  time, for the int8 converter's activation ranges."""
  batch_size = min(64, count)

  def images():
    batches = dataset.train_batches(global_batch_size=batch_size, seed=seed)
    produced = 0
    while produced < count:
      for image in next(batches)["image"][:count - produced]:
        produced += 1
        yield image[None].astype(np.float32)
  return images


def eval_images(dataset: Dataset, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """(image, label) for every example of the evaluation split once, padding dropped."""
  for batch in dataset.eval_batches(global_batch_size=batch_size):
    for image, label, real in zip(batch["image"], batch["label"], batch["mask"]):
      if real:
        yield image, int(label)


def export_run(workdir: str, *, int8: bool = False, threads: Sequence[int] = (1,),
               calibration_count: int = 300, check_count: int = 200, latency_runs: int = 50,
               data_folder: Optional[str] = None, print_fn=print) -> dict:
  """Exports, checks, times and evaluates the run in `workdir`; returns the merged figures."""
  config, step = config_from_checkpoint(workdir, data_folder=data_folder)
  resolution = config.data.resolution
  # Made first, so that TensorFlow leaves the accelerators to JAX before the conversion starts it.
  eval_data = float32_dataset(config.data)
  # A few hundred images: no need to decode the whole split.
  calibration_data = float32_dataset(config.data, cache=False) if int8 else None
  net = export_model(config.model)
  variables = restore_variables(config, workdir, step)
  forward = jax.jit(inference_fn(net, variables))
  out_dir = os.path.join(workdir, EXPORT_SUBDIRECTORY)
  os.makedirs(out_dir, exist_ok=True)

  fp32_bytes = convert(inference_fn(net, variables), resolution)
  with open(os.path.join(out_dir, FP32_FILENAME), "wb") as out:
    out.write(fp32_bytes)
  graph = check_graph(fp32_bytes, FP32_FILENAME)
  print_fn(f"{FP32_FILENAME}: {len(fp32_bytes) / 1e6:.1f} MB, {graph['num_ops']} builtin ops, "
           f"one XNNPACK partition")
  models = {"fp32": fp32_bytes}
  if int8:
    int8_bytes = convert(inference_fn(net, variables), resolution,
                         calibration_images=calibration_images(calibration_data, calibration_count,
                                                               config.seed))
    with open(os.path.join(out_dir, INT8_FILENAME), "wb") as out:
      out.write(int8_bytes)
    check_graph(int8_bytes, INT8_FILENAME)
    print_fn(f"{INT8_FILENAME}: {len(int8_bytes) / 1e6:.1f} MB, calibrated on "
             f"{calibration_count} training images, one XNNPACK partition")
    models["int8"] = int8_bytes
  runners = {kind: Runner(content) for kind, content in models.items()}

  # One pass over the evaluation split: the int8 model on every image, the fp32 model and the
  # Flax forward pass on `check_count` images spread evenly over it.
  num_eval = eval_data.num_eval_batches(1)  # one example a batch
  check_every = max(1, num_eval // max(check_count, 1))
  errors, agree, checked, int8_correct, int8_agree, seen = [], 0, 0, 0, 0, 0
  first_image = None
  for position, (image, label) in enumerate(eval_images(eval_data, config.train.eval_batch_size)):
    seen += 1
    first_image = image if first_image is None else first_image
    if "int8" in runners:
      int8_correct += int(np.argmax(runners["int8"].logits(image)) == label)
    if position % check_every == 0 and checked < check_count:
      reference = np.asarray(forward(image[None]))[0]
      exported = runners["fp32"].logits(image)
      errors.append(float(np.max(np.abs(exported - reference)) / np.max(np.abs(reference))))
      agree += int(np.argmax(exported) == np.argmax(reference))
      if "int8" in runners:
        int8_agree += int(np.argmax(runners["int8"].logits(image)) == np.argmax(reference))
      checked += 1
  figures = {
      "litert_fp32_max_rel_error": max(errors),
      "litert_fp32_top1_agreement": agree / checked,
      "litert_check_images": checked,
      "litert_step": step,
      "litert_ops": graph["num_ops"],
  }
  print_fn(f"fp32 against Flax on {checked} validation images: max relative error of the "
           f"logits {max(errors):.2e}, top-1 agreement {100 * agree / checked:.1f}%")
  if "int8" in runners:
    figures.update(litert_int8_top1=int8_correct / seen, litert_int8_num_examples=seen,
                   litert_int8_top1_agreement=int8_agree / checked,
                   litert_int8_calibration_images=calibration_count)
    print_fn(f"int8 top-1 {100 * int8_correct / seen:.2f}% on {seen} evaluation images; "
             f"agrees with Flax's top-1 on {100 * int8_agree / checked:.1f}% of {checked}")

  latency = {kind: {} for kind in models}
  load_before = load_average()
  for thread_count in threads:
    for kind, content in models.items():
      runner = runners[kind] if thread_count == 1 else Runner(content, thread_count)
      latency[kind][str(thread_count)] = summary = measure_latency(runner, first_image,
                                                                   runs=latency_runs)
      print_fn(f"{kind} latency, {thread_count} thread(s): median {summary['median_ms']:.2f} ms "
               f"(min {summary['min_ms']:.2f}, max {summary['max_ms']:.2f}, IQR "
               f"{summary['q1_ms']:.2f}-{summary['q3_ms']:.2f}) over {summary['runs']} runs")
  figures.update(
      litert_fp32_ms=latency["fp32"]["1"]["median_ms"], litert_threads=list(threads),
      litert_latency=latency, litert_device=cpu_description(),
      litert_load_average=[load_before, load_average()],
      litert_runtime=f"ai-edge-litert {_litert_version()} interpreter, XNNPACK delegate, batch 1")
  if "int8" in runners:
    figures["litert_int8_ms"] = latency["int8"]["1"]["median_ms"]
  results.merge(os.path.join(workdir, results.FILENAME), figures)
  print_fn(f"merged {len(figures)} litert_* figures into "
           f"{os.path.join(workdir, results.FILENAME)} (load average "
           f"{load_before[0]:.2f} before timing)")
  return figures


def _litert_version() -> str:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  try:
    return metadata.version("ai-edge-litert")
  except metadata.PackageNotFoundError:
    return "unknown"


# ---------------------------------------------------------------- the latency table

# (paper table, variant, alpha): every model of Tables 4 to 6, each at every --resolutions.
TABLE_MODELS = (
    ("4", "conv", 1.0), ("4, 6, 7", "dws", 1.0), ("5, 6", "dws", 0.75), ("5", "shallow", 1.0),
    ("6", "dws", 0.5), ("6", "dws", 0.25),
)
# Table 7 is 1.0 MobileNet across resolutions: the paper's 192 and 160 px and this project's
# training ladder 112/96/80 px (which stands for 192/160/128), beside --resolutions.
TABLE7_RESOLUTIONS = (192, 160, 112, 96, 80)


def latency_table_models(resolutions: Sequence[int]) -> list[dict]:
  entries = [dict(tables=tables, variant=variant, alpha=alpha, resolution=resolution)
             for resolution in resolutions for tables, variant, alpha in TABLE_MODELS]
  entries += [dict(tables="7", variant="dws", alpha=1.0, resolution=resolution)
              for resolution in TABLE7_RESOLUTIONS if resolution not in resolutions]
  return entries


def _untrained_fn(entry: dict, num_classes: int):
  model_config = base.get_base_config().model
  model_config.update(num_classes=num_classes, variant=entry["variant"], alpha=entry["alpha"])
  net = export_model(model_config)
  resolution = entry["resolution"]
  variables = net.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)), train=False)
  return inference_fn(net, variables)


def random_images(resolution: int, count: int, seed: int = 0) -> Callable[[], Iterator]:
  """Uniform noise in the model's input range [-1, 1]: latency does not depend on the values."""
  def images():
    rng = np.random.default_rng(seed)
    for _ in range(count):
      yield rng.uniform(-1, 1, (1, resolution, resolution, 3)).astype(np.float32)
  return images


def latency_table(resolutions: Sequence[int], *, num_classes: int = 1000, rounds: int = 5,
                  round_s: float = 1.0, threads: Sequence[int] = (1,), calibration_count: int = 8,
                  print_fn=print) -> dict:
  """Latency of untrained copies of the paper's models, fp32 and int8, in one process.

  Every model's interpreters are built first; then each of `rounds` rounds runs every
  (model, kind, threads) for about round_s seconds in turn, so that a change of the machine's
  load during the measurement spreads over all models instead of landing on a few."""
  entries = latency_table_models(resolutions)
  subjects = []
  for entry in entries:
    fn = _untrained_fn(entry, num_classes)
    cost = costs.count(entry["variant"], entry["alpha"], entry["resolution"], num_classes)
    entry.update(mult_adds=cost.mult_adds, params=cost.params)
    for kind in ("fp32", "int8"):
      calibration = (random_images(entry["resolution"], calibration_count) if kind == "int8"
                     else None)
      content = convert(fn, entry["resolution"], calibration_images=calibration)
      graph = check_graph(content, f"{entry['variant']} {entry['alpha']} {entry['resolution']}px "
                          f"{kind}")
      entry[f"{kind}_bytes"] = len(content)
      entry[f"{kind}_ops"] = graph["num_ops"]
      for thread_count in threads:
        runner = Runner(content, thread_count)
        image = random_images(entry["resolution"], 1, seed=1)()
        runner.set_input(next(image)[0])
        warmup = runner.time_invocations(3)
        per_run = max(statistics.median(warmup), 0.01)
        subjects.append(dict(entry=entry, kind=kind, threads=thread_count, runner=runner,
                             runs=max(3, math.ceil(1000 * round_s / per_run)), times=[],
                             round_medians=[]))
    print_fn(f"converted {entry['variant']} alpha={entry['alpha']} {entry['resolution']}px "
             f"({entry['mult_adds'] / 1e6:.0f}M mult-adds)")

  load = {"before": load_average()}
  started = time.time()
  for round_index in range(rounds):
    for subject in subjects:
      times = subject["runner"].time_invocations(subject["runs"])
      subject["times"] += times
      subject["round_medians"].append(statistics.median(times))
    load[f"after_round_{round_index + 1}"] = load_average()
    print_fn(f"round {round_index + 1}/{rounds} done, load average {load_average()[0]:.2f}")

  for subject in subjects:
    summary = latency_summary(subject["times"])
    summary["round_medians_ms"] = subject["round_medians"]
    subject["entry"].setdefault("latency", {}).setdefault(subject["kind"], {})[
        str(subject["threads"])] = summary
  return {
      "device": cpu_description(),
      "runtime": f"ai-edge-litert {_litert_version()} interpreter, XNNPACK delegate, batch 1",
      "weights": "untrained (Flax initialisation, seed 0); int8 calibrated on "
                 f"{calibration_count} uniform random images in [-1, 1]",
      "num_classes": num_classes, "threads": list(threads), "rounds": rounds,
      "round_s_per_model": round_s, "measure_wall_s": time.time() - started,
      "load_average": load, "cores": devices.usable_cores(),
      "models": [{key: value for key, value in entry.items()} for entry in entries],
  }


def model_label(entry: dict) -> str:
  if entry["variant"] == "dws":
    alpha = entry["alpha"]
    width = f"{alpha:.1f}" if float(alpha).is_integer() else f"{alpha:g}"  # the paper's "1.0"
    return f"{width} MobileNet-{entry['resolution']}"
  name = {"conv": "Conv MobileNet", "shallow": "Shallow MobileNet"}[entry["variant"]]
  return f"{name}-{entry['resolution']}"


def format_latency_markdown(table: dict) -> str:
  lines = [
      "# MobileNet latency with the mobile runtime (LiteRT + XNNPACK), batch 1",
      "",
      f"Machine: {table['device']} (an x86 server CPU running LiteRT's kernels, not a phone). "
      f"{table['runtime']}; weights {table['weights']}. "
      f"{table['rounds']} alternating rounds of about {table['round_s_per_model']:g} s per "
      f"model; load average {table['load_average']['before'][0]:.2f} before, "
      f"{list(table['load_average'].values())[-1][0]:.2f} after the last round (the machine is "
      "shared). Median ms, [min–max] over every run.",
      "",
  ]
  for thread_count in table["threads"]:
    key = str(thread_count)
    header = ["Model", "Paper table", "Million Mult-Adds", "fp32 ms", "int8 ms",
              "int8 speed-up", "fp32 ms per 100M mult-adds"]
    lines += [f"## {thread_count} thread{'s' if thread_count > 1 else ''}", "",
              "| " + " | ".join(header) + " |",
              "|---|---|" + "---:|" * (len(header) - 2)]
    for entry in table["models"]:
      fp32, int8 = entry["latency"]["fp32"][key], entry["latency"]["int8"][key]
      lines.append(
          f"| {model_label(entry)} | {entry['tables']} | {entry['mult_adds'] / 1e6:.0f} | "
          f"{fp32['median_ms']:.2f} [{fp32['min_ms']:.2f}–{fp32['max_ms']:.2f}] | "
          f"{int8['median_ms']:.2f} [{int8['min_ms']:.2f}–{int8['max_ms']:.2f}] | "
          f"{fp32['median_ms'] / int8['median_ms']:.2f}x | "
          f"{100e6 * fp32['median_ms'] / entry['mult_adds']:.2f} |")
    lines.append("")
  return "\n".join(lines)


def write_latency_table(table: dict, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "latency.json"), "w", encoding="utf-8") as out:
    json.dump(table, out, indent=2)
    out.write("\n")
  with open(os.path.join(out_dir, "latency.md"), "w", encoding="utf-8") as out:
    out.write(format_latency_markdown(table))


# ---------------------------------------------------------------- command line

def define_flags() -> None:
  """The command's flags, defined only when it runs as a program: other tools (the benchmark)
  define flags of the same names in the same process-wide registry."""
  flags.DEFINE_string("workdir", None, "A training run's workdir (export that run)")
  flags.DEFINE_boolean("int8", False, "Also export and measure a full-integer int8 model")
  flags.DEFINE_integer("threads", None, "Also measure latency with this many threads (1 always)")
  flags.DEFINE_string("data_folder", None, "Read the images from here instead of the folder in "
                      "the checkpoint's config")
  flags.DEFINE_integer("calibration_images", 300, "Training images for the int8 calibration")
  flags.DEFINE_integer("check_images", 200, "Validation images for the fp32-against-Flax check")
  flags.DEFINE_integer("latency_runs", 50, "Timed invocations per model, after 10 of warm-up")
  flags.DEFINE_boolean("latency-table", False, "Measure untrained copies of the paper's models "
                       "instead of a run (writes --out/latency.json and latency.md)")
  flags.DEFINE_string("out", "results/latency", "Where the latency table goes")
  flags.DEFINE_list("resolutions", ["224", "128"], "Resolutions of the latency table")
  flags.DEFINE_integer("rounds", 5, "Alternating rounds of the latency table")
  flags.DEFINE_float("round_s", 1.0, "Seconds per model per round of the latency table")


def _positive(name: str, value: int) -> None:
  if value is not None and value < 1:
    raise errors.ConfigError(f"--{name} must be >= 1; got {value}")


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  for name in ("threads", "calibration_images", "check_images", "latency_runs", "rounds"):
    _positive(name, FLAGS[name].value)
  threads = [1] + ([FLAGS.threads] if FLAGS.threads and FLAGS.threads != 1 else [])
  if FLAGS["latency-table"].value:
    try:
      resolutions = [int(value) for value in FLAGS.resolutions]
    except ValueError:
      raise errors.ConfigError(f"--resolutions must be integers; got "
                               f"{','.join(FLAGS.resolutions)}") from None
    for resolution in resolutions:
      try:
        costs.check_resolution(resolution)
      except ValueError as error:
        raise errors.ConfigError(f"--resolutions: {error}") from None
    table = latency_table(resolutions, rounds=FLAGS.rounds, round_s=FLAGS.round_s,
                          threads=threads)
    write_latency_table(table, FLAGS.out)
    print(f"wrote {os.path.join(FLAGS.out, 'latency.json')} and latency.md "
          f"({len(table['models'])} models)")
    return
  if not FLAGS.workdir:
    raise errors.ConfigError("--workdir is required (or --latency-table)")
  if not os.path.isdir(FLAGS.workdir):
    raise errors.NotFound(f"workdir {FLAGS.workdir} does not exist")
  export_run(FLAGS.workdir, int8=FLAGS.int8, threads=threads,
             calibration_count=FLAGS.calibration_images, check_count=FLAGS.check_images,
             latency_runs=FLAGS.latency_runs, data_folder=FLAGS.data_folder)


if __name__ == "__main__":
  from mobilenet import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
