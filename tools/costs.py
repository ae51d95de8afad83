"""The exact mult-adds and parameters of a MobileNet, layer by layer, with the paper's Table 2
shares: `python -m tools.costs --variant dws --alpha 0.75 --resolution 224 [--json]`."""
import argparse
import json
import sys

from mobilenet import costs as costs_lib
from mobilenet import model


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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tools.costs", description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="dws", help=f"one of {', '.join(model.VARIANTS)}")
  parser.add_argument("--alpha", type=float, default=1.0, help="width multiplier")
  parser.add_argument("--resolution", type=int, default=224, help="input height and width")
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  try:
    costs = costs_lib.count(args.variant, args.alpha, args.resolution, args.num_classes)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(costs.to_json()) if args.json else format_table(costs))
  return 0


if __name__ == "__main__":
  sys.exit(main())
