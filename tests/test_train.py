"""Training end to end through the real commands, exact resume, and data parallelism."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import types

import jax
import numpy as np
import pytest

from mobilenet import cpu_kernels
from tools.report import command as report_command
from tests.conftest import (PROJECT_ROOT, TINY, changes, final_state, leaves,
                            relative_difference, run_script, train_flags,
                            write_image_folder, write_varied_image_folder)

pytestmark = pytest.mark.end_to_end  # every test here runs the commands



@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, str]:
  """(image folder, workdir, console) of a two-epoch tiny run killed (SIGKILL) in its third
  step, after the first epoch's checkpoint; tests resume copies of the workdir."""
  root = tmp_path_factory.mktemp("killed")
  folder = write_image_folder(root / "images")
  first = run_script("tests/fault_injection.py", "train:3",
                     *train_flags(folder, root / "run", epochs=2), check=False)
  assert first.returncode == -9, first.stderr[-3000:]
  return folder, root / "run", first.stdout


def test_train_resume_eval_and_report_through_the_commands(killed_run, tmp_path):
  """The first session is killed (SIGKILL) in its third step, after the epoch's checkpoint."""
  tiny_image_folder, killed, console = killed_run
  workdir = _copy_of(killed, tmp_path)
  assert "eval at step 2" in console
  assert (workdir / "checkpoints" / "2").is_dir()
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"train", "eval"} == {r["kind"] for r in records}
  assert all(key in records[1] for key in ("loss", "accuracy", "learning_rate", "images_per_s",
                                           "step_time_s"))
  assert list((workdir / "tensorboard").iterdir())

  second = run_script("train.py", *train_flags(tiny_image_folder, workdir, epochs=2))
  assert "Resumed from the checkpoint of step 2" in second.stdout
  assert "final eval at step 4" in second.stdout
  trained = json.loads((workdir / "eval_results.json").read_text())
  # Time and speed cover both sessions: 4 steps of 8 images.
  assert trained["train_images_per_s"] == pytest.approx(4 * 8 / trained["train_wall_s"])
  assert trained["session_train_wall_s"] > 0

  (workdir / "eval_results.json").unlink()
  run_script("eval.py", f"--config=configs/dws.py:{TINY}", f"--workdir={workdir}",
       f"--config.data.folder={tiny_image_folder}", "--config.model.num_classes=3",
       "--config.train.eval_batch_size=8")
  results = json.loads((workdir / "eval_results.json").read_text())
  for key in ("top1", "top5", "params", "mult_adds", "variant", "alpha", "resolution",
              "dataset", "step", "infer_images_per_s"):
    assert key in results, key
  assert results["step"] == 4 and results["num_examples"] == 9 and results["top5"] == 1.0

  assert report_command.TOOL.call([str(workdir), "--out", str(tmp_path / "report")]) == 0
  assert "MobileNet" in (tmp_path / "report" / "results.md").read_text()
  assert (tmp_path / "report" / "accuracy_vs_mult_adds.png").stat().st_size > 1000


def test_resumed_run_ends_with_bit_identical_state(tiny_image_folder, tmp_path):
  """Checkpoint every step; in a copy of the run, drop the later checkpoints; the rerun, another
  process, must redo them exactly."""
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  overrides = {"train.checkpoint_every_steps": 1, "train.keep_checkpoints": 10,
               "optimizer.ema_decay": 0.5, "model.dropout_rate": 0.3}
  run_script("train.py", *train_flags(tiny_image_folder, straight, epochs=2, **overrides))
  shutil.copytree(straight, resumed)
  for step in (2, 3, 4):
    shutil.rmtree(resumed / "checkpoints" / str(step))
  rerun = run_script("train.py", *train_flags(tiny_image_folder, resumed, epochs=2, **overrides))
  assert "Resumed from the checkpoint of step 1" in rerun.stdout
  step_a, state_a = final_state(straight)
  step_b, state_b = final_state(resumed)
  assert step_a == step_b == 4
  flat_a = dict(leaves(state_a))
  flat_b = dict(leaves(state_b))
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def _initial_variables(**model_overrides) -> dict:
  """The params and batch_stats every TINY run starts from, made as train.py makes them."""
  from configs import dws
  from mobilenet import devices, steps
  config = dws.get_config(TINY)
  config.model.update(model_overrides)
  training = steps.build(config, devices.device_mesh(jax.devices()[:1]), steps_per_epoch=1,
                         total_steps=1)
  state = training.init()
  return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


