"""`python -m tools.report`: see the package's docstring."""
from tools.report import command

command.TOOL.start()
