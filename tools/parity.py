"""Parity of our JAX training with an independent PyTorch implementation of the same recipe.

  python -m tools.parity train --config=configs/dws.py[:seed=N] --workdir=W
  python -m tools.parity compare --jax J1 J2 ... --torch T1 T2 ... [--out results/parity]

`train` trains the config's model in PyTorch (CPU, channels_last, one thread per core) with
what train.py trains it with, taken from the same functions wherever they are not JAX code: the
layers of model.architecture(), Flax's default initialisation (tools.torch_twin), the very
batches train.py sees at each step (Dataset.train_batches for (seed, step)), optim's learning rate
at each step, its weight-decay mask and placement, gradient clipping, label smoothing, dropout,
the parameter EMA that evaluation uses, and evaluation over every example of the eval split
once. It writes what train.py writes (metrics.jsonl, config.json, eval_results.json with
framework "torch"), evaluates on train.py's schedule, and saves a checkpoint at each evaluation
and on SIGTERM (then exits as train.py does): the same command resumes, on the same batches; a
finished run says so and exits 0.

`compare` reads finished runs of both frameworks and writes <out>/parity.json (final top-1 per
seed, means, spreads, per-epoch curves) and <out>/parity.png (val top-1 per epoch).
"""
import contextlib
import json
import os
import statistics
import sys
import time

import numpy as np  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from mobilenet import allocator, checkpoints, cli, devices, errors, metrics, optim, protocol
from mobilenet import results, trainer
from mobilenet.input import Dataset
from tools import command_line

FRAMEWORK = "torch"
CHECKPOINT_FILE = "torch_state.pt"  # in <workdir>/checkpoints, beside where orbax's would be
PARITY_JSON = "parity.json"
PARITY_PLOT = "parity.png"


def _import_twin():
  try:
    from tools import torch_twin  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise errors.ConfigError("parity train needs PyTorch, which is not installed (it is not a "
                             "project dependency: `pip install torch`)") from None
  return torch_twin


def checkpoint_path(workdir: str) -> str:
  return os.path.join(workdir, checkpoints.SUBDIRECTORY, CHECKPOINT_FILE)


def dropout_seed(seed: int, step: int) -> int:
  """Dropout's random numbers depend on (seed, step) only, as JAX's fold_in(key, step): a
  resumed run draws what an uninterrupted one would."""
  return int(np.random.SeedSequence([seed, 1, step]).generate_state(1)[0])


class ParameterAverage:
  """optax.incremental_update's EMA of the parameters, as the JAX train step keeps it; with decay 0 the
  parameters themselves (nothing is stored)."""

  def __init__(self, net, decay: float):
    self.decay = decay
    self.values = [p.detach().clone() for p in net.parameters()] if decay > 0 else None

  def update(self, net, torch) -> None:
    if self.values is None:
      return
    with torch.no_grad():
      for average, param in zip(self.values, net.parameters()):
        average.mul_(self.decay).add_(param, alpha=1.0 - self.decay)

  @contextlib.contextmanager
  def in_use(self, net, torch):
    """The averaged parameters in the network for the duration (evaluation uses them)."""
    if self.values is None:
      yield
      return
    with torch.no_grad():
      kept = [p.detach().clone() for p in net.parameters()]
      for param, average in zip(net.parameters(), self.values):
        param.copy_(average)
    try:
      yield
    finally:
      with torch.no_grad():
        for param, value in zip(net.parameters(), kept):
          param.copy_(value)


def to_torch(batch: dict, torch) -> tuple:
  """(images NCHW in channels_last memory, int64 labels) from a Dataset batch (NHWC numpy)."""
  images = torch.tensor(np.asarray(batch["image"], np.float32)).permute(0, 3, 1, 2)
  return images, torch.tensor(np.asarray(batch["label"], np.int64))


def _autocast(config, torch):
  """bfloat16 compute with float32 parameters, as model.dtype=bfloat16 asks."""
  if config.model.dtype == "bfloat16":
    return torch.autocast("cpu", dtype=torch.bfloat16)
  return contextlib.nullcontext()