# One train step of a tiny MobileNet on the first device and on eight, from the same state and
# batch: the first update of each, and the eight-device step's compiled program.
EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from configs import dws
    from mobilenet import cpu_kernels, devices, steps
    from tests.conftest import changes
    assert jax.device_count() == 8, jax.devices()
    config = dws.get_config("alpha=0.25,resolution=32,batch=16")
    config.model.num_classes = 3
    config.model.dropout_rate = 0.0
    config.optimizer.weight_decay = 0.0  # the update is then the gradient's alone
    config.optimizer.warmup_epochs = 0.0
    config.optimizer.schedule = "exponential"  # a constant rate over this one step: 0.1
    config.optimizer.learning_rate = 0.1 * 256 / 16
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 3, 16).astype(np.int32)}
    saved = {}
    for device_list in (jax.devices()[:1], jax.devices()):
      training = steps.build(config, devices.device_mesh(device_list), steps_per_epoch=1,
                             total_steps=1)
      state = training.init()
      global_batch = training.evaluation.global_batch(batch)
      assert len(global_batch["image"].sharding.device_set) == len(device_list)
      compiled = training.train.lower(state, global_batch).compile().as_text()
      start = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
      state, metrics = training.train(state, global_batch)
      end = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
      for key, change in changes(end, start).items():
        saved[f"{len(device_list)}{key}"] = change
      saved[f"{len(device_list)}/loss"] = np.asarray(metrics["loss"])
    np.savez(sys.argv[1] + ".npz", **saved)
    with open(sys.argv[1] + ".hlo", "w") as out:
      out.write(compiled)
    with open(sys.argv[1] + ".kernel", "w") as out:
      out.write(str(cpu_kernels.depthwise_available()))
""")


@pytest.fixture(scope="module")
def eight_device_step(tmp_path_factory) -> types.SimpleNamespace:
  """`updates` ({"1/params/...": change, "8/...": ..., "1/loss", "8/loss"}), `compiled` (the
  eight-device train step's optimized HLO) and `kernel` (whether the compiled depthwise kernel
  ran), from one process with eight CPU devices."""
  out = tmp_path_factory.mktemp("eight_devices") / "step"
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", EIGHT_DEVICE_SCRIPT, str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  with np.load(f"{out}.npz") as updates:
    return types.SimpleNamespace(
        updates=dict(updates), compiled=pathlib.Path(f"{out}.hlo").read_text(),
        kernel=pathlib.Path(f"{out}.kernel").read_text() == "True")


def test_eight_devices_give_the_same_loss_and_update_as_one(eight_device_step):
  """Sharding only reorders float sums: it moves the first update by ~1.4e-5 of its norm (as
  much as swapping in the lax convolutions does) and the BatchNorm statistics by ~1e-6, while a
  batch whose second half repeats the first moves them by 1.7 and 0.12. Later steps are not
  compared: this tiny net (32 px, BatchNorm over 16 values at the end) amplifies rounding step
  after step, and how fast depends on the CPU's kernels."""
  saved = eight_device_step.updates
  runs = {count: {key.split("/", 1)[1]: saved[key] for key in saved
                  if key.startswith(f"{count}/")} for count in ("1", "8")}
  np.testing.assert_allclose(runs["8"].pop("loss"), runs["1"].pop("loss"), rtol=1e-4)
  for group in ("params", "batch_stats"):
    one = {key: value for key, value in runs["1"].items() if key.startswith(f"{group}/")}
    eight = {key: value for key, value in runs["8"].items() if key.startswith(f"{group}/")}
    assert one and relative_difference(eight, one) < 1e-3, group


def test_compiled_kernel_stays_batch_parallel_on_a_multi_device_mesh(eight_device_step):
  """On 8 CPU devices the train step runs the FFI kernel on each device's slice of the batch:
  no all-gather (of activations or anything else) and no resharding of the batch (a
  collective-permute, slow and able to deadlock XLA:CPU's in-process collectives); the kernel
  gradient is summed by the all-reduce that sums every other gradient."""
  if not eight_device_step.kernel:
    pytest.skip("the compiled CPU depthwise kernel did not build here")
  compiled = eight_device_step.compiled
  forward_calls = compiled.count(f'custom_call_target="{cpu_kernels.FORWARD_TARGET}"')
  backward_calls = compiled.count(f'custom_call_target="{cpu_kernels.BACKWARD_TARGET}"')
  assert forward_calls >= 13 and backward_calls >= 13, (forward_calls, backward_calls)
  assert "all-gather" not in compiled
  assert "collective-permute" not in compiled
  assert "all-reduce" in compiled


