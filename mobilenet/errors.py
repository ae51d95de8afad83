"""Mistakes a user can fix from the message alone.

train.py, eval.py and the tools print a `UserError` as one line (exit status 1); any other
exception is a bug and keeps its traceback. Each subclass also derives from the builtin
exception it refines, so that code catching `ValueError` or `FileNotFoundError` still does.
"""


class UserError(Exception):
  """The base: raise a subclass, with a message that names the field, flag or file."""


class ConfigError(UserError, ValueError):
  """A config field or flag with a value this code cannot use."""


class DataError(UserError, ValueError):
  """A data folder or split that cannot be read as the config says (layout, classes, files)."""


class DataSourceUnavailableError(UserError, RuntimeError):
  """A dataset that cannot be fetched or prepared (no network, missing manual download)."""


class NotFound(UserError, FileNotFoundError):
  """A workdir, checkpoint or file the command needs and that is not there."""


class IncompatibleCheckpoint(UserError, ValueError):
  """A checkpoint of another model (or, to resume training, another optimizer)."""


class DifferentRun(UserError, ValueError):
  """A workdir whose run was started under other settings than the config asks to resume."""


class CheckpointNotWritten(UserError, RuntimeError):
  """A save that failed (disk full, read-only folder); the earlier checkpoints are intact."""


class NonFiniteLoss(UserError, RuntimeError):
  """Training diverged; the last good checkpoint is kept."""
