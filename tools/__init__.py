"""The lab's command lines, each started as `python -m tools.<name>`.

Started that way, this package quiets the process first (mobilenet.native_stderr.quiet_command,
as train.py and eval.py do), before any tool imports TensorFlow or JAX. Imported by a test or
another program, it changes nothing.
"""
import sys

if sys.argv[:1] == ["-m"]:  # Python's argv[0] while it locates the module of `python -m`
  from mobilenet import native_stderr
  native_stderr.quiet_command()
