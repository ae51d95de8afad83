"""Faults and bad input: killed, preempted and diverging runs, bad data, bad configs and flags,
unwritable workdirs. Each must end in a clear message with nothing lost (docs/faults.md)."""
import functools
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags as absl_flags
from ml_collections import config_flags
from PIL import Image

from configs import dws
from mobilenet import checkpoints, cli, devices, errors, evaluation, steps, trainer
from tests.conftest import (PROJECT_ROOT, final_state, leaves, run_script, train_flags,
                            write_image_folder)

# Two steps per epoch on the tiny folder (18 training images, batch 8); checkpoints at 2, 4, 6.
EPOCHS = 3
OVERRIDES = {"train.checkpoint_every_steps": 2, "train.keep_checkpoints": 10}


def _flags(folder, workdir, epochs=EPOCHS, **overrides):
  """Every run shares one train step program, hence the compilation cache: the exponential
  schedule does not depend on the number of epochs, and EMA and dropout are on to be resumed."""
  return train_flags(folder, workdir, epochs=epochs, **{
      "optimizer.schedule": "exponential", "optimizer.ema_decay": 0.5, "model.dropout_rate": 0.3,
      **overrides})


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> pathlib.Path:
  return write_image_folder(tmp_path_factory.mktemp("faults") / "images")


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> pathlib.Path:
  """The uninterrupted run every fault is compared with."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  result = run_script("train.py", *_flags(images, workdir, **OVERRIDES),
                env={"JAX_LOG_COMPILES": "1"})
  # The signal the "before any compilation" tests rely on: compilations show on stderr.
  assert "Compiling" in result.stderr
  return workdir


def _complete_steps(workdir) -> set[int]:
  """Checkpoints orbax finished: a save in progress lives in a temporary folder until renamed."""
  return {int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
          if p.name.isdigit()}


def _unfinished_saves(workdir) -> list[str]:
  return sorted(p.name for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                if not p.name.isdigit())


def _resumed_from(result) -> int | None:
  match = re.search(r"Resumed from the checkpoint of step (\d+)", result.stdout)
  return int(match.group(1)) if match else None


def _files(directory) -> dict[str, bytes]:
  directory = pathlib.Path(directory)
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_same_state(workdir_a, workdir_b):
  step_a, state_a = final_state(workdir_a)
  step_b, state_b = final_state(workdir_b)
  assert step_a == step_b
  flat_a, flat_b = dict(leaves(state_a)), dict(leaves(state_b))
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def _one_line_error(result) -> str:
  """The last stderr line, after checking it is the whole story: one line, no traceback."""
  assert result.returncode == 1, result.stdout + result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines and lines[-1].startswith("error: "), result.stderr
  return lines[-1]


# ----------------------------------------------------------------------------- kill and resume


@pytest.mark.end_to_end
def test_runs_killed_in_a_step_a_save_and_an_eval_end_bit_identical(images, reference,
                                                                    tmp_path):
  """SIGKILL at three points, each time rerunning the same command; the last run must end where
  the uninterrupted one did, bit for bit, and no run may resume from less than what is on disk."""
  workdir = tmp_path / "run"
  flags = _flags(images, workdir, **OVERRIDES)

  def run_killed_at(point):
    on_disk = _complete_steps(workdir) if (workdir / "checkpoints").is_dir() else set()
    result = run_script("tests/fault_injection.py", point, *flags, check=False)
    assert result.returncode == -signal.SIGKILL, f"{point}: {result.stdout}{result.stderr}"
    assert _resumed_from(result) == max(on_disk, default=None), (point, on_disk, result.stdout)
    return result

  # During step 3: whatever checkpoint orbax finished (step 2, or none yet) is what remains.
  run_killed_at("train:3")
  assert _complete_steps(workdir) <= {2}

  # During the save of step 4, once its files are written but before the rename that completes
  # it: orbax finishes one save before it starts the next, so step 2 is complete.
  run_killed_at("save:4")
  assert _complete_steps(workdir) == {2}
  assert [name for name in _unfinished_saves(workdir) if name.startswith("4.")]

  # During the final evaluation: the half-written step 4 was not restored, and is gone.
  third = run_killed_at("eval:6")
  assert _resumed_from(third) == 2
  assert not [name for name in _unfinished_saves(workdir) if name.startswith("4.")]
  on_disk = _complete_steps(workdir)
  assert {2, 4} <= on_disk <= {2, 4, 6}  # step 6's save may still have been in flight

  last = run_script("train.py", *flags)
  assert _resumed_from(last) == max(on_disk)
  _assert_same_state(workdir, reference)
  assert _unfinished_saves(workdir) == []
  results = json.loads((workdir / "eval_results.json").read_text())
  expected = json.loads((reference / "eval_results.json").read_text())
  assert (results["step"], results["top1"], results["loss"]) == (
      expected["step"], expected["top1"], expected["loss"])


# ----------------------------------------------------------------------------- SIGTERM


@pytest.mark.end_to_end
def test_sigterm_saves_a_checkpoint_and_exits_with_a_message(images, tmp_path):
  """Preemption arrives as SIGTERM from outside, in the middle of a long run."""
  workdir = tmp_path / "run"
  flags = _flags(images, workdir, epochs=500, **{
      "train.checkpoint_every_steps": 10**6, "train.eval_every_steps": 10**6})
  with open(tmp_path / "stderr", "w", encoding="utf-8") as stderr:
    process = subprocess.Popen([sys.executable, "train.py", *flags], cwd=PROJECT_ROOT,
                               stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
      lines = []
      for line in process.stdout:  # the loop is running once a few steps were logged
        lines.append(line)
        if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 3:
          break
      process.send_signal(signal.SIGTERM)
      out, _ = process.communicate(timeout=300)
    finally:
      process.kill()
  stdout = "".join(lines) + out
  stderr_text = (tmp_path / "stderr").read_text()
  assert process.returncode == trainer.EXIT_PREEMPTED, stdout + stderr_text
  assert "Traceback" not in stderr_text, stderr_text
  match = re.search(r"SIGTERM received: saved the checkpoint of step (\d+); exiting", stdout)
  assert match, stdout
  saved = int(match.group(1))
  assert 3 <= saved < 1000
  assert _complete_steps(workdir) == {saved} and _unfinished_saves(workdir) == []
  step, state = final_state(workdir)
  assert step == saved and int(state["step"]) == saved


# ----------------------------------------------------------------------------- non-finite loss


@pytest.mark.end_to_end
def test_divergence_stops_naming_the_step_and_keeps_the_good_checkpoints(images,
                                                                         tmp_path):
  """A learning rate of 1e30, reached over the one-epoch warm-up (saved: a checkpoint every step):
  an update leaves huge but finite weights, whose loss is NaN."""
  workdir = tmp_path / "run"
  result = run_script("train.py", *_flags(images, workdir, **{
      **OVERRIDES, "train.checkpoint_every_steps": 1, "optimizer.learning_rate": 1e30}),
                check=False)
  message = _one_line_error(result)
  match = re.search(r"the loss became (nan|inf|-inf) at step (\d+); stopping", message)
  assert match, message
  bad_step = int(match.group(2))
  logged = [int(s) for s in re.findall(r"^step\s+(\d+)/", result.stdout, re.MULTILINE)]
  assert logged and bad_step == max(logged) + 1  # counted as the console counts
  assert max(_complete_steps(workdir)) == bad_step - 1
  assert f"last good checkpoint (step {bad_step - 1})" in message
  _, state = final_state(workdir)
  for key, value in leaves(state):
    if np.issubdtype(value.dtype, np.inexact):
      assert np.all(np.isfinite(value)), key


class _TinyNet(nn.Module):
  """Just enough of MobileNet's interface (BatchNorm, num_classes) to compile in a moment."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, images, train: bool = False):
    features = nn.BatchNorm(use_running_average=not train)(images.reshape(len(images), -1))
    return nn.Dense(self.num_classes)(features)


