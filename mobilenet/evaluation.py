"""Evaluating a model: every example of the eval split exactly once, inference speed, and
eval.py's evaluation of a saved checkpoint (which restores no optimizer state)."""
import os
import time
from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from mobilenet import checkpoints, devices, imagenet, metrics, ops, results, steps
from mobilenet.input import Dataset


def evaluate(evaluation: steps.Evaluation, variables: dict, batches: Iterable[dict],
             after_batch: Optional[Callable[[], None]] = None) -> dict[str, float]:
  """Top-1, top-5 and loss over every example of `batches` (padding masked out)."""
  totals = None
  for local_batch in batches:
    sums = evaluation.eval(variables, evaluation.global_batch(local_batch))
    if after_batch:
      after_batch()
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = int(totals["count"])
  return {"top1": float(totals["top1"]) / count, "top5": float(totals["top5"]) / count,
          "loss": float(totals["loss"]) / count, "count": count}


def measure_inference_speed(net, variables: dict, config, *, batch_size: int = 64) -> float:
  """Images per second of the jitted forward pass on this device.

  Compiled ahead, untimed; then batches are timed until `train.inference_benchmark_s` is spent,
  at least one. Stopping at the budget matters for slow models: a floor of a warm-up call and
  three timed ones kept a Conv MobileNet at 224 px on 2 CPU cores busy for 22 s after its final
  evaluation (7.6 s a call), where this takes one compilation and one call.
  """
  resolution = config.data.resolution
  images = jnp.zeros((batch_size, resolution, resolution, 3), jnp.dtype(config.model.dtype))
  forward = jax.jit(lambda v, x: net.apply(
      {"params": v["ema_params"], "batch_stats": v["batch_stats"]}, x, train=False),
      compiler_options=ops.compiler_options())
  compiled = forward.lower(variables, images).compile()
  count, start = 0, time.perf_counter()
  while count < 1 or time.perf_counter() - start < config.train.inference_benchmark_s:
    compiled(variables, images).block_until_ready()
    count += 1
  return count * batch_size / max(time.perf_counter() - start, 1e-9)


def restore_variables(config: ml_collections.ConfigDict, checkpointer: checkpoints.Checkpointer,
                      step: int, mesh, *, class_columns=None) -> tuple[steps.Evaluation, dict]:
  """The evaluation step of `config` on `mesh`, and the checkpoint's evaluated variables (EMA
  parameters and batch statistics), restored into its shapes."""
  evaluation = steps.build_evaluation(config, mesh, class_columns=class_columns)
  return evaluation, checkpointer.restore_part(evaluation.abstract_variables, step)


def dataset_columns(dataset: Dataset, num_classes: int):
  """None where the dataset has the model's classes; else the model's outputs that stand for
  them (an ImageNet model on a folder of ImageNet synsets: mobilenet.imagenet)."""
  names = dataset.label_names
  if len(names) == num_classes:
    return None
  return imagenet.class_columns(names, num_classes)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None) -> dict:
  """Restores a checkpoint (the latest by default), evaluates it, writes eval_results.json.

  The record is merged into the run's file, so what training measured stays; an evaluation at
  another resolution than the trained one goes to eval_results_r<N>.json instead.
  """
  with checkpoints.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                read_only=True) as checkpointer:
    step = checkpointer.step_to_restore(step)
    saved = checkpointer.saved_config(step)
    checkpoints.check_same_model(saved, config.to_dict(), workdir)
    trained_resolution = saved.get("data", {}).get("resolution", config.data.resolution)
    dataset = Dataset(config.data)
    class_columns = dataset_columns(dataset, config.model.num_classes)
    evaluation, variables = restore_variables(config, checkpointer, step, devices.device_mesh(),
                                              class_columns=class_columns)
  totals = evaluate(evaluation, variables,
                    dataset.eval_batches(global_batch_size=config.train.eval_batch_size))
  speed = measure_inference_speed(evaluation.net, variables, config)
  record = {**results.evaluation_record(config, step, totals, devices.description()),
            "infer_images_per_s": speed}
  if class_columns is not None:
    record["scored_on_classes"] = f"{len(class_columns)} of the model's {config.model.num_classes}"
  if config.data.resolution == trained_resolution:
    path = os.path.join(workdir, results.FILENAME)
    previous = results.read_if_any(path)
    if "train_wall_s" in previous and previous.get("device") != record["device"]:
      record["train_device"] = previous.get("train_device", previous.get("device"))
  else:
    path = os.path.join(workdir, f"eval_results_r{config.data.resolution}.json")
    record["trained_resolution"] = trained_resolution
  if jax.process_index() == 0:
    record = (results.merge(path, record) if config.data.resolution == trained_resolution
              else results.write(path, record))
  metrics.console(f"step {step}: top-1 {100 * totals['top1']:.2f}%  "
                  f"top-5 {100 * totals['top5']:.2f}% on {totals['count']} examples at "
                  f"{config.data.resolution} px; {speed:.0f} images/s inference")
  return record
