"""LiteRT export of a tiny trained run: numerics, int8, latency, merged results, graph check."""
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from mobilenet import model, trainer
from tools.export import ExportError, conversion, latency_table, timing
from tests.conftest import PROJECT_ROOT, write_image_folder

RESOLUTION = 32


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """Two training steps of MobileNet-0.25 at 32 px on a tiny folder, with the CPU impls."""
  from configs import dws  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("export")
  folder = write_image_folder(root / "images")
  config = dws.get_config(f"alpha=0.25,resolution={RESOLUTION},batch=8,epochs=1")
  config.data.folder = str(folder)
  config.model.num_classes = 3
  config.train.eval_batch_size = 8
  config.train.inference_benchmark_s = 0.05
  workdir = root / "run"
  workdir.mkdir()
  trainer.train_and_evaluate(config, str(workdir))
  record = json.loads((workdir / "eval_results.json").read_text())
  record["kept_by_the_merge"] = "a key another tool wrote"
  (workdir / "eval_results.json").write_text(json.dumps(record))
  return workdir


@pytest.fixture(scope="module")
def exported(trained_run):
  """The export command, run as a user runs it."""
  result = subprocess.run(
      [sys.executable, "-m", "tools.export", f"--workdir={trained_run}", "--int8",
       "--calibration_images=16", "--check_images=9", "--latency_runs=5", "--threads=2"],
      cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return trained_run, result.stdout


@pytest.mark.end_to_end
def test_export_writes_both_models_and_checks_them_against_flax(exported):
  workdir, stdout = exported
  assert (workdir / "export" / "model_fp32.tflite").stat().st_size > 10_000
  assert (workdir / "export" / "model_int8.tflite").stat().st_size > 1_000
  assert "one XNNPACK partition" in stdout
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["litert_fp32_max_rel_error"] < 1e-4
  assert results["litert_fp32_top1_agreement"] == 1.0
  assert results["litert_check_images"] == 9


@pytest.mark.end_to_end
def test_int8_top1_covers_the_whole_evaluation_split(exported):
  workdir, _ = exported
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["litert_int8_num_examples"] == 9 == results["num_examples"]
  assert results["litert_int8_top1"] * 9 == pytest.approx(round(results["litert_int8_top1"] * 9))


@pytest.mark.end_to_end
def test_latency_is_measured_for_each_thread_count_and_merged_keeping_other_keys(exported):
  workdir, _ = exported
  results = json.loads((workdir / "eval_results.json").read_text())
  for key in ("litert_fp32_ms", "litert_int8_ms", "litert_int8_top1", "litert_threads",
              "litert_fp32_max_rel_error", "litert_device"):
    assert key in results, key
  for key in ("litert_fp32_ms", "litert_int8_ms"):
    assert math.isfinite(results[key]) and results[key] > 0
  assert results["litert_threads"] == [1, 2]
  assert set(results["litert_latency"]["int8"]) == {"1", "2"}
  assert results["litert_latency"]["fp32"]["1"]["runs"] == 5
  assert results["kept_by_the_merge"] == "a key another tool wrote"
  assert results["top1"] >= 0 and results["step"] == 2  # train.py's own keys stay


def _model(**implementations):
  model_config = base.get_base_config().model
  model_config.update(num_classes=3, alpha=0.25, **implementations)
  return model.from_config(model_config)


def test_the_shifted_depthwise_export_is_refused_in_one_line():
  """The CPU training impl computes the same function as a graph XNNPACK splits up."""
  net = _model(depthwise_impl="shifted", pointwise_impl="conv", standard_impl="conv")
  variables = net.init(jax.random.key(0), jnp.zeros((1, RESOLUTION, RESOLUTION, 3)))
  content = conversion.convert(conversion.inference_fn(net, variables), RESOLUTION)
  with pytest.raises(ExportError, match="delegate partitions, not one") as error:
    conversion.check_graph(content, "shifted.tflite")
  assert "\n" not in str(error.value) and str(error.value).startswith("shifted.tflite: ")


def test_a_non_builtin_op_is_refused_before_any_interpreter_loads_it():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  @tf.function(input_signature=[tf.TensorSpec((4,), tf.float32)])
  def flex(x):
    return tf.raw_ops.Igamma(a=x, x=x)  # neither a TFLite builtin nor on the Flex list

  converter = tf.lite.TFLiteConverter.from_concrete_functions([flex.get_concrete_function()], flex)
  converter.allow_custom_ops = True  # what a graph with a Flex or custom op comes out as
  with pytest.raises(ExportError, match=r"1 non-builtin op\(s\) \(Igamma\)"):
    conversion.check_graph(converter.convert(), "flex.tflite")


@pytest.mark.end_to_end
def test_the_command_names_a_missing_workdir_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "tools.export", f"--workdir={tmp_path / 'nowhere'}"],
      cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: workdir {tmp_path / 'nowhere'} does not exist")


def test_latency_summary_has_median_quartiles_and_extremes():
  summary = timing.latency_summary([5.0, 1.0, 3.0, 2.0, 4.0])
  assert (summary["median_ms"], summary["min_ms"], summary["max_ms"], summary["runs"]) == (
      3.0, 1.0, 5.0, 5)
  assert summary["q1_ms"] <= summary["median_ms"] <= summary["q3_ms"]


def test_int8_runner_quantizes_with_the_models_own_parameters():
  net = _model(**conversion.EXPORT_IMPLS)
  variables = net.init(jax.random.key(0), jnp.zeros((1, RESOLUTION, RESOLUTION, 3)))
  content = conversion.convert(conversion.inference_fn(net, variables), RESOLUTION,
                           calibration_images=latency_table.random_images(RESOLUTION, 4))
  runner = timing.Runner(content)
  assert runner.input["dtype"] == np.int8
  scale, zero_point = runner.input["quantization"]
  quantized = runner.quantize(np.array([-1.0, 0.0, 1.0], np.float32))
  assert np.allclose((quantized.astype(np.float32) - zero_point) * scale, [-1, 0, 1], atol=scale)


def test_latency_table_markdown_names_models_as_the_paper_and_derives_its_ratios():
  latencies = lambda median: {"1": {"median_ms": median, "min_ms": median / 2, "max_ms": median * 2}}
  entries = [dict(tables="4, 6, 7", variant="dws", alpha=1.0, resolution=224, mult_adds=568_740_352,
                  latency={"fp32": latencies(12.0), "int8": latencies(4.0)}),
             dict(tables="5, 6", variant="dws", alpha=0.75, resolution=224, mult_adds=325_400_448,
                  latency={"fp32": latencies(7.0), "int8": latencies(3.5)}),
             dict(tables="4", variant="conv", alpha=1.0, resolution=128, mult_adds=1_589_000_000,
                  latency={"fp32": latencies(35.0), "int8": latencies(7.0)})]
  table = dict(device="cpu: test", runtime="LiteRT", weights="untrained", rounds=5,
               round_s_per_model=1.0, load_average={"before": [0.5], "after_round_5": [0.7]},
               threads=[1], models=entries)
  rows = [line for line in latency_table.format_latency_markdown(table).splitlines()
          if line.startswith("| ") and "Model" not in line]
  assert [row.split(" | ")[0] for row in rows] == [
      "| 1.0 MobileNet-224", "| 0.75 MobileNet-224", "| Conv MobileNet-128"]
  assert rows[0].endswith("| 12.00 [6.00–24.00] | 4.00 [2.00–8.00] | 3.00x | 2.11 |")
  assert "| 5.00x |" in rows[2]
