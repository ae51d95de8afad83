"""Training end to end through the real commands, exact resume, and data parallelism."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import PROJECT_ROOT

TINY = "alpha=0.25,resolution=32,batch=8"


def _run(script, *args, env=None, check=True):
  result = subprocess.run([sys.executable, script, *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
  return result


def _train_flags(folder, workdir, epochs=2, **overrides):
  flags = [f"--config=configs/dws.py:{TINY},epochs={epochs}",
           f"--workdir={workdir}",
           f"--config.data.folder={folder}",
           "--config.model.num_classes=3",
           "--config.train.eval_batch_size=8",
           "--config.train.log_every_steps=1",
           "--config.train.inference_benchmark_s=0.1",
           "--config.optimizer.learning_rate=0.4"]
  return flags + [f"--config.{key}={value}" for key, value in overrides.items()]


def _final_state(workdir):
  steps = sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                 if p.name.isdigit())
  path = pathlib.Path(workdir) / "checkpoints" / str(steps[-1]) / "state"
  # The checkpoint may come from another device count: restore onto this process's one device.
  single_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  return steps[-1], checkpointer.restore(
      path.absolute(), args=ocp.args.StandardRestore(fallback_sharding=single_device))


def test_train_resume_eval_and_report_through_the_commands(tiny_image_folder, tmp_path):
  workdir = tmp_path / "run"
  first = _run("train.py", *_train_flags(tiny_image_folder, workdir, epochs=1))
  assert "final eval at step 2" in first.stdout
  assert (workdir / "checkpoints" / "2").is_dir()
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"train", "eval"} == {r["kind"] for r in records}
  assert all(key in records[0] for key in ("loss", "accuracy", "learning_rate", "images_per_s",
                                           "step_time_s"))
  assert list((workdir / "tensorboard").iterdir())

  second = _run("train.py", *_train_flags(tiny_image_folder, workdir, epochs=2))
  assert "Resumed from the checkpoint of step 2" in second.stdout
  assert "final eval at step 4" in second.stdout
  trained = json.loads((workdir / "eval_results.json").read_text())
  # Time and speed cover both sessions: 4 steps of 8 images.
  assert trained["train_images_per_s"] == pytest.approx(4 * 8 / trained["train_wall_s"])
  assert trained["session_train_wall_s"] > 0

  (workdir / "eval_results.json").unlink()
  _run("eval.py", f"--config=configs/dws.py:{TINY}", f"--workdir={workdir}",
       f"--config.data.folder={tiny_image_folder}", "--config.model.num_classes=3",
       "--config.train.eval_batch_size=8")
  results = json.loads((workdir / "eval_results.json").read_text())
  for key in ("top1", "top5", "params", "mult_adds", "variant", "alpha", "resolution",
              "dataset", "step", "infer_images_per_s"):
    assert key in results, key
  assert results["step"] == 4 and results["num_examples"] == 9 and results["top5"] == 1.0

  report = _run("-m", "mobilenet.report", str(workdir), "--out", str(tmp_path / "report"))
  assert "MobileNet" in (tmp_path / "report" / "results.md").read_text()
  assert (tmp_path / "report" / "accuracy_vs_mult_adds.png").stat().st_size > 1000
  del report


def test_resumed_run_ends_with_bit_identical_state(tiny_image_folder, tmp_path):
  """Checkpoint every step; drop the later checkpoints; the rerun must redo them exactly."""
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  overrides = {"train.checkpoint_every_steps": 1, "train.keep_checkpoints": 10,
               "optimizer.ema_decay": 0.5, "model.dropout_rate": 0.3}
  _run("train.py", *_train_flags(tiny_image_folder, straight, epochs=2, **overrides))
  _run("train.py", *_train_flags(tiny_image_folder, resumed, epochs=2, **overrides))
  for step in (2, 3, 4):
    shutil.rmtree(resumed / "checkpoints" / str(step))
  rerun = _run("train.py", *_train_flags(tiny_image_folder, resumed, epochs=2, **overrides))
  assert "Resumed from the checkpoint of step 1" in rerun.stdout
  step_a, state_a = _final_state(straight)
  step_b, state_b = _final_state(resumed)
  assert step_a == step_b == 4
  flat_a = dict(_leaves(state_a))
  flat_b = dict(_leaves(state_b))
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def _leaves(tree, prefix=""):
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _leaves(value, f"{prefix}/{key}")
  elif isinstance(tree, (list, tuple)):
    for index, value in enumerate(tree):
      yield from _leaves(value, f"{prefix}/{index}")
  elif tree is not None:  # optax keeps None for masked-out state
    yield prefix, np.asarray(tree)


MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, numpy as np, optax
    from configs import dws
    from mobilenet import optim, train_lib
    assert jax.device_count() == 8, jax.devices()
    config = dws.get_config("alpha=0.25,resolution=32,batch=16")
    config.model.num_classes = 3
    config.model.dropout_rate = 0.0
    net = train_lib.build_model(config)
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 3, 16).astype(np.int32)}
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = train_lib.device_mesh(devices)
      params = jax.eval_shape(net.init, jax.random.key(0), np.zeros((1, 32, 32, 3)))["params"]
      tx = optim.create_optimizer(config.optimizer, optax.constant_schedule(1e-4), params)
      state = train_lib.create_train_state(config, net, tx, mesh)
      steps = train_lib.Steps(config, net, tx, mesh)
      global_batch = steps.global_batch(batch)
      assert len(global_batch["image"].sharding.device_set) == len(devices)
      # Data parallel needs all-reduces only; moving slices of the batch between devices
      # (collective-permutes) is slow and could deadlock XLA:CPU's in-process collectives.
      compiled = steps.train.lower(state, global_batch).compile().as_text()
      assert "collective-permute" not in compiled, "the batch is resharded inside the step"
      losses = []
      for _ in range(3):
        state, metrics = steps.train(state, global_batch)
        losses.append(float(metrics["loss"]))
      results.append((losses, jax.device_get(state.params)))
    (loss_1, params_1), (loss_8, params_8) = results
    np.testing.assert_allclose(loss_1, loss_8, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_8)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print("OK", loss_1, loss_8)
""")