@pytest.mark.parametrize("learning_rate, state_is_finite", [(0.1, True), (np.inf, False)])
def test_train_step_flags_an_update_that_overflowed_though_its_loss_was_finite(
    learning_rate, state_is_finite):
  """The loss is computed before the update: without this flag the loop would save the
  overflowed state as the last good checkpoint, and only stop one step later."""
  net, tx = _TinyNet(), optax.sgd(learning_rate)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 2, 2, 3)).astype(np.float32),
           "label": np.array([0, 1, 2, 0], np.int32)}
  variables = net.init(jax.random.key(0), batch["image"])
  state = steps.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
      ema_params=variables["params"])
  step = jax.jit(functools.partial(steps.train_step, net=net, tx=tx, label_smoothing=0.0,
                                   ema_decay=0.0, seed=0))
  _, step_metrics = step(state, batch)
  assert np.isfinite(step_metrics["loss"])
  assert bool(step_metrics[steps.STATE_IS_FINITE]) is state_is_finite


# ----------------------------------------------------------------------------- bad data


def _add_bad_and_odd_files(root: pathlib.Path) -> None:
  """4 unreadable files in train; 7 readable ones whose channels are not plain RGB."""
  ant = root / "train" / "ant"
  whole = (ant / "ant_0.JPEG").read_bytes()
  (ant / "truncated.JPEG").write_bytes(whole[:len(whole) // 2])
  (ant / "zero_bytes.JPEG").write_bytes(b"")
  (ant / "corrupt.JPEG").write_bytes(whole[:200] + bytes(range(256)) * 4)
  (root / "train" / "bee" / "notes.txt").write_text("not an image")
  pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
  picture = Image.fromarray(pixels)
  picture.convert("L").save(root / "train" / "bee" / "gray.JPEG", "JPEG")
  picture.convert("CMYK").save(root / "train" / "bee" / "cmyk.JPEG", "JPEG")
  picture.convert("RGBA").save(root / "train" / "cat" / "rgba.png")
  picture.convert("LA").save(root / "train" / "cat" / "gray_alpha.png")
  Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(root / "train" / "cat" / "16bit.png")
  picture.save(root / "train" / "cat" / "picture.gif")
  picture.convert("P").save(root / "val" / "cat" / "palette.png")


@pytest.mark.end_to_end
def test_training_skips_unreadable_files_and_reads_any_channel_layout(tmp_path):
  root = write_image_folder(tmp_path / "images", train_per_class=4)
  _add_bad_and_odd_files(root)
  result = run_script("train.py", *_flags(root, tmp_path / "run", epochs=1))
  assert "18 train / 10 eval examples" in result.stdout  # 12 + 6 odd; 9 + the palette image
  assert "skipped 4 unreadable image file(s)" in result.stderr
  for name in ("truncated.JPEG", "zero_bytes.JPEG", "corrupt.JPEG", "notes.txt"):
    assert name in result.stderr
  # One summary line, not libjpeg's and TensorFlow's lines per file or their start-up notices.
  for noise in ("Corrupt JPEG data", "Premature end of JPEG", "oneDNN", "absl::InitializeLog"):
    assert noise not in result.stderr, result.stderr
  assert json.loads((tmp_path / "run" / "eval_results.json").read_text())["num_examples"] == 10


def _folder_config(folder, **data_overrides):
  config = dws.get_config("alpha=0.25,resolution=32,batch=8,epochs=1")
  config.model.num_classes = 3
  config.data.folder = str(folder)
  config.data.update(data_overrides)
  return config


@pytest.fixture
def compilations(caplog):
  """Records the JAX compilations of the test body (positive control in the tests below)."""
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    yield lambda: [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]


def _bad_folder(tmp_path, fault):
  root = write_image_folder(tmp_path / fault)
  if fault == "missing_split":
    shutil.rmtree(root / "val")
    return root, f"data.eval_split='val': no folder {root / 'val'} ({root} holds train)"
  if fault == "empty_class_folder":
    for image in (root / "train" / "bee").iterdir():
      image.unlink()
    return root, f"class folder {root / 'train' / 'bee'} is empty"
  if fault == "class_folder_of_unreadable_files":
    for image in (root / "val" / "cat").iterdir():
      image.write_bytes(b"\xff\xd8 not really a JPEG")
    return root, f"class folder {root / 'val' / 'cat'} holds no readable image"
  if fault == "extra_class":
    write_image_folder(root, classes=("ant", "bee", "cat", "dog"))
    return root, "model.num_classes is 3 but the dataset has 4 classes"
  raise AssertionError(fault)


@pytest.mark.end_to_end
@pytest.mark.parametrize("fault", ["missing_split", "empty_class_folder",
                                   "class_folder_of_unreadable_files", "extra_class"])
def test_bad_dataset_stops_before_compiling_naming_the_folder(tmp_path, compilations, fault):
  folder, expected = _bad_folder(tmp_path, fault)
  config = _folder_config(folder)
  cli.check_config(config)
  with pytest.raises(ValueError) as error:
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert expected in str(error.value) and "\n" not in str(error.value)
  assert compilations() == []
  jax.jit(lambda x: x * 3 + 1)(np.float32(2))  # the recorder does see a compilation
  assert compilations()


@pytest.mark.end_to_end
def test_corrupt_file_names_the_file_when_errors_are_asked_for(tmp_path):
  root = write_image_folder(tmp_path / "images")
  _add_bad_and_odd_files(root)
  with pytest.raises(ValueError, match=r"unreadable image file .*corrupt\.JPEG"):
    trainer.train_and_evaluate(_folder_config(root, on_corrupt="error"), str(tmp_path / "run"))


# ----------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("field, value, expected", [
    ("model.alpha", 0.0, "config.model.alpha must be > 0"),
    ("model.alpha", -0.5, "config.model.alpha must be > 0"),
    ("model.alpha", 0.01, "config.model.alpha=0.01 leaves the first conv with no channels"),
    ("data.resolution", 16, "config.data.resolution must be at least 32 px"),
    ("model.variant", "mobilenet_v9", "config.model.variant must be one of"),
    ("optimizer.name", "lamb", "config.optimizer.name must be one of"),
    ("data.source", "s3", "config.data.source must be one of"),
    ("data.tfds_name", "no_such_dataset", "config.data.tfds_name='no_such_dataset'"),
    ("data.folder", "/no/such/folder", "config.data.folder: no such directory: /no/such/folder"),
    ("train.global_batch_size", 0, "config.train.global_batch_size must be >= 1"),
])
def test_bad_config_value_is_one_line_naming_the_field(compilations, tmp_path, field, value,
                                                       expected):
  config = _folder_config(tmp_path)
  if field == "data.tfds_name":
    config.data.source = "tfds"
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError) as error:
    cli.check_config(config)
  assert str(error.value).startswith(expected) and "\n" not in str(error.value), error.value
  assert compilations() == []


