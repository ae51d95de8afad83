"""What train.py and eval.py share: config checks before any compilation, the workdir, and
one-line errors instead of tracebacks for the mistakes a user can fix."""
import contextlib
import gc
import logging as python_logging
import os
import re
import sys
import tempfile
import threading
import time

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from configs import base
from mobilenet import checkpoints, costs, data, model, ops, optim, train_lib

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
  _require(m.standard_impl in ops.STANDARD_IMPLS, "config.model.standard_impl must be one of "
           f"{', '.join(ops.STANDARD_IMPLS)}; got {m.standard_impl!r}")
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
  if d.source == "tfds":
    _check_tfds_name(d.tfds_name, d.data_dir)
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
  _require(0 <= o.flat_fraction < 1, f"config.optimizer.flat_fraction must be in [0, 1); "
           f"got {o.flat_fraction}")
  _require(0 <= o.ema_decay < 1, f"config.optimizer.ema_decay must be in [0, 1); "
           f"got {o.ema_decay}")


def _check_tfds_name(name: str, data_dir: str) -> None:
  """tfds' own error for an unknown name lists every dataset it knows: hundreds of lines."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow; tfds runs only)
  try:
    tfds.builder(name, data_dir=data_dir or None)
  except (ValueError, AssertionError) as error:  # unknown dataset, config or version
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ValueError(f"config.data.tfds_name={name!r}: {reason}") from None


def default_workdir(config: ml_collections.ConfigDict) -> str:
  m = config.model
  return os.path.join("runs", f"{m.variant}_a{m.alpha:g}_r{config.data.resolution}_s{config.seed}")


def check_writable(workdir: str) -> None:
  """Fails now, not after an hour of training, when the workdir (or its checkpoints folder,
  which may be another mount or owner) cannot be written."""
  for directory in (workdir, os.path.join(workdir, checkpoints.SUBDIRECTORY)):
    try:
      os.makedirs(directory, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test"):
        pass
    except OSError as error:
      where = "" if directory == workdir else f" ({directory})"
      raise ValueError(f"workdir {workdir} is not writable{where}: {error.strerror}") from None


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


def remove_empty_folders(workdir: str) -> None:
  """Removes `workdir` and the folders below it if none holds a file (rmdir refuses others)."""
  for directory, _, _ in os.walk(workdir, topdown=False):
    try:
      os.rmdir(directory)
    except OSError:
      pass


@contextlib.contextmanager
def no_empty_workdir_left_on_failure(workdir: str):
  """A start that fails (a bad data folder, a wrong class count) leaves no empty workdir behind,
  which a later run of another model would otherwise meet. Only a workdir this run created is
  removed, and only while no file was written in it."""
  existed = os.path.lexists(workdir)
  try:
    yield
  except BaseException:
    if not existed:
      remove_empty_folders(workdir)
    raise


def train(config: ml_collections.ConfigDict, workdir: str | None) -> dict:
  """train.py: checks the config, then trains and evaluates in the workdir (see above)."""
  train_lib.initialize_distributed(config)
  check_config(config)
  workdir = workdir or default_workdir(config)
  with no_empty_workdir_left_on_failure(workdir):
    check_writable(workdir)
    return train_lib.train_and_evaluate(config, workdir)


def _update_known_fields(config: ml_collections.ConfigDict, saved: dict) -> None:
  """Copies the saved values of the fields this code still has (older runs may lack some)."""
  for key, value in saved.items():
    if key not in config:
      continue
    if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
      _update_known_fields(config[key], value)
    elif value is not None:
      config[key] = type(config[key])(value) if isinstance(config[key], float) else value


def evaluation_config(saved: dict, workdir: str, *, file_config=None, overrides: dict,
                      resolution: int | None = None) -> ml_collections.ConfigDict:
  """The config a checkpoint is evaluated with: the one it was trained with, changed only where
  the command line asks (data location, split, batch size, implementations, ...).

  A config file or flag that contradicts the trained model or its resolution is refused;
  `resolution` evaluates at another resolution deliberately.
  """
  config = base.get_base_config()
  _update_known_fields(config, saved)
  trained = {field: checkpoints.lookup(config, field) for field in checkpoints.EVALUATION_FIELDS}
  hint = "; eval.py reads the model from the checkpoint, so --config can be left out"
  if file_config is not None:
    for field, value in trained.items():
      given = checkpoints.lookup(file_config, field)
      if given != value:
        raise ValueError(f"--config: {field} is {given!r} there, but the checkpoint in "
                         f"{workdir} was trained with {field}={value!r}{hint}")
  for field, value in overrides.items():
    if field in trained and value != trained[field]:
      extra = (" (--resolution=N evaluates at another resolution deliberately)"
               if field == "data.resolution" else "")
      raise ValueError(f"--config.{field}={value!r}: the checkpoint in {workdir} was trained "
                       f"with {field}={trained[field]!r}{extra}")
    config.update_from_flattened_dict({field: value})
  if resolution:
    config.data.resolution = int(resolution)
  return config


def prepare_evaluation(config_flag, workdir: str, *, step: int | None,
                       resolution: int | None) -> tuple[ml_collections.ConfigDict, str]:
  """eval.py's config from the checkpoint in `workdir` and the command line (see above)."""
  train_lib.initialize_distributed(config_flag.value)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir} does not exist")
  saved, _ = checkpoints.read_trained_config(workdir, step)
  config = evaluation_config(
      saved, workdir, file_config=config_flag.value if config_flag.present else None,
      overrides=config_flags.get_override_values(config_flag), resolution=resolution)
  check_config(config)
  return config, workdir