def evaluate(net, average: ParameterAverage, dataset: Dataset, config,
             torch) -> dict[str, float]:
  """evaluation.evaluate's figures: top-1, top-5 and loss (no smoothing) over every example of
  the eval split once, the padding of the last batch masked."""
  functional = torch.nn.functional
  k = min(5, config.model.num_classes)
  top1 = top5 = count = 0
  loss = 0.0
  net.eval()
  with average.in_use(net, torch), torch.no_grad():
    for batch in dataset.eval_batches(global_batch_size=config.train.eval_batch_size):
      images, labels = to_torch(batch, torch)
      mask = torch.tensor(np.asarray(batch["mask"], bool))
      with _autocast(config, torch):
        logits = net(images)
      logits = logits.float()
      top1 += int(((logits.argmax(-1) == labels) & mask).sum())
      top5 += int(((logits.topk(k, -1).indices == labels[:, None]).any(-1) & mask).sum())
      loss += float(functional.cross_entropy(logits, labels, reduction="none")[mask].sum())
      count += int(mask.sum())
  return {"top1": top1 / count, "top5": top5 / count, "loss": loss / count, "count": count}


def _save(path: str, step: int, net, optimizer, average: ParameterAverage, config, torch,
          train_seconds: float) -> None:
  """Written to a temporary file and renamed: a kill mid-write leaves the previous one whole."""
  state = {"step": step, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
           "ema": average.values, "config": config.to_json_best_effort(),
           "train_seconds": train_seconds}
  temporary = path + ".tmp"
  torch.save(state, temporary)
  os.replace(temporary, path)