@pytest.mark.end_to_end
def test_unknown_field_in_train_py_is_one_line_naming_it(images, tmp_path):
  result = run_script("train.py", *train_flags(images, tmp_path / "run"), "--config.train.epochs=3",
                check=False)
  assert _one_line_error(result) == (
      "error: --config.train.epochs: config.train has no field 'epochs' "
      "(did you mean 'num_epochs'?)")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, expected", [
    ("--config.trian.num_epochs=3", "--config.trian: config has no field 'trian' "
                                    "(did you mean 'train'?)"),
    ("--config.model.alpha=half", "flag --config.model.alpha=half: could not convert string "
                                  "to float: 'half'"),
    ("--config.train.global_batch_size=8.5", "flag --config.train.global_batch_size=8.5: "
                                             "invalid literal for int()"),
    ("--config.data.cache=maybe", "flag --config.data.cache=maybe: "),
    ("--config=configs/dws.py:alpha=half", "config argument alpha='half': expected a float"),
    ("--config=configs/dws.py:width=0.5", "config argument 'width=0.5': expected key=value"),
    ("--config=configs/no_such_config.py", "No such file or directory: 'configs/no_such_"),
    ("--wrokdir=runs/x", "Unknown command line flag 'wrokdir'"),
])
def test_bad_flag_is_one_line_naming_it(flag, expected, capsys):
  """The same parsing as train.py's and eval.py's, on fresh flags, in this process."""
  argv = ["train.py", "--config=configs/dws.py", flag]
  if flag.startswith("--config="):
    argv.remove("--config=configs/dws.py")
  flag_values = absl_flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  absl_flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_flags(argv, flag_values)
  assert exit_info.value.code == 1
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