def _free_port():
  import socket
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_two_processes_train_the_same_model_as_one(tiny_image_folder, tmp_path):
  """Two processes with two CPU devices each, over jax.distributed on loopback, against one
  process with four devices: the same global batch, so the same first update.

  One step only: later ones would compare how this tiny net (32 px, 1x1 maps at the end)
  amplifies rounding noise, not what multi-process could break (the data each process reads
  and the reductions), and the default rate keeps the update far above float32's resolution.
  """
  overrides = {"train.global_batch_size": 16, "optimizer.warmup_epochs": 0,
               "model.dropout_rate": 0.0, "train.eval_batch_size": 4}
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  run_script("train.py", *train_flags(tiny_image_folder, tmp_path / "single", epochs=1, **overrides),
       env=env)

  port = _free_port()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  processes = []
  for process_id in range(2):
    flags = train_flags(tiny_image_folder, tmp_path / "multi", epochs=1, **overrides) + [
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
  assert single["step"] == multi["step"] == 1
  assert multi["num_examples"] == single["num_examples"] == 9
  assert multi["loss"] == pytest.approx(single["loss"], rel=1e-3)
  _, state_single = final_state(tmp_path / "single")
  _, state_multi = final_state(tmp_path / "multi")
  initial = _initial_variables(num_classes=3)
  starts = {"params": initial["params"], "ema_params": initial["params"],
            "batch_stats": initial["batch_stats"], "opt_state": {}}  # the momentum starts at 0
  for group, start in starts.items():
    # Compared to its norm, reordered sums move the step's change by ~2e-5; computing on other
    # examples moves it by more than 0.1 (see the eight-device test).
    single_change = changes(state_single[group], start)
    multi_change = changes(state_multi[group], start)
    assert single_change and relative_difference(multi_change, single_change) < 1e-3, group


@pytest.fixture(scope="module")
def varied_folder(tmp_path_factory) -> pathlib.Path:
  return write_varied_image_folder(tmp_path_factory.mktemp("varied") / "images")


def test_default_config_trains_and_evaluates_on_photos_of_mixed_sizes(varied_folder, tmp_path):
  """The README's first command on a user's folder (sizes 9x12 to 4000x10 and 1200x1600, the
  first image the smallest): only the length and the image size are cut for speed."""
  workdir = tmp_path / "run"
  result = run_script("train.py", "--config=configs/dws.py:epochs=0.6,resolution=32,batch=8",
                f"--config.data.folder={varied_folder}", "--config.model.num_classes=3",
                "--config.train.inference_benchmark_s=0.1",
                f"--workdir={workdir}")
  assert "24 train / 6 eval examples" in result.stdout
  assert "final eval at step 2: " in result.stdout
  assert f"results in {workdir / 'eval_results.json'}" in result.stdout.splitlines()[-1]
  assert json.loads((workdir / "eval_results.json").read_text())["num_examples"] == 6
  assert "is shorter than its learning-rate warm-up (3 steps" in result.stderr
  for noise in ("oneDNN", "absl::InitializeLog", "Corrupt JPEG data"):
    assert noise not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """(image folder, workdir) of a finished one-epoch tiny run, trained once for the module:
  tests work on copies of the workdir."""
  root = tmp_path_factory.mktemp("one_epoch")
  folder = write_image_folder(root / "images")
  run_script("train.py", *train_flags(folder, root / "run", epochs=1))
  return folder, root / "run"


def _copy_of(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(run, tmp_path / "run"))


def test_eval_py_alone_evaluates_a_32_px_run_and_keeps_its_training_fields(one_epoch_run,
                                                                          tmp_path):
  _, finished = one_epoch_run
  workdir = _copy_of(finished, tmp_path)
  trained = json.loads((workdir / "eval_results.json").read_text())
  (workdir / "eval_results.json").write_text(json.dumps({**trained, "top1": -1.0}))
  run_script("eval.py", f"--workdir={workdir}")  # model, resolution and data from the checkpoint
  evaluated = json.loads((workdir / "eval_results.json").read_text())
  assert evaluated["resolution"] == 32 and evaluated["alpha"] == 0.25
  assert evaluated["top1"] == pytest.approx(trained["top1"])
  assert evaluated["num_examples"] == 9
  for field in ("train_wall_s", "train_images_per_s", "session_train_wall_s"):
    assert evaluated[field] == trained[field], field


def _files(folder: pathlib.Path) -> dict:
  return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*"))
          if path.is_file()}


@pytest.mark.parametrize("change, field", [
    ({"optimizer.learning_rate": 0.2}, "optimizer.learning_rate"),
    ({"train.num_epochs": 2.0}, "train.num_epochs"),
    ({"seed": 1}, "seed"),
    ({"data.folder": "OTHER"}, "dataset"),
])
def test_resuming_under_other_settings_is_refused_in_one_line_and_changes_nothing(
    one_epoch_run, tmp_path, change, field):
  """A finished run's workdir, then the same command with one setting changed: a longer schedule,
  another seed or another dataset (a copy of the folder under another name) is another run."""
  folder, finished = one_epoch_run
  workdir = _copy_of(finished, tmp_path)
  before = _files(workdir)
  if change.get("data.folder") == "OTHER":
    other = tmp_path / "other-dataset"
    shutil.copytree(folder, other)
    change = {"data.folder": other}
  result = run_script("train.py", *train_flags(folder, workdir, epochs=1, **change),
                      check=False)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith(f"error: {workdir} holds a run started with {field}="), message
  assert "use another --workdir" in message and str(workdir / "config.json") in message
  assert " in memory" not in result.stdout  # refused before any data is read
  assert _files(workdir) == before


def test_resuming_with_other_bookkeeping_trains_on(killed_run, tmp_path):
  """The same data at another path, other logging and another implementation: the same run."""
  folder, killed, _ = killed_run
  workdir = _copy_of(killed, tmp_path)
  moved = tmp_path / "moved" / folder.name
  shutil.copytree(folder, moved)
  result = run_script("train.py", *train_flags(moved, workdir, epochs=2, **{
      "train.log_every_steps": 2, "model.depthwise_impl": "grouped"}))
  assert "Resumed from the checkpoint of step 2" in result.stdout
  assert "final eval at step 4" in result.stdout
