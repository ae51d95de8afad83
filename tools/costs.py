"""The exact mult-adds and parameters of a MobileNet, layer by layer, with the paper's Table 2
shares: `python -m tools.costs --variant dws --alpha 0.75 --resolution 224 [--json]`."""
import json

from absl import flags

from mobilenet import costs as costs_lib
from mobilenet import errors, model
from tools import command_line


def format_table(costs: costs_lib.Costs) -> str:
  rows = [f"{costs.variant} alpha={costs.alpha} resolution={costs.resolution} "
          f"classes={costs.num_classes}",
          f"{'layer':<16}{'type':<17}{'output':>16}{'mult-adds':>14}{'params':>12}"]
  for layer in costs.layers:
    shape = "x".join(str(d) for d in layer.output_shape)
    rows.append(f"{layer.name:<16}{layer.type:<17}{shape:>16}{layer.mult_adds:>14,}"
                f"{layer.params:>12,}")
  rows.append(f"{'total':<49}{costs.mult_adds:>14,}{costs.params:>12,}")
  rows.append(f"= {costs.mult_adds / 1e6:.0f} million mult-adds, "
              f"{costs.params / 1e6:.1f} million parameters")
  rows.append("")
  rows.append(f"{'type':<17}{'mult-adds':>10}{'weights':>10}   (shares, as in the paper's Table 2)")
  for kind, share in costs.breakdown().items():
    rows.append(f"{kind:<17}{share['mult_adds']:>10.2%}{share['weights']:>10.2%}")
  return "\n".join(rows)


def define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string("variant", "dws", f"one of {', '.join(model.VARIANTS)}",
                      flag_values=flag_values)
  flags.DEFINE_float("alpha", 1.0, "width multiplier", flag_values=flag_values)
  flags.DEFINE_integer("resolution", 224, "input height and width", flag_values=flag_values)
  flags.DEFINE_integer("num_classes", 1000, "classifier outputs", flag_values=flag_values)
  flags.DEFINE_boolean("json", False, "print one JSON object", flag_values=flag_values)


def main(command: command_line.CommandLine) -> None:
  values = command.flags
  try:
    costs = costs_lib.count(values.variant, values.alpha, values.resolution, values.num_classes)
  except ValueError as error:
    raise errors.ConfigError(str(error)) from None
  print(json.dumps(costs.to_json()) if values.json else format_table(costs))


TOOL = command_line.Tool(define_flags, main)

if __name__ == "__main__":
  TOOL.start()