def test_eight_devices_give_the_same_losses_and_params_as_one():
  """Sharding only reorders float sums. A small learning rate keeps this tiny net (32 px: 1x1
  maps at the end, BatchNorm over 16 values) from amplifying that noise step after step."""
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  assert "OK" in result.stdout


def _free_port():
  import socket
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_two_processes_train_the_same_model_as_one(tiny_image_folder, tmp_path):
  """Two processes with two CPU devices each, over jax.distributed on loopback, against one
  process with four devices: same global batches, so the same final model.

  Only the order of float sums differs, and this tiny net (32 px, 1x1 maps at the end,
  gradient norm ~270) amplifies that noise: at lr 0.002 over 4 steps, 1x2 against 1x4 devices
  already differ by 5% in gradient norm. One batch of 16 at a small constant rate keeps the
  comparison to what multi-process could break: the data each process reads and the reductions.
  """
  overrides = {"train.global_batch_size": 16, "optimizer.learning_rate": 1e-4,
               "optimizer.warmup_epochs": 0,
               "model.dropout_rate": 0.0, "train.eval_batch_size": 4}
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  _run("train.py", *_train_flags(tiny_image_folder, tmp_path / "single", **overrides), env=env)

  port = _free_port()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  processes = []
  for process_id in range(2):
    flags = _train_flags(tiny_image_folder, tmp_path / "multi", **overrides) + [
        "--config.distributed.initialize=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={process_id}"]
    processes.append(subprocess.Popen(
        [sys.executable, "train.py", *flags], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, **env}))
  outputs = [process.communicate(timeout=600) for process in processes]
  for process, (out, err) in zip(processes, outputs):
    assert process.returncode == 0, f"{out[-2000:]}\n{err[-5000:]}"
  assert "4 cpu device(s)" in outputs[0][0]

  single = json.loads((tmp_path / "single" / "eval_results.json").read_text())
  multi = json.loads((tmp_path / "multi" / "eval_results.json").read_text())
  assert single["step"] == multi["step"] == 2
  assert multi["num_examples"] == single["num_examples"] == 9
  assert multi["loss"] == pytest.approx(single["loss"], rel=1e-3)
  _, state_single = _final_state(tmp_path / "single")
  _, state_multi = _final_state(tmp_path / "multi")
  for (key, a), (_, b) in zip(_leaves(state_single), _leaves(state_multi)):
    # Reordered sums perturb each leaf by rounding of its largest terms: compare to its scale
    # (seen: 9e-5 of it). A process reading the wrong slice of the batch is off by O(1).
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * max(float(np.abs(b).max()), 1e-6),
                               err_msg=key)
