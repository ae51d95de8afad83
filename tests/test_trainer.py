"""The loop's periodic actions, each on its own: training time, logging and the finite check."""
import types

import jax.numpy as jnp
import pytest

from mobilenet import errors, steps, trainer


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


class Recorder:
  def __init__(self):
    self.records = []

  def write(self, step, kind, scalars):
    self.records.append((step, kind, scalars))


def _progress(monkeypatch, train_seconds=0.0, log_every=2, total_steps=10):
  clock = FakeClock()
  monkeypatch.setattr(trainer.time, "perf_counter", clock)
  monkeypatch.setattr(trainer.metrics, "console", lambda message: None)
  plan = types.SimpleNamespace(total_steps=total_steps, log_every=log_every, global_batch=4)
  checkpointer = types.SimpleNamespace(latest_step=lambda: 2, directory="/run/checkpoints")
  writer = Recorder()
  progress = trainer.Progress(plan, lambda step: 0.1, writer, checkpointer, train_seconds)
  return progress, clock, writer


def _metrics(loss=1.0, finite=True):
  return {"loss": jnp.float32(loss), "accuracy": jnp.float32(0.5),
          steps.STATE_IS_FINITE: jnp.bool_(finite)}


def test_training_time_adds_the_logged_intervals_to_the_checkpoints_and_skips_evaluation(
    monkeypatch):
  progress, clock, writer = _progress(monkeypatch, train_seconds=100.0)
  for step in (1, 2):
    clock.now += 1.0
    progress.add(step, _metrics(), first_of_session=step == 1)
  progress.check(2)
  clock.now += 50.0  # an evaluation
  progress.restart_clock()
  clock.now += 3.0
  progress.add(3, _metrics(), first_of_session=False)
  progress.check(3)
  assert progress.train_seconds == pytest.approx(100.0 + 2.0 + 3.0)
  assert [(step, kind) for step, kind, _ in writer.records] == [(2, "train"), (3, "train")]
  # The first step (compiling) is training time, but not in the speed: step 2 alone, 1 s.
  assert writer.records[0][2]["images_per_s"] == pytest.approx(4 / 1.0)


def test_a_line_after_a_resume_reports_no_speed_until_a_step_after_the_compiling_one(
    monkeypatch):
  """Resumed at step 59, logged every 20 steps: the line at step 60 holds only the session's
  first step (7 s, compiling), the line at 80 the twenty 0.5 s steps after it."""
  lines = []
  progress, clock, writer = _progress(monkeypatch, log_every=20, total_steps=85)
  monkeypatch.setattr(trainer.metrics, "console", lines.append)
  clock.now += 7.0
  progress.add(60, _metrics(), first_of_session=True)
  progress.check(60)
  assert "img/s" not in lines[0] and "ETA" not in lines[0]
  assert "images_per_s" not in writer.records[0][2]
  for step in range(61, 81):
    clock.now += 0.5
    progress.add(step, _metrics(), first_of_session=False)
  progress.check(80)
  assert writer.records[1][2]["images_per_s"] == pytest.approx(4 / 0.5)
  assert lines[1].endswith("8.0 img/s  ETA 0m02s")
  assert progress.train_seconds == pytest.approx(7.0 + 10.0)


def test_a_non_finite_loss_stops_naming_its_step_and_the_last_good_checkpoint(monkeypatch):
  progress, _, writer = _progress(monkeypatch)
  progress.add(3, _metrics(), first_of_session=True)
  progress.add(4, _metrics(loss=float("nan")), first_of_session=False)
  with pytest.raises(errors.NonFiniteLoss, match=r"the loss became nan at step 4; stopping: the "
                                                 r"last good checkpoint \(step 2\)"):
    progress.check(4)
  assert not writer.records


def test_an_overflowed_state_stops_though_its_loss_is_finite(monkeypatch):
  progress, _, _ = _progress(monkeypatch)
  progress.add(3, _metrics(finite=False), first_of_session=True)
  with pytest.raises(errors.NonFiniteLoss, match="non-finite at step 3"):
    progress.check(3)


def test_logging_is_due_every_log_every_steps_and_at_the_last():
  plan = types.SimpleNamespace(total_steps=7, log_every=3, global_batch=4)
  progress = trainer.Progress(plan, None, None, None, 0.0)
  assert [step for step in range(1, 8) if progress.due(step)] == [3, 6, 7]


class FakeProfiler:
  def __init__(self, monkeypatch):
    self.events = []
    monkeypatch.setattr(trainer.jax.profiler, "start_trace", lambda d: self.events.append(("start", d)))
    monkeypatch.setattr(trainer.jax.profiler, "stop_trace", lambda: self.events.append(("stop",)))
    monkeypatch.setattr(trainer.metrics, "console", lambda message: None)


def test_profile_window_traces_the_steps_after_the_compiling_one(monkeypatch):
  profiler = FakeProfiler(monkeypatch)
  with trainer.ProfileWindow("/run", steps=2, start_step=4) as window:
    for done in range(5, 10):
      window.after_step(done, jnp.zeros(()))
      if done == 5:
        assert profiler.events == [("start", "/run/profile")]
      if done == 6:
        assert profiler.events == [("start", "/run/profile")]
  assert profiler.events == [("start", "/run/profile"), ("stop",)]


@pytest.mark.parametrize("steps, expected", [
    (100, [("start", "/run/profile"), ("stop",)]),  # the run ends inside the window: closed
    (0, []),  # the default: no trace
])
def test_profile_window_closes_at_the_runs_end_and_is_off_by_default(monkeypatch, steps,
                                                                     expected):
  profiler = FakeProfiler(monkeypatch)
  with trainer.ProfileWindow("/run", steps=steps, start_step=0) as window:
    for done in range(1, 4):
      window.after_step(done, jnp.zeros(()))
  assert profiler.events == expected


@pytest.mark.end_to_end
def test_a_run_hands_free_memory_back_after_the_caches_the_compile_and_each_evaluation(
    tmp_path, tiny_image_folder, monkeypatch):
  from configs import dws  # pylint: disable=import-outside-toplevel
  from mobilenet import allocator  # pylint: disable=import-outside-toplevel
  events = []
  monkeypatch.setattr(allocator, "release_free_memory", lambda: events.append("release"))
  config = dws.get_config("alpha=0.25,resolution=32,batch=8,epochs=2")
  config.model.num_classes = 3
  config.data.folder = str(tiny_image_folder)
  hooks = trainer.Hooks(step_done=lambda step: events.append(f"step {step}"),
                        eval_batch_done=lambda step: events.append(f"eval {step}"))
  trainer.train_and_evaluate(config, str(tmp_path / "run"), hooks)
  collapsed = [event for i, event in enumerate(events) if i == 0 or event != events[i - 1]]
  # 18 images, 8 a step: 2 steps an epoch, evaluation after each epoch.
  assert collapsed == ["release", "step 1", "release", "step 2", "eval 2", "release", "step 3",
                       "step 4", "release", "eval 4", "release"]
