"""What train.py and eval.py share: config checks before any compilation, the workdir, and
one-line errors instead of tracebacks for the mistakes a user can fix."""
import contextlib
import os
import re
import sys
import tempfile
from typing import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from mobilenet import checkpoints, costs, devices, errors, input as input_lib
from mobilenet import defaults, model, optim, protocol, trainer


def check_config(config: ml_collections.ConfigDict,
                 check_first: Callable[[ml_collections.ConfigDict], None] | None = None) -> None:
  """Raises ConfigError naming the first bad field; runs before anything is compiled. Each
  section is checked by the module that owns its choices; `check_first` is the caller's own
  check (a repository's hint for its data folder, say), run before them."""
  if check_first:
    check_first(config)
  if config.data.source == "folder" and not config.data.folder:
    raise errors.ConfigError("config.data.folder is empty: pass --config.data.folder=<root of "
                             "<split>/<class>/ images>, or --config.data.source=tfds")
  model.check_config(config.model)
  try:
    costs.check_resolution(config.data.resolution)
  except ValueError as error:
    raise errors.ConfigError(f"config.data.{error}") from None
  input_lib.check_config(config.data)
  trainer.check_config(config.train)
  optim.check_config(config.optimizer)


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """runs/<dataset>/<variant>_a<alpha>_r<resolution>_s<seed>: the same model on two datasets
  never shares a workdir (any other difference is refused when resuming)."""
  m = config.model
  return os.path.join("runs", protocol.dataset_name(config.data),
                      f"{m.variant}_a{m.alpha:g}_r{config.data.resolution}_s{config.seed}")


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
      raise errors.ConfigError(f"workdir {workdir} is not writable{where}: "
                               f"{error.strerror}") from None


def prepare(config: ml_collections.ConfigDict, workdir: str | None, *,
            for_training: bool) -> tuple[ml_collections.ConfigDict, str]:
  devices.initialize_distributed(config.distributed)
  check_config(config)
  workdir = workdir or default_workdir(config)
  if for_training:
    check_writable(workdir)
  elif not os.path.isdir(workdir):
    raise errors.NotFound(f"workdir {workdir} does not exist")
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


def train(config: ml_collections.ConfigDict, workdir: str | None, *,
          check_first: Callable[[ml_collections.ConfigDict], None] | None = None,
          hooks: trainer.Hooks | None = None) -> dict:
  """train.py: checks the config, then trains and evaluates in the workdir (see above);
  `hooks` reach the training loop (tests inject faults there)."""
  devices.initialize_distributed(config.distributed)
  check_config(config, check_first)
  workdir = workdir or default_workdir(config)
  with no_empty_workdir_left_on_failure(workdir):
    check_writable(workdir)
    return trainer.train_and_evaluate(config, workdir, hooks)


def evaluation_config(saved: dict, workdir: str, *, file_config=None, overrides: dict,
                      resolution: int | None = None) -> ml_collections.ConfigDict:
  """The config a checkpoint is evaluated with: the one it was trained with, changed only where
  the command line asks (data location, split, batch size, implementations, ...).

  A config file or flag that contradicts the trained model or its resolution is refused;
  `resolution` evaluates at another resolution deliberately.
  """
  config = defaults.from_saved(saved)
  trained = {field: checkpoints.lookup(config, field) for field in protocol.EVALUATION_FIELDS}
  hint = "; eval.py reads the model from the checkpoint, so --config can be left out"
  if file_config is not None:
    for field, value in trained.items():
      given = checkpoints.lookup(file_config, field)
      if given != value:
        raise errors.ConfigError(f"--config: {field} is {given!r} there, but the checkpoint "
                                 f"in {workdir} was trained with {field}={value!r}{hint}")
  for field, value in overrides.items():
    if field in trained and value != trained[field]:
      extra = (" (--resolution=N evaluates at another resolution deliberately)"
               if field == "data.resolution" else "")
      raise errors.ConfigError(f"--config.{field}={value!r}: the checkpoint in {workdir} was "
                               f"trained with {field}={trained[field]!r}{extra}")
    config.update_from_flattened_dict({field: value})
  if resolution:
    config.data.resolution = int(resolution)
  return config


def prepare_evaluation(config_flag, workdir: str, *, step: int | None, resolution: int | None,
                       check_first: Callable[[ml_collections.ConfigDict], None] | None = None
                       ) -> tuple[ml_collections.ConfigDict, str]:
  """eval.py's config from the checkpoint in `workdir` and the command line (see above)."""
  devices.initialize_distributed(config_flag.value.distributed)
  if not os.path.isdir(workdir):
    raise errors.NotFound(f"workdir {workdir} does not exist")
  saved, _ = checkpoints.read_trained_config(workdir, step)
  config = evaluation_config(
      saved, workdir, file_config=config_flag.value if config_flag.present else None,
      overrides=config_flags.get_override_values(config_flag), resolution=resolution)
  check_config(config, check_first)
  return config, workdir


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


def run(main, *, takes_arguments: bool = False) -> None:
  """absl's app.run of `main(argv)`: a UserError ends it in one line; arguments that are not
  flags are refused unless the command `takes_arguments`."""
  def guarded(argv):
    if len(argv) > 1 and not takes_arguments:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every file it touches at INFO
    try:
      main(argv)
    except errors.UserError as error:  # anything else is a bug: its traceback is kept
      if os.environ.get("MOBILENET_TRACEBACK"):
        raise
      print(f"error: {error}", file=sys.stderr, flush=True)
      sys.exit(1)
  app.run(guarded, flags_parser=parse_flags)