def learning_rates(config, *, steps_per_epoch: int, total_steps: int) -> list[float]:
  """The rate of each step, from optim's schedule at the number of updates before it (as
  optax's optimizers evaluate it)."""
  schedule = optim.learning_rate_schedule(
      config.optimizer, global_batch_size=config.train.global_batch_size,
      steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  return [float(rate) for rate in np.asarray(schedule(np.arange(total_steps)))]


def train_and_evaluate(config, workdir: str, hooks: trainer.Hooks | None = None) -> dict:
  """Trains the PyTorch twin from its checkpoint in `workdir` (or from scratch) to the end;
  `hooks.step_done` as train.py's loop calls it (tests inject faults there)."""
  hooks = hooks or trainer.Hooks()
  twin = _import_twin()
  torch = twin.torch
  functional = torch.nn.functional
  twin.check_optimizer(config.optimizer)
  plan = trainer.plan_run(config)
  dataset = plan.dataset
  info, global_batch = plan.info, plan.global_batch
  steps_per_epoch, total_steps = plan.steps_per_epoch, plan.total_steps
  eval_every, log_every = plan.eval_every, plan.log_every
  rates = learning_rates(config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)

  path = checkpoint_path(workdir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  saved = torch.load(path, weights_only=True) if os.path.exists(path) else None
  if saved is not None:
    saved_config = json.loads(saved["config"])
    checkpoints.check_same_model(saved_config, config.to_dict(), workdir)
    if saved_config["optimizer"]["name"] != config.optimizer.name:
      raise errors.IncompatibleCheckpoint(
          f"{workdir} holds a checkpoint trained with optimizer.name="
          f"{saved_config['optimizer']['name']!r}, not {config.optimizer.name!r}; use another "
          "--workdir")
    finished = results.finished_run(workdir, saved["step"], total_steps)
    if finished is not None and finished.get("framework") == FRAMEWORK:
      metrics.console(f"{workdir}: already finished ({total_steps} steps): top-1 "
                      f"{100 * finished['top1']:.2f}%, in {results.FILENAME}; "
                      "nothing to do")
      return {**finished, "already_finished": True}

  threads = devices.usable_cores()
  torch.set_num_threads(threads)
  torch.manual_seed(config.seed)
  net = twin.build_model(config)
  optimizer = twin.create_optimizer(config.optimizer, net, rates[0])
  average = ParameterAverage(net, config.optimizer.ema_decay)
  start_step, train_seconds_before = 0, 0.0
  if saved is not None:
    net.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if average.values is not None:
      if saved["ema"] is None:
        raise errors.IncompatibleCheckpoint(
            f"config.optimizer.ema_decay={config.optimizer.ema_decay}: the "
                         f"checkpoint in {workdir} was trained without a parameter EMA")
      average.values = saved["ema"]
    start_step, train_seconds_before = saved["step"], saved.get("train_seconds")
    metrics.console(f"Resumed from the checkpoint of step {start_step} in {workdir}")
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as out:
    out.write(config.to_json_best_effort(indent=2))
  metrics.console(
      f"PyTorch {torch.__version__} twin, {threads} threads: {config.model.variant} "
      f"alpha={config.model.alpha} {config.data.resolution}px | {info.num_train_examples} train "
      f"/ {info.num_eval_examples} eval examples | {total_steps} steps of {global_batch} "
      f"({steps_per_epoch}/epoch)")

  writer = metrics.MetricWriter(workdir)
  batches = dataset.train_batches(global_batch_size=global_batch, seed=config.seed,
                                  start_step=start_step)
  pending = []  # (loss, accuracy, grad_norm) since the last train record
  last_logged = time.perf_counter()
  train_seconds = 0.0  # this session's, evaluation excluded
  images_seen = 0

  def evaluate_and_log(step: int) -> dict[str, float]:
    nonlocal last_logged
    totals = evaluate(net, average, dataset, config, torch)
    writer.write(step, "eval", {**totals, "epoch": step / steps_per_epoch})
    metrics.console(f"eval at step {step}: top-1 {100 * totals['top1']:.2f}%  "
                    f"top-5 {100 * totals['top5']:.2f}%")
    last_logged = time.perf_counter()  # step times exclude evaluation
    return totals

  with trainer.Preemption() as preemption, contextlib.closing(writer):
    for step in range(start_step, total_steps):
      images, labels = to_torch(next(batches), torch)
      for group in optimizer.param_groups:
        group["lr"] = rates[step]
      torch.manual_seed(dropout_seed(config.seed, step))
      net.train()
      with _autocast(config, torch):
        logits = net(images)
      loss = functional.cross_entropy(logits.float(), labels,
                                      label_smoothing=config.optimizer.label_smoothing)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      grad_norm = twin.clip_by_global_norm(net.parameters(), config.optimizer.grad_clip_norm)
      optimizer.step()
      average.update(net, torch)
      done = step + 1
      hooks.step_done(done)
      images_seen += global_batch
      accuracy = (logits.detach().argmax(-1) == labels).float().mean()
      pending.append((loss.item(), accuracy.item(), grad_norm))
      if not np.isfinite(pending[-1][0]):
        raise errors.NonFiniteLoss(
            f"the loss became {pending[-1][0]} at step {done}; stopping: the checkpoint in "
            f"{path} (if any) is kept")
      if done % log_every == 0 or done == total_steps:
        elapsed = time.perf_counter() - last_logged
        train_seconds += elapsed
        losses, accuracies, norms = zip(*pending)
        writer.write(done, "train", {
            "loss": np.mean(losses), "accuracy": np.mean(accuracies), "grad_norm": np.mean(norms),
            "learning_rate": rates[done - 1],
            "images_per_s": len(pending) * global_batch / max(elapsed, 1e-9),
            "step_time_s": elapsed / len(pending), "steps": len(pending)})
        metrics.console(f"step {done:>6}/{total_steps}  loss {np.mean(losses):.4f}  "
                        f"acc {100 * np.mean(accuracies):5.1f}%  lr {rates[done - 1]:.5f}  "
                        f"{len(pending) * global_batch / max(elapsed, 1e-9):7.1f} img/s")
        pending = []
        last_logged = time.perf_counter()
      if preemption.requested:
        train_seconds += time.perf_counter() - last_logged
        _save(path, done, net, optimizer, average, config, torch,
              (train_seconds_before or 0.0) + train_seconds)
        metrics.console(f"SIGTERM received: saved the checkpoint of step {done}; exiting. "
                        "Run the same command to resume.")
        return {"preempted_at": done}
      if done % eval_every == 0 and done != total_steps:
        evaluate_and_log(done)  # before the save: a kill in between re-evaluates, never skips
        _save(path, done, net, optimizer, average, config, torch,
              (train_seconds_before or 0.0) + train_seconds)
    if start_step < total_steps:
      _save(path, total_steps, net, optimizer, average, config, torch,
            (train_seconds_before or 0.0) + train_seconds)
    totals = evaluate_and_log(total_steps)
  extra = {"framework": FRAMEWORK, "torch": torch.__version__, "threads": threads}
  if images_seen:
    extra.update(session_train_wall_s=train_seconds,
                 session_train_images_per_s=images_seen / train_seconds)
  if train_seconds_before is not None and train_seconds > 0:  # over every session of the run
    train_seconds_all = train_seconds_before + train_seconds
    extra.update(train_wall_s=train_seconds_all,
                 train_images_per_s=total_steps * global_batch / train_seconds_all)
  record = {**results.evaluation_record(config, total_steps, totals, devices.description()),
            **extra}
  return results.write(os.path.join(workdir, results.FILENAME), record)


# --------------------------------------------------------------------------- compare


def load_run(workdir: str, framework: str) -> dict:
  """A finished run's final top-1, seed, recipe and per-epoch val top-1 (from metrics.jsonl's
  eval records; a step evaluated twice, by a resumed run, counts with its last record)."""
  record = results.read_if_any(os.path.join(workdir, results.FILENAME))
  if "top1" not in record:
    raise errors.NotFound(f"{workdir}: no {results.FILENAME} with a top1: not a finished run")
  found = record.get("framework", "jax")
  if found != framework:
    raise errors.ConfigError(f"{workdir}: a {found} run, given as --{framework}")
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as file:
      config = json.load(file)
    epochs, top1_per_epoch = metrics.evaluation_curve(
        os.path.join(workdir, metrics.FILENAME), config["train"]["num_epochs"], record["step"])
  except (OSError, ValueError) as error:
    raise errors.NotFound(f"{workdir}: cannot read its config.json or metrics.jsonl "
                          f"({error})") from None
  return {
      "workdir": workdir, "framework": framework, "seed": record.get("seed", config.get("seed")),
      "top1": record["top1"], "step": record["step"],
      "epochs": epochs, "top1_per_epoch": top1_per_epoch,
      "recipe": protocol.settings(config, ignoring=(protocol.SEED_FIELD,)),
  }


def _summary(values: list[float]) -> dict:
  return {"mean": statistics.fmean(values),
          "std": statistics.stdev(values) if len(values) > 1 else 0.0,
          "range": max(values) - min(values)}


def compare(jax_workdirs: list[str], torch_workdirs: list[str], out: str) -> dict:
  """Writes parity.json and parity.png in `out`; returns the JSON's record."""
  runs = ([load_run(w, "jax") for w in jax_workdirs]
          + [load_run(w, FRAMEWORK) for w in torch_workdirs])
  reference = runs[0]["recipe"]
  # Runs of one recipe differ in the seed only; anything else is reported, not hidden.
  differences = {}
  for run in runs[1:]:
    fields = protocol.differing_fields(reference, run["recipe"])
    if fields:
      differences[run["workdir"]] = {f: [reference[f], run["recipe"][f]] for f in fields}
      print(f"warning: {run['workdir']} was trained with another recipe than "
            f"{runs[0]['workdir']}: " + ", ".join(
                f"{f}={run['recipe'][f]!r} (not {reference[f]!r})" for f in fields),
            file=sys.stderr)
  by_framework = {name: [run for run in runs if run["framework"] == name]
                  for name in ("jax", FRAMEWORK)}
  record = {}
  for name, group in by_framework.items():
    finals = [run["top1"] for run in group]
    summary = _summary(finals)
    record.update({f"{name}_top1": finals, f"{name}_seeds": [run["seed"] for run in group],
                   f"{name}_top1_mean": summary["mean"], f"{name}_top1_std": summary["std"],
                   f"{name}_top1_range": summary["range"]})
  record["torch_minus_jax_top1"] = record["torch_top1_mean"] - record["jax_top1_mean"]
  record["curves"] = {name: [{key: run[key] for key in ("workdir", "seed", "step", "epochs",
                                                         "top1_per_epoch")} for run in group]
                      for name, group in by_framework.items()}
  record["recipe_differences"] = differences
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, PARITY_JSON), "w", encoding="utf-8") as file:
    json.dump(record, file, indent=2)
  plot(by_framework, record, os.path.join(out, PARITY_PLOT))
  return record