_LATE_WRITER = """
import asyncio, sys, threading, time
from absl import logging
from mobilenet import checkpoints, cli, errors

class ArrayWriter(threading.Thread):
  # Like orbax's _SignalingThread: join() re-raises the error the thread logged.

  def run(self):
    time.sleep(1)
    logging.error("another array failed to write too")
    self.error = ValueError("RESOURCE_EXHAUSTED: No space left on device")

  def join(self, timeout=None):
    super().join(timeout)
    raise self.error

ArrayWriter.__module__ = "orbax.checkpoint._src.futures.future"  # it stands for orbax's thread

async def write_one_more_array():
  raise ValueError("RESOURCE_EXHAUSTED: No space left on device")

# Like orbax's writes that failed after the first: asyncio reports their errors, never
# retrieved, when the tasks are collected, which for these is at exit.
unretrieved = []

def main(argv):
  with checkpoints.Checkpointer(argv[1]):  # what orbax leaves behind is the wrapper's to settle
    loop = asyncio.new_event_loop()
    unretrieved.append(loop.create_task(write_one_more_array()))
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    ArrayWriter().start()
    raise errors.CheckpointNotWritten("could not write a checkpoint")

cli.run(main, takes_arguments=True)
"""


@pytest.mark.end_to_end
def test_one_line_error_comes_after_what_background_writers_still_log(tmp_path):
  """Orbax writes arrays from several threads; the first failure reaches the main thread while
  others are still writing and log theirs later, joining one re-raises its error, and asyncio
  reports the writes whose errors nobody retrieved at exit. The user's line must still be the
  last, and the only error printed besides the logs."""
  script = tmp_path / "late_writer.py"
  script.write_text(_LATE_WRITER)
  result = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], cwd=PROJECT_ROOT,
                          capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
  assert result.returncode == 1, result.stderr
  assert "another array failed to write too" in result.stderr
  assert result.stderr.strip().splitlines()[-1] == "error: could not write a checkpoint"
  assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.end_to_end
