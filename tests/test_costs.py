"""The cost counter reproduces the paper's figures and agrees with the model and with XLA."""
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import base
from mobilenet import costs, model
from tools import costs as costs_tool

# (variant, alpha, resolution) -> (million mult-adds, million parameters) as printed in the paper.
PAPER_ROWS = {
    # Table 4
    ("dws", 1.0, 224): (569, 4.2),
    ("conv", 1.0, 224): (4866, 29.3),
    # Table 5
    ("dws", 0.75, 224): (325, 2.6),
    ("shallow", 1.0, 224): (307, 2.9),
    # Table 6
    ("dws", 0.5, 224): (149, 1.3),
    ("dws", 0.25, 224): (41, 0.5),
    # Table 7
    ("dws", 1.0, 192): (418, 4.2),
    ("dws", 1.0, 160): (290, 4.2),
    ("dws", 1.0, 128): (186, 4.2),
}

# Two printed mult-add figures are one off the paper's own arithmetic, and we keep the arithmetic:
# - 160 px: the exact count is 290.68M (TF-slim's table prints 291); the paper's 290 matches
#   569M * (160/224)^2 = 290.3M, a scaled figure.
# - Conv MobileNet: the exact count is 4867.29M; the paper's 4866 is what remains without the
#   classifier's 1.02M, which its other rows do include.
PAPER_OFF_BY_ONE = {("dws", 1.0, 160), ("conv", 1.0, 224)}

# Table 2 (MobileNet 1.0-224): share of mult-adds and of weights per layer type. The paper prints
# 1.19% for Conv 3x3's mult-adds: the first layer's 10.84M of 568.7M is 1.91% (the four printed
# shares only sum to 100% with 1.91), so we check the digits transposed.
PAPER_TABLE_2 = {
    model.CONV_1X1: (94.86, 74.59),
    model.CONV_DW_3X3: (3.06, 1.06),
    model.CONV_3X3: (1.91, 0.02),
    model.FC: (0.18, 24.33),
}


@pytest.mark.parametrize("row", sorted(PAPER_ROWS))
def test_counts_round_to_the_papers_printed_figures(row):
  paper_mult_adds, paper_params = PAPER_ROWS[row]
  result = costs.count(*row, num_classes=1000)
  assert round(result.params / 1e6, 1) == paper_params
  allowed = 1 if row in PAPER_OFF_BY_ONE else 0
  assert abs(round(result.mult_adds / 1e6) - paper_mult_adds) <= allowed


def test_exact_counts_of_the_base_models():
  assert costs.count("dws").mult_adds == 568_740_352
  assert costs.count("dws").params == 4_231_976
  assert costs.count("conv").mult_adds == 4_867_293_184


def test_table_2_breakdown_matches_the_paper_to_printed_precision():
  shares = costs.count("dws").breakdown()
  assert set(shares) == set(PAPER_TABLE_2)
  for kind, (mult_adds_percent, weights_percent) in PAPER_TABLE_2.items():
    assert round(100 * shares[kind]["mult_adds"], 2) == mult_adds_percent, kind
    assert round(100 * shares[kind]["weights"], 2) == weights_percent, kind


def _trainable_param_count(variant, alpha, resolution, num_classes):
  model_config = base.get_base_config().model
  model_config.update(num_classes=num_classes, variant=variant, alpha=alpha)
  net = model.from_config(model_config)
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("variant", model.VARIANTS)
@pytest.mark.parametrize("alpha,num_classes", [(1.0, 1000), (0.25, 10), (0.6, 37)])
def test_analytic_params_equal_the_flax_models_trainable_params(variant, alpha, num_classes):
  expected = costs.count(variant, alpha, 128, num_classes).params
  assert _trainable_param_count(variant, alpha, 128, num_classes) == expected


def _in_bounds_taps(size, stride, kernel):
  """Kernel taps that land inside the image along one axis, with 'SAME' padding."""
  out = math.ceil(size / stride)
  pad_before = max((out - 1) * stride + kernel - size, 0) // 2
  return sum(0 <= o * stride + k - pad_before < size for o in range(out) for k in range(kernel))