def plot(by_framework: dict, record: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
  figure, axes = pyplot.subplots(figsize=(7, 4.5))
  styles = {"jax": ("tab:blue", "JAX"), FRAMEWORK: ("tab:orange", "PyTorch")}
  for name, group in by_framework.items():
    colour, label = styles[name]
    for index, run in enumerate(group):
      axes.plot(run["epochs"], [100 * v for v in run["top1_per_epoch"]], color=colour,
                linestyle=("-", "--", ":", "-.")[index % 4], marker="o", markersize=3,
                label=f"{label} seed {run['seed']}")
  axes.set_xlabel("epoch")
  axes.set_ylabel("val top-1 (%)")
  axes.set_title(f"JAX {100 * record['jax_top1_mean']:.1f}% vs PyTorch "
                 f"{100 * record['torch_top1_mean']:.1f}% (mean final top-1)")
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  pyplot.close(figure)


def compare_command(values: flags.FlagValues) -> None:
  if not (values.jax and values.torch):
    raise errors.ConfigError("compare: --jax and --torch each name one finished workdir or more")
  record = compare(values.jax, values.torch, values.out)
  print(f"JAX top-1 {100 * record['jax_top1_mean']:.2f}% (std {100 * record['jax_top1_std']:.2f}, "
        f"{len(record['jax_top1'])} runs); PyTorch {100 * record['torch_top1_mean']:.2f}% (std "
        f"{100 * record['torch_top1_std']:.2f}, {len(record['torch_top1'])} runs); PyTorch - JAX "
        f"{100 * record['torch_minus_jax_top1']:+.2f} points. Wrote "
        f"{os.path.join(values.out, PARITY_JSON)} and {PARITY_PLOT}")


# --------------------------------------------------------------------------- command line

USAGE = ("python -m tools.parity train --config=configs/dws.py[:seed=N] --workdir=W, or "
         "python -m tools.parity compare --jax J... --torch T... [--out DIR]")


def train_command(values: flags.FlagValues) -> None:
  if values.config is None or values.workdir is None:
    raise errors.ConfigError("train: --config and --workdir are required")
  _import_twin().check_optimizer(values.config.optimizer)  # before any workdir is made
  config, workdir = cli.prepare(values.config, values.workdir, for_training=True)
  if "preempted_at" in train_and_evaluate(config, workdir):
    sys.exit(trainer.EXIT_PREEMPTED)


def define_flags(flag_values: flags.FlagValues) -> None:
  config_flags.DEFINE_config_file("config", None, "train: config file, e.g. "
                                  "configs/dws.py[:seed=1]", lock_config=True,
                                  flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "train: checkpoint, metrics and results of the PyTorch "
                      "run", flag_values=flag_values)
  flags.DEFINE_multi_string("jax", [], "compare: finished train.py workdirs",
                            flag_values=flag_values)
  flags.DEFINE_multi_string("torch", [], "compare: finished parity train workdirs",
                            flag_values=flag_values)
  flags.DEFINE_string("out", os.path.join("results", "parity"), "compare: where parity.json and "
                      "parity.png go", flag_values=flag_values)


def main(command: command_line.CommandLine) -> None:
  if command.arguments == ["train"]:
    train_command(command.flags)
  elif command.arguments == ["compare"]:
    compare_command(command.flags)
  else:
    raise errors.ConfigError(f"expected train or compare: {USAGE}")


TOOL = command_line.Tool(define_flags, main, takes_arguments=True, several_values=("jax", "torch"))

if __name__ == "__main__":
  if sys.argv[1:2] == ["train"]:
    allocator.use_fast_allocator()  # re-executes once under tcmalloc where installed, as train.py
  TOOL.start()