def test_batch_that_does_not_divide_over_the_devices_fails_before_compiling(images, tmp_path):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=3", "JAX_PLATFORMS": "cpu",
         "JAX_LOG_COMPILES": "1"}
  result = run_script("train.py", *train_flags(images, tmp_path / "run"), env=env, check=False)
  assert _one_line_error(result) == (
      "error: config.train.global_batch_size=8 must divide by the 3 devices (1 processes)")
  assert "Compiling" not in result.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.end_to_end
def test_workdir_of_another_model_is_refused_before_compiling(images, reference, tmp_path,
                                                              compilations):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  before = _files(workdir)
  config = _folder_config(images)
  config.model.alpha = 0.5
  with pytest.raises(errors.DifferentRun) as error:
    trainer.train_and_evaluate(config, str(workdir))
  assert str(error.value).startswith(
      f"{workdir} holds a run started with model.alpha=0.25, but this config has 0.5 (and ")
  assert str(error.value).endswith(
      "; use another --workdir for a new run, or resume that one with its own settings "
      f"(--config.model.alpha=0.25; all of them in {workdir / 'config.json'})")
  assert compilations() == []
  assert _files(workdir) == before


@pytest.mark.end_to_end
def test_a_checkpoint_of_another_optimizer_state_is_refused_naming_the_state_before_compiling(
    images, reference, compilations):
  """Behind the run identity (which refuses optimizer.name itself), the checkpoint's own tree
  guards a config that predates a field: SGD's momentum against AdamW's two moments."""
  config = _folder_config(images)
  config.optimizer.name = "adamw"
  training = steps.build(config, devices.device_mesh(), steps_per_epoch=2, total_steps=6)
  with checkpoints.Checkpointer(str(reference), read_only=True) as checkpointer:
    with pytest.raises(errors.IncompatibleCheckpoint,
                       match=r"holds a checkpoint whose state cannot resume this training: at "
                             r"opt_state/.* \(another optimizer setup\?\)"):
      checkpointer.check_restorable(training.abstract_state, 6, "resume this training")
  assert compilations() == []