# Errors a user can fix from the message alone: printed as one line, exit status 1
# (set MOBILENET_TRACEBACK=1 to see where they came from).
USER_ERRORS = (ValueError, FileNotFoundError, checkpoints.IncompatibleCheckpoint,
               checkpoints.CheckpointNotWritten, train_lib.NonFiniteLoss,
               data.DataSourceUnavailableError)


def _missing_config_key(error: Exception) -> str | None:
  """The field in ml_collections' KeyError for an unknown field (also inside an AttributeError)."""
  while isinstance(error, AttributeError) and error.args and isinstance(error.args[0], KeyError):
    error = error.args[0]
  if not isinstance(error, KeyError) or not error.args:
    return None
  match = re.match(r"'([^']*)'", str(error.args[0]))
  return match.group(1) if match else None


def flag_error_message(error: Exception, argv: list[str]) -> str:
  """One line for a flag that absl, ml_collections or a config file refused."""
  missing = _missing_config_key(error)
  if missing is not None:
    suggestion = re.search(r'Did you mean "([^"]+)"', str(error))
    hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
    for arg in argv[1:]:
      parts = arg.lstrip("-").split("=", 1)[0].split(".")
      if len(parts) > 1 and missing in parts[1:]:
        field = parts[:parts.index(missing, 1) + 1]
        return f"--{'.'.join(field)}: {'.'.join(field[:-1])} has no field {missing!r}{hint}"
  # A config file's own error arrives as a traceback inside the message: keep where and what.
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's parsing, but a refused flag or config file ends the program with one line."""
  try:
    remaining = flag_values(argv)
    if "config" in flag_values and flag_values.config is not None:
      flag_values.config.to_dict()  # a config file that failed to load raises when first read
    return remaining
  except Exception as error:  # pylint: disable=broad-except  (absl, ml_collections, config files)
    if os.environ.get("MOBILENET_TRACEBACK"):
      raise
    print(f"error: {flag_error_message(error, argv)}", file=sys.stderr, flush=True)
    sys.exit(1)


def join_background_threads(timeout_s: float = 60.0) -> None:
  """Lets the threads that the interpreter would wait for at exit end now, so that what they
  log comes before the one-line error: orbax logs each failed write from the thread that made
  it, and may still be writing other arrays when the first failure reaches the main thread.

  Thread.join itself, not the thread's own: orbax's _SignalingThread.join re-raises the error the
  thread already logged (or raises TimeoutError), which would replace the user's line."""
  deadline = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and not thread.daemon:
      threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))


def run(main) -> None:
  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every file it touches at INFO
    try:
      main(argv)
    except USER_ERRORS as error:
      if os.environ.get("MOBILENET_TRACEBACK"):
        raise
      join_background_threads()
      # Orbax's abandoned writes, once collected, are reported ("coroutine ... was never
      # awaited", "Task exception was never retrieved"): collect them now, above the line.
      gc.collect()
      print(f"error: {error}", file=sys.stderr, flush=True)
      # Orbax's event loop keeps its other failed writes until exit, where asyncio would report
      # each ("Task exception was never retrieved") below the user's line: the same error again.
      python_logging.getLogger("asyncio").setLevel(python_logging.CRITICAL)
      sys.exit(1)
  app.run(guarded, flags_parser=parse_flags)
