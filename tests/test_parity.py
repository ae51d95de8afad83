"""The PyTorch twin trains what train.py trains: the same function, learning rates, decayed
kernels and optimizer updates; its runs resume exactly; compare writes the parity record.
Skipped where PyTorch (an optional, benchmark-only dependency) is not installed."""
import json
import pathlib
import signal

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from configs import dws  # pylint: disable=wrong-import-position
from mobilenet import model, optim, trainer
from tools import parity, torch_twin  # pylint: disable=wrong-import-position
from tests.conftest import PROJECT_ROOT, write_image_folder  # pylint: disable=wrong-import-position

TINY = "alpha=0.25,resolution=32,batch=4,epochs=1"
# 18 train images at batch 4: 4 steps, evaluated (and checkpointed) after step 2 and at the end.
TINY_FLAGS = ["--config.model.num_classes=3", "--config.train.eval_batch_size=4",
              "--config.train.eval_every_steps=2", "--config.train.log_every_steps=1"]


def _config(folder=None, **optimizer):
  config = dws.get_config(TINY)
  config.model.num_classes = 3
  config.train.eval_batch_size = 4
  config.train.eval_every_steps = 2
  config.train.log_every_steps = 1
  if folder is not None:
    config.data.folder = str(folder)
  config.optimizer.update(optimizer)
  return config


def _flax_variables(config, rng):
  """Variables of the Flax model's shapes, random but for a live network: kernels of variance
  1 / fan_in, BatchNorm statistics and affine parameters away from 0 and 1, so that every
  tensor's place and layout matters. (Built from shapes: Flax's eager init takes seconds.)"""
  net = model.from_config(config.model)
  shapes = jax.eval_shape(net.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))

  def value(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    low, high = (0.5, 1.5) if name in ("scale", "var") else (0.0, 0.3)
    return rng.uniform(low, high, shape).astype(np.float32)
  return net, jax.tree_util.tree_map_with_path(value, shapes)


def test_the_twin_in_eval_mode_is_the_flax_models_function():
  """Same layers, padding and BatchNorm. At 40 px the stride-2 layers meet even sizes (TF pads
  0 before, 1 after) and odd ones (1 and 1)."""
  config = _config()
  rng = np.random.default_rng(0)
  net, variables = _flax_variables(config, rng)
  twin = torch_twin.build_model(config)
  torch_twin.load_flax_variables(twin, variables)
  twin.eval()
  for resolution in (40,):
    images = rng.standard_normal((2, resolution, resolution, 3)).astype(np.float32)
    expected = np.asarray(jax.jit(lambda x: net.apply(variables, x, train=False))(images))
    with torch.no_grad():
      got = twin(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    scale = np.abs(expected).max()
    assert scale > 0.1  # not a trivial (dead) function
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)


def test_the_twin_starts_from_flaxs_initialisation_scheme():
  """lecun_normal kernels (a normal truncated at 2 sigma, variance 1 / fan_in), zero bias,
  BatchNorm at scale 1 and offset 0; seeded, so the same seed starts the same network."""
  config = _config()
  torch.manual_seed(0)
  twin = torch_twin.build_model(config)
  for name, param in twin.named_parameters():
    values = param.detach().numpy()
    if name.endswith("conv.weight") or name == "classifier.weight":
      fan_in = param[0].numel()
      if values.size >= 4096:
        assert values.std() == pytest.approx(fan_in ** -0.5, rel=0.1), name
      assert np.abs(values).max() <= 2 * fan_in ** -0.5 / 0.8796 + 1e-6, name
    else:
      assert np.all(values == (1.0 if name.endswith("bn.weight") else 0.0)), name
  torch.manual_seed(0)
  again = torch_twin.build_model(config)
  assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), again.parameters()))


def test_the_same_padding_is_tfs():
  assert torch_twin.same_padding(32, 3, 2) == (0, 1)  # even: the extra pixel after
  assert torch_twin.same_padding(5, 3, 2) == (1, 1)
  assert torch_twin.same_padding(7, 3, 1) == (1, 1)