def _mult_adds_without_padding(variant, alpha, resolution):
  """The paper's count minus the multiplications by 'SAME' padding zeros, which XLA skips."""
  total, size = 0, resolution
  for layer in model.architecture(variant, alpha, 1000):
    if layer.kind == model.FC:
      total += layer.in_channels * layer.out_channels
      continue
    taps = _in_bounds_taps(size, layer.stride, layer.kernel_size) ** 2
    total += taps * layer.in_channels // layer.groups * layer.out_channels
    size = math.ceil(size / layer.stride)
  return total


@pytest.mark.parametrize("variant,alpha,resolution",
                         [("dws", 1.0, 224), ("conv", 0.5, 128), ("shallow", 0.75, 160),
                          ("dws", 0.25, 96)])
def test_analytic_mult_adds_agree_with_xla_cost_analysis(variant, alpha, resolution):
  """XLA counts 2 flops per multiply-add, skips taps on padding zeros, and also counts the
  inference BatchNorm, ReLU, pooling and bias: a few flops per activation. So XLA's flops must be
  2 x (our count less padding taps) plus between 0 and 8 flops per conv output element."""
  model_config = base.get_base_config().model
  model_config.update(num_classes=1000, variant=variant, alpha=alpha, depthwise_impl="grouped",
                      pointwise_impl="conv")
  net = model.from_config(model_config)
  images = jnp.zeros((1, resolution, resolution, 3))
  variables = jax.eval_shape(net.init, jax.random.key(0), images)
  compiled = jax.jit(net.apply).lower(variables, images).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  layer_costs = costs.count(variant, alpha, resolution).layers
  activations = sum(math.prod(layer.output_shape) for layer in layer_costs[:-1])
  padding_taps = costs.count(variant, alpha, resolution).mult_adds - _mult_adds_without_padding(
      variant, alpha, resolution)
  assert padding_taps >= 0
  elementwise = analysis["flops"] - 2 * _mult_adds_without_padding(variant, alpha, resolution)
  assert 0 <= elementwise <= 8 * activations, (elementwise / activations)


def _run_costs_cli(*args):
  return subprocess.run([sys.executable, "-m", "tools.costs", *args],
                        capture_output=True, text=True, check=False)


@pytest.mark.end_to_end
def test_cli_json_reports_integers_and_per_layer_rows():
  result = _run_costs_cli("--variant", "dws", "--alpha", "0.75", "--resolution", "224", "--json")
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  assert report["mult_adds"] == costs.count("dws", 0.75, 224).mult_adds
  assert isinstance(report["mult_adds"], int) and isinstance(report["params"], int)
  assert round(report["mult_adds"] / 1e6) == 325
  first = report["layers"][0]
  assert set(first) >= {"name", "type", "output_shape", "mult_adds", "params"}
  assert first["output_shape"] == [112, 112, 24]
  assert sum(layer["mult_adds"] for layer in report["layers"]) == report["mult_adds"]


def test_cli_prints_a_human_table_by_default(capsys):
  assert costs_tool.TOOL.call(["--variant", "conv", "--num_classes", "10"]) == 0
  printed = capsys.readouterr().out
  assert "block_13_conv" in printed and "Conv 3x3" in printed


@pytest.mark.parametrize("args,field", [
    (["--alpha", "0"], "alpha"),
    (["--alpha", "-1"], "alpha"),
    (["--resolution", "16"], "resolution"),
    (["--variant", "resnet"], "variant"),
    (["--num_classes", "0"], "num_classes"),
])
def test_cli_rejects_bad_arguments_with_one_line(args, field, capsys):
  assert costs_tool.TOOL.call(args) != 0
  error = capsys.readouterr().err
  assert field in error and "Traceback" not in error
  assert len(error.strip().splitlines()) == 1
