"""The benchmark times the training step train.py runs, names what it ran with, and reports its
memory; no timings are asserted (a shared machine makes them meaningless)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mobilenet import allocator, devices, model, ops, optim, steps
from tools import lanes
from tools.benchmark import lanes_comparison, measure, models, op_timings
from configs import dws
from conftest import unpinned

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config():
  config = dws.get_config("alpha=0.25")
  return models.benchmark_config(config, batch=2, resolution=32)


def test_every_concrete_depthwise_implementation_gets_a_row():
  assert op_timings.depthwise_impls() == tuple(i for i in ops.DEPTHWISE_IMPLS if i != "auto")
  assert "shifted" in op_timings.depthwise_impls() and "grouped" in op_timings.depthwise_impls()


def test_the_jax_step_is_the_trainers_built_by_the_same_function(monkeypatch):
  """Spies on the function the trainer builds its step with: the benchmark must call it, not
  a copy."""
  called = []

  def spy(module, name):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
      called.append(name)
      return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)

  for module, name in ((steps, "build"), (optim, "learning_rate_schedule"),
                       (optim, "create_optimizer")):
    spy(module, name)
  jax_model = models.JaxModel(_tiny_config(), "dws")
  assert called == ["build", "learning_rate_schedule", "create_optimizer"]
  jax_model.train()
  jax_model.train()
  assert isinstance(jax_model.state, steps.TrainState)
  assert int(jax_model.state.step) == 2  # the state train.py checkpoints, advanced per step
  jax_model.predict()


def test_the_torch_twin_decays_the_kernels_our_mask_decays():
  torch = pytest.importorskip("torch")
  config = _tiny_config()
  twin = models.TorchModel(config, "dws", threads=1)
  decayed, spared = twin.optimizer.param_groups
  assert decayed["weight_decay"] == config.optimizer.weight_decay and spared["weight_decay"] == 0
  assert decayed["nesterov"] and decayed["momentum"] == config.optimizer.momentum
  assert decayed["lr"] == optim.peak_learning_rate(config.optimizer, 2)
  # One decayed tensor per conv or dense kernel optax decays, of the same sizes.
  net = model.from_config(config.model)
  params = net.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
  mask = optim.weight_decay_mask(params, decay_depthwise=False)
  ours = sorted(int(np.prod(p.shape)) for p, m in zip(jax.tree.leaves(params),
                                                      jax.tree.leaves(mask)) if m)
  theirs = sorted(p.numel() for p in decayed["params"])
  assert ours == theirs
  assert isinstance(twin.net.classifier, torch.nn.Linear)
  twin.train()


@pytest.mark.end_to_end
def test_a_tiny_run_reports_speed_memory_and_what_it_ran_with():
  environment = {k: v for k, v in os.environ.items() if k != allocator.CHOICE_VARIABLE}
  environment["JAX_PLATFORMS"] = "cpu"
  process = subprocess.run(
      [sys.executable, "-m", "tools.benchmark", "--config=configs/dws.py:alpha=0.25",
       "--batch=4", "--resolution=32", "--steps=1", "--rounds=1", "--warmup=0", "--json"],
      cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=environment)
  assert process.returncode == 0, process.stderr[-2000:]
  report = json.loads(process.stdout.strip().splitlines()[-1])
  for key in ("train_images_per_s", "infer_images_per_s", "peak_rss_bytes", "allocator",
              "depthwise_impl", "depthwise_impl_config", "device"):
    assert key in report, key
  assert "torch_train_images_per_s" not in report
  assert report["train_images_per_s"] > 0 and report["infer_images_per_s"] > 0
  assert report["peak_rss_bytes"] > 2**20
  assert report["depthwise_impl_config"] == "auto"
  assert report["depthwise_impl"] == ops.resolve_depthwise_impl("auto")
  assert report["device"] == devices.description()
  allocator_lines = [line for line in process.stderr.splitlines() if line.startswith("allocator:")]
  assert allocator_lines == [report["allocator_log"]]  # one line, in the process that ran
  expected = allocator.decide(environment, linux=sys.platform.startswith("linux"), cpu_only=True)
  assert report["allocator"] == expected.allocator


def test_each_listed_standard_impl_times_a_step_built_with_it_once(monkeypatch):
  built = []
  real_init = models.JaxModel.__init__

  def recording_init(self, config, variant):
    built.append((variant, config.model.standard_impl))
    real_init(self, config, variant)

  monkeypatch.setattr(models.JaxModel, "__init__", recording_init)
  results = measure.measure(_tiny_config(), ["dws"], steps=1, rounds=1, warmup=0,
                              with_torch=False, threads=1,
                              standard_impls=("conv", "matmul_grad"))
  # auto resolves to matmul_grad on a CPU: that entry reuses the config's own step.
  assert ops.resolve_standard_impl("auto") == "matmul_grad"
  assert built == [("dws", "auto"), ("dws", "conv")]
  impls = results["dws"]["standard_impls"]
  assert list(impls) == ["conv", "matmul_grad"]
  assert [impls[impl]["resolved"] for impl in impls] == ["conv", "matmul_grad"]
  assert impls["conv"]["train_images_per_s"] > 0
  assert impls["matmul_grad"]["train_images_per_s"] == results["dws"]["train_images_per_s"]


def test_ynn_convolutions_times_a_second_step_compiled_with_jaxlibs_default(monkeypatch):
  built = []
  real_init = models.JaxModel.__init__

  def recording_init(self, config, variant, ynn_convolutions=False, memory_scheduler=False):
    built.append(ynn_convolutions)
    real_init(self, config, variant, ynn_convolutions)

  monkeypatch.setattr(models.JaxModel, "__init__", recording_init)
  results = measure.measure(_tiny_config(), ["dws"], steps=1, rounds=1, warmup=0,
                            with_torch=False, threads=1, ynn_convolutions=True)
  assert built == [False, True]
  ynn = results["dws"]["ynn_convolutions"]
  assert ynn["train_images_per_s"] > 0
  assert ynn["compiler_options"] == ops.compiler_options(ynn_convolutions=True) != {}


def test_memory_scheduler_times_a_second_step_and_reports_both_steps_temporaries():
  results = measure.measure(_tiny_config(), ["dws"], steps=1, rounds=1, warmup=0,
                            with_torch=False, threads=1, memory_scheduler=True)
  low = results["dws"]["memory_scheduler"]
  assert low["train_images_per_s"] > 0
  assert low["compiler_options"] == ops.compiler_options(memory_scheduler=True)
  # Which is smaller depends on the model's size: at 32 px and batch 2 the orders are close.
  assert low["train_temp_bytes"] > 0 and results["dws"]["train_temp_bytes"] > 0


@pytest.mark.end_to_end
def test_an_unknown_standard_impl_is_one_line_naming_the_flag():
  process = subprocess.run(
      [sys.executable, "-m", "tools.benchmark", "--config=configs/dws.py:alpha=0.25",
       "--standard_impls=conv,fastest"],
      cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert process.returncode == 1
  assert process.stderr.strip().splitlines()[-1] == (
      "error: --standard_impls: standard_impl must be one of auto, conv, matmul_grad; "
      "got 'fastest'")


def test_lanes_compare_one_run_on_every_core_with_pinned_copies_at_once(monkeypatch):
  monkeypatch.setattr(lanes, "available_cpus", lambda: [0, 1, 2, 3])
  batches = []

  def run_children(commands):
    batches.append([unpinned(command) for command in commands])
    return [{"train_images_per_s": 70.0 if len(commands) == 1 else 40.0 + index}
            for index in range(len(commands))]

  report = lanes_comparison.compare_lanes(["python", "-m", "tools.benchmark", "--json"], 2,
                                   run_children)
  assert batches == [[(["python", "-m", "tools.benchmark", "--json"], None)],
                     [(["python", "-m", "tools.benchmark", "--json"], (0, 1)),
                      (["python", "-m", "tools.benchmark", "--json"], (2, 3))]]
  assert report["lanes_train_images_per_s"] == 81.0
  assert report["lanes_over_one_run"] == pytest.approx(81.0 / 70.0)


def test_the_lane_copies_get_this_commands_flags_but_lanes_and_json():
  assert lanes_comparison.child_flags(["--lanes", "2", "--batch=64", "--json", "--lanes=3",
                                 "--resolution", "128"]) == ["--batch=64", "--resolution", "128"]