@pytest.mark.end_to_end
def test_an_error_that_is_not_the_users_keeps_its_traceback(tmp_path):
  """A shape bug raises ValueError too: it must not be mistaken for a mistake in the input."""
  script = tmp_path / "bug.py"
  script.write_text("from mobilenet import cli\n"
                    "def main(argv):\n"
                    "  raise ValueError('shapes (3,) and (4,) do not match')\n"
                    "cli.run(main)\n")
  result = subprocess.run([sys.executable, str(script)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
  assert result.returncode == 1
  assert "Traceback" in result.stderr and "shapes (3,) and (4,)" in result.stderr
  assert "error: shapes" not in result.stderr


@pytest.mark.end_to_end
def test_eval_on_an_empty_workdir_says_to_train_first_and_writes_nothing(images, tmp_path):
  workdir = tmp_path / "empty"
  workdir.mkdir()
  result = run_script("eval.py", "--config=configs/dws.py:alpha=0.25,resolution=32",
                f"--config.data.folder={images}", "--config.model.num_classes=3",
                f"--workdir={workdir}", env={"JAX_LOG_COMPILES": "1"}, check=False)
  assert _one_line_error(result) == (
      f"error: no checkpoint in {workdir / 'checkpoints'}: train first with "
      f"train.py --workdir={workdir}")
  assert "Compiling" not in result.stderr
  assert list(workdir.iterdir()) == []


@pytest.mark.end_to_end
def test_eval_of_a_missing_workdir_or_step_names_it(images, reference, tmp_path, compilations):
  config = _folder_config(images)
  with pytest.raises(FileNotFoundError, match=f"workdir {tmp_path / 'nowhere'} does not exist"):
    cli.prepare(config, str(tmp_path / "nowhere"), for_training=False)
  config = _folder_config(images)
  config.model.alpha = 0.25
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 5 .*\(steps there: "
                                               r"\[2, 4, 6\]\)"):
    evaluation.evaluate_checkpoint(config, str(reference), step=5)
  assert compilations() == []


# ----------------------------------------------------------------------------- disk and files


def test_workdir_below_a_regular_file_is_refused_at_start(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match=f"workdir {tmp_path / 'file' / 'run'} is not writable: "
                                       "Not a directory"):
    cli.check_writable(str(tmp_path / "file" / "run"))


def _can_mount_in_a_namespace() -> bool:
  if not shutil.which("unshare"):
    return False
  with tempfile.TemporaryDirectory() as directory:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o ro tmpfs {directory}"], capture_output=True,
                           check=False)
  return probe.returncode == 0


needs_mount = pytest.mark.skipif(
    not _can_mount_in_a_namespace(),
    reason="needs unshare and mount in a user namespace (read-only and full filesystems)")


def _run_with_mount(mount_options, mountpoint, *args, script="train.py"):
  """A private tmpfs at `mountpoint`, seen only by this command: even root cannot write a
  read-only one, unlike a folder that chmod made read-only."""
  command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
             f'mount -t tmpfs -o {mount_options} tmpfs "$0" && exec "$@"', str(mountpoint),
             sys.executable, script, *args]
  return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180,
                        check=False)


