"""What train.py and eval.py share: config checks before any compilation, the workdir, and
one-line errors instead of tracebacks for the mistakes a user can fix."""
import os
import sys
import tempfile

import jax
import ml_collections
from absl import app, flags, logging

from mobilenet import checkpoints, costs, model, ops, optim, train_lib

DTYPES = ("float32", "bfloat16")
DATA_SOURCES = ("folder", "tfds")


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field; runs before anything is compiled."""
  m, d, t, o = config.model, config.data, config.train, config.optimizer
  try:
    model.check_hyperparameters(m.variant, m.alpha)
  except ValueError as error:
    raise ValueError(f"config.model.{error}") from None
  _require(m.num_classes >= 1, f"config.model.num_classes must be >= 1; got {m.num_classes}")
  _require(m.dtype in DTYPES, f"config.model.dtype must be one of {', '.join(DTYPES)}; "
           f"got {m.dtype!r}")
  _require(d.image_dtype in DTYPES, f"config.data.image_dtype must be one of "
           f"{', '.join(DTYPES)}; got {d.image_dtype!r}")
  _require(m.depthwise_impl in ops.DEPTHWISE_IMPLS, "config.model.depthwise_impl must be one of "
           f"{', '.join(ops.DEPTHWISE_IMPLS)}; got {m.depthwise_impl!r}")
  _require(m.pointwise_impl in ops.POINTWISE_IMPLS, "config.model.pointwise_impl must be one of "
           f"{', '.join(ops.POINTWISE_IMPLS)}; got {m.pointwise_impl!r}")
  _require(0 <= m.dropout_rate < 1, f"config.model.dropout_rate must be in [0, 1); "
           f"got {m.dropout_rate}")
  try:
    costs.check_resolution(d.resolution)
  except ValueError as error:
    raise ValueError(f"config.data.{error}") from None
  _require(d.source in DATA_SOURCES, f"config.data.source must be one of "
           f"{', '.join(DATA_SOURCES)}; got {d.source!r}")
  if d.source == "folder":
    _require(os.path.isdir(d.folder), f"config.data.folder: no such directory: {d.folder}")
  devices, processes = jax.device_count(), jax.process_count()
  for field in ("global_batch_size", "eval_batch_size"):
    size = t[field]
    _require(size >= 1, f"config.train.{field} must be >= 1; got {size}")
    _require(size % devices == 0 and size % processes == 0,
             f"config.train.{field}={size} must divide by the {devices} devices "
             f"({processes} processes)")
  _require(t.num_epochs > 0, f"config.train.num_epochs must be > 0; got {t.num_epochs}")
  _require(o.name in optim.OPTIMIZERS, f"config.optimizer.name must be one of "
           f"{', '.join(optim.OPTIMIZERS)}; got {o.name!r}")
  _require(o.schedule in optim.SCHEDULES, f"config.optimizer.schedule must be one of "
           f"{', '.join(optim.SCHEDULES)}; got {o.schedule!r}")
  _require(o.learning_rate > 0, f"config.optimizer.learning_rate must be > 0; "
           f"got {o.learning_rate}")
  _require(0 <= o.ema_decay < 1, f"config.optimizer.ema_decay must be in [0, 1); "
           f"got {o.ema_decay}")


def default_workdir(config: ml_collections.ConfigDict) -> str:
  m = config.model
  return os.path.join("runs", f"{m.variant}_a{m.alpha:g}_r{config.data.resolution}_s{config.seed}")


def check_writable(workdir: str) -> None:
  """Fails now, not after an hour of training, when the workdir cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as error:
    raise ValueError(f"workdir {workdir} is not writable: {error.strerror}") from None


def prepare(config: ml_collections.ConfigDict, workdir: str | None, *,
            for_training: bool) -> tuple[ml_collections.ConfigDict, str]:
  train_lib.initialize_distributed(config)
  check_config(config)
  workdir = workdir or default_workdir(config)
  if for_training:
    check_writable(workdir)
  elif not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir} does not exist")
  return config, workdir


# Errors a user can fix from the message alone: printed as one line, exit status 1
# (set MOBILENET_TRACEBACK=1 to see where they came from).
USER_ERRORS = (ValueError, FileNotFoundError, checkpoints.IncompatibleCheckpoint,
               train_lib.NonFiniteLoss)


def run(main) -> None:
  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every file it touches at INFO
    try:
      main(argv)
    except USER_ERRORS as error:
      if os.environ.get("MOBILENET_TRACEBACK"):
        raise
      print(f"error: {error}", file=sys.stderr, flush=True)
      sys.exit(1)
  app.run(guarded)