@pytest.mark.parametrize("decay_depthwise", [False, True])
def test_the_twin_decays_exactly_the_kernels_optims_mask_decays(decay_depthwise):
  config = _config()
  params = jax.eval_shape(model.from_config(config.model).init, jax.random.key(0),
                          np.zeros((1, 32, 32, 3), np.float32))["params"]
  mask = optim.weight_decay_mask(params, decay_depthwise=decay_depthwise)
  expected = {"/".join(key.key for key in path)
              for path, decays in jax.tree_util.tree_leaves_with_path(mask) if decays}
  twin = torch_twin.build_model(config)
  got = {"/".join(torch_twin.flax_location(name)[1])
         for name in torch_twin.decayed_parameter_names(twin, decay_depthwise)}
  assert got == expected
  assert any(name.endswith("_dw/conv/kernel") for name in got) == decay_depthwise
  config.optimizer.weight_decay_on_depthwise = decay_depthwise
  decayed, spared = torch_twin.create_optimizer(config.optimizer, twin, 0.1).param_groups
  assert len(decayed["params"]) == len(expected) and spared["weight_decay"] == 0


@pytest.mark.parametrize("optimizer", [
    dict(name="sgd", weight_decay=0.05, grad_clip_norm=0.5),  # decay, Nesterov and clipping
    dict(name="adamw", weight_decay=0.05, grad_clip_norm=0.0),
])
def test_the_twins_updates_are_optims_at_optims_learning_rates(optimizer):
  """Three steps of the same gradients through optim.create_optimizer and through the twin's
  optimizer, the latter fed the schedule's rate per step as parity's training feeds it."""
  config = _config(**optimizer)
  steps_per_epoch, total_steps = 2, 6
  schedule = optim.learning_rate_schedule(config.optimizer, global_batch_size=4,
                                          steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  rates = parity.learning_rates(config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  assert rates == pytest.approx([float(schedule(step)) for step in range(total_steps)], rel=1e-7)
  assert rates[0] == 0 and max(rates) == pytest.approx(optim.peak_learning_rate(config.optimizer, 4))

  rng = np.random.default_rng(1)
  _, variables = _flax_variables(config, rng)
  params = variables["params"]
  tx = optim.create_optimizer(config.optimizer, schedule, params)
  opt_state = tx.init(params)
  update = jax.jit(tx.update)  # one compilation instead of hundreds of eager ops
  twin = torch_twin.build_model(config)
  torch_twin.load_flax_variables(twin, variables)
  twin_optimizer = torch_twin.create_optimizer(config.optimizer, twin, rates[0])
  for step in range(3):
    grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
    updates, opt_state = update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    torch_grads = torch_twin.state_dict_from_flax(
        twin, {"params": grads, "batch_stats": variables["batch_stats"]})
    for name, param in twin.named_parameters():
      param.grad = torch_grads[name].clone()
    for group in twin_optimizer.param_groups:
      group["lr"] = rates[step]
    torch_twin.clip_by_global_norm(twin.parameters(), config.optimizer.grad_clip_norm)
    twin_optimizer.step()
  expected = torch_twin.state_dict_from_flax(
      twin, {"params": params, "batch_stats": variables["batch_stats"]})
  for name, param in twin.named_parameters():
    np.testing.assert_allclose(param.detach().numpy(), expected[name].numpy(), rtol=1e-5,
                               atol=1e-6, err_msg=name)


class Killed(BaseException):
  """Where the process would die: nothing after the step runs, no handler catches it."""


def _kill():
  raise Killed()


def _send_sigterm():
  """As preemption arrives, but delivered to this process at a chosen step, not at a moment."""
  signal.raise_signal(signal.SIGTERM)


def _after_step(step: int, action) -> trainer.Hooks:
  return trainer.Hooks(step_done=lambda done: action() if done == step else None)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
  """An uninterrupted 4-step run, and one killed after step 3 (its checkpoint is step 2's),
  then resumed by the same command."""
  root = tmp_path_factory.mktemp("parity")
  folder = write_image_folder(root / "images")
  whole, resumed = root / "whole", root / "resumed"
  config = _config(folder)
  whole.mkdir()
  parity.train_and_evaluate(config, str(whole))
  with pytest.raises(Killed):
    parity.train_and_evaluate(config, str(resumed), _after_step(3, _kill))
  assert torch.load(parity.checkpoint_path(str(resumed)), weights_only=True)["step"] == 2
  parity.train_and_evaluate(config, str(resumed))
  return folder, whole, resumed


@pytest.mark.end_to_end
def test_a_killed_run_resumes_to_what_an_uninterrupted_run_ends_with(tiny_runs, capsys):
  folder, whole, resumed = tiny_runs
  ends = [torch.load(parity.checkpoint_path(str(w)), weights_only=True) for w in (whole, resumed)]
  assert ends[0]["step"] == ends[1]["step"] == 4
  for name, value in ends[0]["model"].items():
    assert torch.equal(value, ends[1]["model"][name]), name
  momentum = [[s["momentum_buffer"] for s in e["optimizer"]["state"].values()] for e in ends]
  assert all(torch.equal(a, b) for a, b in zip(*momentum)) and momentum[0]
  results = [json.loads((w / "eval_results.json").read_text()) for w in (whole, resumed)]
  for key in ("top1", "top5", "loss", "step", "seed", "variant", "alpha", "resolution"):
    assert results[0][key] == results[1][key], key
  assert results[1]["framework"] == "torch" and results[1]["train_wall_s"] > 0
  assert results[1]["train_images_per_s"] > 0
  assert json.loads((resumed / "config.json").read_text())["seed"] == 0
  # Per step, the learning rate of optim's schedule; an evaluation at each half epoch.
  lines = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
  schedule = optim.learning_rate_schedule(_config().optimizer, global_batch_size=4,
                                          steps_per_epoch=4, total_steps=4)
  train = [line for line in lines if line["kind"] == "train"]
  assert [line["step"] for line in train] == [1, 2, 3, 4]
  assert [line["learning_rate"] for line in train] == pytest.approx(
      [float(schedule(step - 1)) for step in (1, 2, 3, 4)])
  evals = [line for line in lines if line["kind"] == "eval"]
  assert [(line["step"], line["epoch"], line["count"]) for line in evals] == [(2, 0.5, 9),
                                                                            (4, 1.0, 9)]
  # A finished run says so and changes nothing.
  before = (resumed / "metrics.jsonl").read_text()
  assert parity.train_and_evaluate(_config(folder), str(resumed))["already_finished"]
  assert "already finished" in capsys.readouterr().out
  assert (resumed / "metrics.jsonl").read_text() == before


@pytest.mark.end_to_end
def test_a_sigterm_saves_the_step_it_arrived_at_and_the_run_resumes_to_the_uninterrupted_end(
    tiny_runs, tmp_path):
  folder, whole, _ = tiny_runs
  preempted = tmp_path / "preempted"
  assert parity.train_and_evaluate(_config(folder), str(preempted),
                                   _after_step(3, _send_sigterm)) == {"preempted_at": 3}
  assert torch.load(parity.checkpoint_path(str(preempted)), weights_only=True)["step"] == 3
  assert not (preempted / "eval_results.json").exists()
  parity.train_and_evaluate(_config(folder), str(preempted))
  ends = [torch.load(parity.checkpoint_path(str(w)), weights_only=True) for w in (whole, preempted)]
  assert ends[1]["step"] == 4
  for name, value in ends[0]["model"].items():
    assert torch.equal(value, ends[1]["model"][name]), name


@pytest.mark.end_to_end
def test_compare_writes_the_parity_record_and_plot(tiny_runs, tmp_path, capsys):
  _, whole, resumed = tiny_runs
  committed_runs = PROJECT_ROOT / "results" / "untuned_10_epochs" / "runs"
  jax_runs = [str(committed_runs / f"dws_a1_r128_s{seed}") for seed in (0, 1)]
  out = tmp_path / "parity"
  assert parity.TOOL.call(["compare", "--jax", *jax_runs, "--torch", str(whole), str(resumed),
                              "--out", str(out)]) == 0
  record = json.loads((out / "parity.json").read_text())
  committed = [json.loads(pathlib.Path(run, "eval_results.json").read_text())["top1"]
               for run in jax_runs]
  assert record["jax_top1"] == committed and record["jax_seeds"] == [0, 1]
  assert record["torch_top1"] == [record["torch_top1"][0]] * 2
  assert record["jax_top1_mean"] == pytest.approx(np.mean(committed))
  for key in ("jax_top1_std", "jax_top1_range", "torch_top1_mean", "torch_top1_std",
              "torch_minus_jax_top1", "recipe_differences"):
    assert key in record, key
  jax_curve = record["curves"]["jax"][0]
  assert jax_curve["epochs"] == pytest.approx(list(range(1, 11)))
  assert jax_curve["top1_per_epoch"][-1] == committed[0]
  assert record["curves"]["torch"][0]["epochs"] == [0.5, 1.0]
  assert "data.resolution" in record["recipe_differences"][str(whole)]
  assert (out / "parity.png").stat().st_size > 0
  assert "recipe" in capsys.readouterr().err  # the differing recipes are said, not hidden
  # A run given as the wrong framework is refused in one line naming it.
  assert parity.TOOL.call(["compare", "--jax", str(whole), "--torch", str(resumed),
                              "--out", str(out)]) == 1
  assert f"{whole}: a torch run, given as --jax" in capsys.readouterr().err
