"""How every tool reads its command line: absl flags, started through mobilenet.cli.run as
train.py and eval.py are, so that a mistake prints one line (`error: ...`, exit status 1).

A tool defines its flags in a function, not at import, so that tests and other tools may import
several tools into one process (their flags share names: --lanes, --seeds, --out, ...); its
`main(command_line)` raises a mobilenet.errors.UserError for a mistake the user can fix.
"""
import dataclasses
import sys
from typing import Callable, Sequence

from absl import flags

from mobilenet import errors


@dataclasses.dataclass(frozen=True)
class CommandLine:
  """What a tool was given: its parsed flags, the words that are not flags (a sub-command, the
  paths of a report), and everything after `--`, passed on untouched (to train.py, say)."""
  flags: flags.FlagValues
  arguments: list[str]
  passed_on: list[str]


def split_at_double_dash(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """argv before `--`, and after it; absl would drop the `--` and mix the two."""
  argv = list(argv)
  if "--" not in argv:
    return argv, []
  split = argv.index("--")
  return argv[:split], argv[split + 1:]


def spread_values(argv: Sequence[str], names: Sequence[str]) -> list[str]:
  """`--name A B C` as `--name=A --name=B --name=C` for these multi-value flags: the way the
  documented command lines give several workdirs (a shell's `dws_s{0,1,2}`) keeps working."""
  spread, current = [], None
  for arg in argv:
    if current is not None and not arg.startswith("-"):
      spread.append(f"--{current}={arg}")
      continue
    current = arg[2:] if arg.startswith("--") and arg[2:] in names else None
    if current is None:
      spread.append(arg)
  return spread


@dataclasses.dataclass(frozen=True)
class Tool:
  """A tool's command line: its flags, its main, and what it takes besides flags."""
  define_flags: Callable[[flags.FlagValues], None]
  main: Callable[[CommandLine], None]
  takes_arguments: bool = False  # words that are not flags (a sub-command, paths)
  passes_on: bool = False  # everything after `--` goes to main untouched
  several_values: tuple[str, ...] = ()  # multi-value flags written `--flag A B C`

  def _split(self, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    before, after = split_at_double_dash(argv) if self.passes_on else (list(argv), [])
    return spread_values(before, self.several_values), after

  def call(self, args: Sequence[str]) -> int:
    """Runs the command line `args` (without the program name) in this process, with flags of
    its own: as `python -m` runs it, but returning its exit status, for tests."""
    argv, passed_on = self._split(["tool", *args])
    flag_values = flags.FlagValues()
    self.define_flags(flag_values)
    arguments = flag_values(argv)[1:]
    if arguments and not self.takes_arguments:
      raise flags.Error(f"unexpected arguments: {' '.join(arguments)}")
    try:
      self.main(CommandLine(flag_values, arguments, passed_on))
    except errors.UserError as error:
      print(f"error: {error}", file=sys.stderr, flush=True)
      return 1
    return 0

  def start(self) -> None:
    """`python -m tools.<name>`: the tool's flags in absl's registry, run by cli.run."""
    # pylint: disable=import-outside-toplevel  (mobilenet.cli imports TensorFlow: only to run)
    from mobilenet import cli
    sys.argv, passed_on = self._split(sys.argv)
    self.define_flags(flags.FLAGS)
    cli.run(lambda argv: self.main(CommandLine(flags.FLAGS, argv[1:], passed_on)),
            takes_arguments=self.takes_arguments)
