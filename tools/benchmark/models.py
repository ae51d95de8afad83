"""The models timed: the training step and inference that train.py runs, in JAX, and the same
architecture and optimizer in PyTorch (the twin, tools.torch_twin)."""
import contextlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobilenet import devices, errors, ops, optim, steps


# The learning-rate schedule spans config.train.num_epochs of Imagenette's train split, as in
# training; only the learning rate's value depends on it, not the step's work.
SCHEDULE_EXAMPLES = 9469


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
  timed is the step training runs; `ynn_convolutions=True` compiles both with jaxlib's default
  of handing convolutions to YNNPACK (ops.compiler_options) instead of training's options, and
  `memory_scheduler=True` with XLA's memory-optimized scheduler.
  """

  def __init__(self, config: ml_collections.ConfigDict, variant: str,
               ynn_convolutions: bool = False, memory_scheduler: bool = False):
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

    options = ops.compiler_options(ynn_convolutions, memory_scheduler)
    start = time.perf_counter()
    self.train_step = training.train.lower(self.state, self.batch).compile(options)
    self.compile_s = time.perf_counter() - start
    memory = self.train_step.memory_analysis()
    # XLA's working memory for one step, beside its arguments and outputs (None where unknown).
    self.train_temp_bytes = memory.temp_size_in_bytes if memory is not None else None
    start = time.perf_counter()
    # As evaluation.measure_inference_speed: the weights evaluation uses.
    self.infer = jax.jit(lambda state, images: net.apply(
        {"params": state.ema_params, "batch_stats": state.batch_stats}, images,
        train=False)).lower(self.state, self.batch["image"]).compile(options)
    self.infer_compile_s = time.perf_counter() - start

  def train(self) -> None:
    # The step donates the state: each call reads the one the previous call returned.
    self.state, step_metrics = self.train_step(self.state, self.batch)
    jax.block_until_ready((self.state, step_metrics))

  def predict(self) -> None:
    jax.block_until_ready(self.infer(self.state, self.batch["image"]))


def import_torch():
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
    torch = self.torch = import_torch()
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
