"""A trained run exported: its checkpoint restored, fp32 and int8 models written, checked
against Flax, timed, the int8 model evaluated, and the figures merged into eval_results.json."""
import os
from typing import Callable, Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np

from mobilenet import checkpoints, devices, evaluation, model, results
from mobilenet.input import Dataset
from tools.export.conversion import EXPORT_IMPLS, check_graph, convert, inference_fn
from mobilenet.devices import load_average
from tools.export.timing import Runner, litert_version, cpu_description
from tools.export.timing import measure_latency


EXPORT_SUBDIRECTORY = "export"
FP32_FILENAME = "model_fp32.tflite"
INT8_FILENAME = "model_int8.tflite"


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
  logit_errors, agree, checked, int8_correct, int8_agree, seen = [], 0, 0, 0, 0, 0
  first_image = None
  for position, (image, label) in enumerate(eval_images(eval_data, config.train.eval_batch_size)):
    seen += 1
    first_image = image if first_image is None else first_image
    if "int8" in runners:
      int8_correct += int(np.argmax(runners["int8"].logits(image)) == label)
    if position % check_every == 0 and checked < check_count:
      reference = np.asarray(forward(image[None]))[0]
      exported = runners["fp32"].logits(image)
      logit_errors.append(float(np.max(np.abs(exported - reference)) / np.max(np.abs(reference))))
      agree += int(np.argmax(exported) == np.argmax(reference))
      if "int8" in runners:
        int8_agree += int(np.argmax(runners["int8"].logits(image)) == np.argmax(reference))
      checked += 1
  figures = {
      "litert_fp32_max_rel_error": max(logit_errors),
      "litert_fp32_top1_agreement": agree / checked,
      "litert_check_images": checked,
      "litert_step": step,
      "litert_ops": graph["num_ops"],
  }
  print_fn(f"fp32 against Flax on {checked} validation images: max relative error of the "
           f"logits {max(logit_errors):.2e}, top-1 agreement {100 * agree / checked:.1f}%")
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
      litert_runtime=f"ai-edge-litert {litert_version()} interpreter, XNNPACK delegate, batch 1")
  if "int8" in runners:
    figures["litert_int8_ms"] = latency["int8"]["1"]["median_ms"]
  results.merge(os.path.join(workdir, results.FILENAME), figures)
  print_fn(f"merged {len(figures)} litert_* figures into "
           f"{os.path.join(workdir, results.FILENAME)} (load average "
           f"{load_before[0]:.2f} before timing)")
  return figures