@pytest.mark.end_to_end
@needs_mount
@pytest.mark.parametrize("read_only", [".", "checkpoints"])
def test_read_only_workdir_is_refused_before_loading_anything(images, tmp_path, read_only):
  workdir = tmp_path / "run"
  (workdir / read_only).mkdir(parents=True)
  result = _run_with_mount("ro", workdir / read_only, *_flags(images, workdir))
  assert re.fullmatch(f"error: workdir {re.escape(str(workdir))} is not writable.*: "
                      "Read-only file system", _one_line_error(result))
  assert "dws alpha=0.25" not in result.stdout  # stopped before the data and the model


@pytest.mark.end_to_end
@needs_mount
def test_full_disk_stops_the_run_at_the_next_checkpoint_with_one_line(images, tmp_path):
  """2 MB hold the metrics but not one checkpoint of this model (~2.5 MB). Orbax logs its own
  traceback when the background write fails; the run must then stop, not train on and hang."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  result = _run_with_mount("size=2m", workdir, *_flags(images, workdir))
  assert result.returncode == 1, result.stdout + result.stderr
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith(f"error: could not write a checkpoint in {workdir / 'checkpoints'}")
  assert "No space left on device" in message
  assert "final eval" not in result.stdout


# ----------------------------------------------------------------------------- reruns and starts


@pytest.mark.end_to_end
def test_rerunning_a_finished_run_says_where_its_results_are_and_changes_nothing(
    images, reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  before = _files(workdir)
  result = run_script("train.py", *_flags(images, workdir, **OVERRIDES))
  *before_it, last = result.stdout.strip().splitlines()  # the data cache's line may come first
  assert last == (
      f"This run is finished (step 6 of 6); its results are in {workdir / 'eval_results.json'}")
  assert all(" in memory" in line for line in before_it), before_it
  assert _files(workdir) == before  # no evaluation, no metrics line, no rewritten config


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_start_leaves_no_empty_workdir_it_created(tmp_path, existed):
  folder, expected = _bad_folder(tmp_path, "missing_split")
  workdir = tmp_path / "run"
  if existed:
    workdir.mkdir()
  with pytest.raises(ValueError, match=re.escape(expected)):
    cli.train(_folder_config(folder), str(workdir))
  assert workdir.exists() == existed
  if existed:
    assert list(workdir.iterdir()) == [workdir / "checkpoints"]  # the user's folder stays


def test_a_failed_start_keeps_a_workdir_that_holds_a_file(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(RuntimeError):
    with cli.no_empty_workdir_left_on_failure(str(workdir)):
      (workdir / "checkpoints").mkdir(parents=True)
      (workdir / "metrics.jsonl").write_text("{}\n")
      raise RuntimeError("failed after writing")
  assert (workdir / "metrics.jsonl").exists()


def test_first_eta_after_a_resume_counts_only_the_steps_of_this_session():
  """Resumed at step 100 of 200: the first step took 30 s (compiling), the next ten 1 s each.
  The ETA must be 90 steps of 1 s, neither diluted over the 100 steps before the resume nor
  inflated by the compilation."""
  remaining = trainer.RemainingTime(total_steps=200)
  remaining.first_step_done(101, now=130.0)
  assert remaining.seconds(110, now=139.0) == pytest.approx(90.0)
  fresh = trainer.RemainingTime(total_steps=200)  # only the compiling step so far: no guess
  fresh.first_step_done(101, now=130.0)
  assert fresh.seconds(101, now=130.0) is None


def test_a_run_shorter_than_its_warm_up_says_so_in_one_line():
  opt = dws.get_config().optimizer  # warm-up: one epoch
  message = trainer.short_run_warning(opt, steps_per_epoch=10, total_steps=4)
  assert message.startswith("this run (4 steps) is shorter than its learning-rate warm-up "
                            "(10 steps = optimizer.warmup_epochs=1 epochs)")
  assert "\n" not in message
  assert trainer.short_run_warning(opt, steps_per_epoch=10, total_steps=10) is None


def test_inference_speed_stops_at_its_budget_after_one_timed_call():
  """A slow model (Conv MobileNet at 224 px: 7.6 s a batch on 2 cores) used to run a warm-up
  and at least three timed batches after its final evaluation whatever the budget."""
  calls = []

  class CountingNet:
    def apply(self, variables, images, train):
      del train
      jax.debug.callback(lambda: calls.append(1))
      return images.mean() * variables["params"]["w"]

  config = dws.get_config("resolution=32")
  config.train.inference_benchmark_s = 0.0
  variables = {"params": {"w": jnp.ones(())}, "batch_stats": {}, "ema_params": {"w": jnp.ones(())}}
  assert evaluation.measure_inference_speed(CountingNet(), variables, config, batch_size=2) > 0
  assert len(calls) == 1


def test_eval_refuses_a_flag_or_config_that_contradicts_the_checkpoint(tmp_path):
  saved = _folder_config(tmp_path).to_dict()
  with pytest.raises(ValueError, match=r"^--config.data.resolution=128: the checkpoint in .* was "
                                       r"trained with data.resolution=32 \(--resolution=N"):
    cli.evaluation_config(saved, "W", overrides={"data.resolution": 128})
  other = _folder_config(tmp_path)
  other.model.alpha = 0.5
  with pytest.raises(ValueError, match=r"^--config: model.alpha is 0.5 there, but the checkpoint"):
    cli.evaluation_config(saved, "W", file_config=other, overrides={})
  config = cli.evaluation_config(saved, "W", overrides={"data.eval_split": "train"})
  assert (config.data.resolution, config.data.eval_split) == (32, "train")


def test_library_notices_and_libjpeg_warnings_are_dropped_and_every_other_line_kept():
  from mobilenet import native_stderr
  written = (
      b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
      b"I0000 00:00:1796161202.557125    7609 port.cc:153] oneDNN custom operations are on. You\n"
      b"allocator: tcmalloc\n"
      b"Corrupt JPEG data: 5 extraneous bytes before marker 0xd9\n"
      b"Unsupported marker type 0xfd\n"
      b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8\n"
      b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
      b"E0000 00:00:17961.8 11620 jpeg_mem.cc:331] Premature end of JPEG data. Stopped at line 0\n"
      b"W1201 21:48:25.851402 14000 data.py:348] train: skipped 2 unreadable image file(s)\n"
      b"Traceback (most recent call last):\n"
      b"error: the last line, without a newline")
  source_read, source_write = os.pipe()
  target_read, target_write = os.pipe()
  os.write(source_write, written)
  os.close(source_write)
  native_stderr.copy_filtered(source_read, target_write)
  os.close(target_write)
  assert os.read(target_read, 65536).decode().splitlines() == [
      "allocator: tcmalloc",
      "W1201 21:48:25.851402 14000 data.py:348] train: skipped 2 unreadable image file(s)",
      "Traceback (most recent call last):", "error: the last line, without a newline"]
  for fd in (source_read, target_read):
    os.close(fd)


@pytest.mark.end_to_end
def test_every_tool_started_with_python_m_is_quiet_and_importing_tools_changes_nothing(
    tmp_path):
  """tools/__init__.py quiets a `python -m tools.<name>` process as train.py is quieted (here
  the data benchmark, which loads TensorFlow and JAX); a test importing a tool keeps its stderr."""
  from mobilenet import native_stderr
  import tools  # pylint: disable=unused-import,import-outside-toplevel
  assert native_stderr.FILTERED_MARKER not in os.environ
  folder = write_image_folder(tmp_path / "images")
  result = subprocess.run(
      [sys.executable, "-m", "tools.data_benchmark", "--config=configs/dws.py:resolution=32",
       f"--config.data.folder={folder}", "--batches=2", "--batch_size=4"],
      cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=True,
      env={key: value for key, value in os.environ.items()
           if key not in (native_stderr.DISABLE_VARIABLE, "TF_CPP_MIN_LOG_LEVEL")})
  assert "train pipeline, 32 px, batch 4" in result.stdout
  for noise in ("absl::InitializeLog", "oneDNN", "xla_bridge", "Unable to initialize backend"):
    assert noise not in result.stderr, result.stderr
