"""Keeps the C and C++ libraries' known notices off the console: TensorFlow's start-up lines
(oneDNN, absl's "before absl::InitializeLog()") and libjpeg's per-file warnings ("Corrupt JPEG
data: ..."), which they write to file descriptor 2 from threads Python cannot reach.

Before anything heavy is imported, file descriptor 2 becomes a pipe read by a small forked
process that copies every other line to the real stderr. A process, not a thread, so that what
a crashing run writes last (a fatal error, a traceback) still gets through: when the run dies
its end of the pipe closes, and the filter copies what is left and exits. Unreadable files
still get the input pipeline's one summary line (`skipped N unreadable image file(s), e.g. ...`).

Every command starts with `quiet_command()` (train.py and eval.py first thing, the tools through
`tools/__init__.py`), before TensorFlow or JAX is imported; so import nothing heavy here.
"""
import atexit
import os
import signal
import sys
import time
import warnings

# Lines starting with one of these (after an optional glog prefix) are dropped.
KNOWN_NOISE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"oneDNN custom operations are on.",
    # libjpeg(-turbo) warnings for a file that still decodes (JWRN_*): mobilenet.input counts the
    # files that do not decode and names them in one line.
    b"Corrupt JPEG data:",
    b"Premature end of JPEG file",
    b"Invalid SOS parameters for sequential JPEG",
    b"Warning: unknown JFIF revision number",
    b"Inconsistent progression sequence",
    # TensorFlow's own line for a truncated JPEG, which mobilenet.input skips and counts.
    b"Premature end of JPEG data.",
    # libjpeg's error for a file that does not decode, which mobilenet.input names in its line.
    b"Unsupported marker type",
    # The LiteRT converter's quantizer settings and its MLIR pass notices (tools.export).
    b"fully_quantize: ",
    b"Estimated count of arithmetic ops:",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
)
# Python warnings of the libraries that say nothing a user of these commands can act on:
# (message pattern, category); see quiet_command.
KNOWN_PYTHON_WARNINGS = (
    (r".*tf\.lite\.Interpreter is deprecated", UserWarning),
    (r".*Statistics for quantized inputs were expected", UserWarning),
    (r".*Please consider providing the trackable_obj argument", UserWarning),
)
FILTERED_MARKER = "MOBILENET_STDERR_FILTERED"  # the pid whose stderr the filter already serves
DRAIN_TIMEOUT_S = 5.0
DISABLE_VARIABLE = "MOBILENET_RAW_STDERR"  # set to 1 to see every line as the libraries write it


def is_known_noise(line: bytes) -> bool:
  """True for a line of KNOWN_NOISE, bare or behind glog's `I0000 00:00:... port.cc:153] `."""
  text = line.strip()
  if text[:1] in (b"I", b"W", b"E") and b"] " in text[:120] and text[1:5].isdigit():
    text = text.split(b"] ", 1)[1]
  return text.startswith(KNOWN_NOISE)


def copy_filtered(source_fd: int, target_fd: int) -> None:
  """Copies lines from source to target, without the known noise, until end of file."""
  pending = b""
  while True:
    chunk = os.read(source_fd, 65536)
    if not chunk:
      break
    pending += chunk
    *lines, pending = pending.split(b"\n")
    kept = b"".join(line + b"\n" for line in lines if not is_known_noise(line))
    if kept:
      os.write(target_fd, kept)
  if pending and not is_known_noise(pending):
    os.write(target_fd, pending)


def quiet_command() -> None:
  """What every command of the project does first: TensorFlow's C++ logging below errors off,
  the known noise filtered out of file descriptor 2, the known library warnings hidden.
  MOBILENET_RAW_STDERR=1 shows everything as the libraries write it."""
  if os.environ.get(DISABLE_VARIABLE) == "1":
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  for message, category in KNOWN_PYTHON_WARNINGS:
    warnings.filterwarnings("ignore", message=message, category=category)
  hide_known_noise()


def hide_known_noise() -> None:
  """Routes file descriptor 2 through the filter process (once per process, also across the
  allocator's re-exec, which keeps the pid; not on Windows)."""
  if (os.environ.get(DISABLE_VARIABLE) == "1" or not hasattr(os, "fork")
      or os.environ.get(FILTERED_MARKER) == str(os.getpid())):
    return
  os.environ[FILTERED_MARKER] = str(os.getpid())
  sys.stderr.flush()
  read_end, write_end = os.pipe()
  real_stderr = os.dup(2)
  child = os.fork()
  if child == 0:  # the filter: outlives nothing but the run's end of the pipe
    try:
      # Ctrl-C and a scheduler's SIGTERM go to the whole process group: the filter must stay
      # until the run has written its last line, so it ends only at end of file.
      for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
      os.close(write_end)
      copy_filtered(read_end, real_stderr)
    finally:
      os._exit(0)  # pylint: disable=protected-access  (no atexit handlers of the parent)
  os.close(read_end)
  os.dup2(write_end, 2)
  os.close(write_end)
  os.set_inheritable(real_stderr, False)

  @atexit.register
  def _drain():
    """At a normal exit, the filter has copied everything before the shell prompt returns."""
    try:
      sys.stderr.flush()
    except (OSError, ValueError):
      pass
    os.dup2(real_stderr, 2)  # later writes (C++ destructors) go straight to the console
    # A process this run started and left running keeps the pipe open: wait a little only.
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
      try:
        if os.waitpid(child, os.WNOHANG)[0]:
          return
      except ChildProcessError:
        return
      time.sleep(0.01)
