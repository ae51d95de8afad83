"""Runs side by side: how the cores are split, that a pinned run stays on its cores, and how
jobs are started, waited for and stopped."""
import os
import subprocess
import sys
import threading

import pytest

from mobilenet import devices
from tools import lanes

from conftest import unpinned

WAIT_S = 60  # only a broken scheduler waits this long: the events below are always set


def test_cores_are_split_into_disjoint_sets_as_equal_as_they_can_be():
  assert lanes.cpu_sets(2, [0, 1, 2, 3, 4]) == [(0, 1, 2), (3, 4)]
  assert lanes.cpu_sets(3, [4, 0, 2]) == [(0,), (2,), (4,)]
  assert lanes.cpu_sets(1, [0, 1]) == [(0, 1)]


@pytest.mark.parametrize("count", [0, 3])
def test_more_lanes_than_cores_or_none_is_a_one_line_error_naming_the_flag(count):
  with pytest.raises(lanes.LanesError, match=rf"--lanes={count}: this process may use 2 cores"):
    lanes.cpu_sets(count, [0, 1])


def test_an_unpinned_command_is_left_as_it_is_and_a_pinned_one_names_its_cores():
  assert lanes.pinned(["python", "train.py"], None) == ["python", "train.py"]
  assert unpinned(lanes.pinned(["python", "train.py"], (2, 3))) == (["python", "train.py"], (2, 3))


@pytest.mark.end_to_end
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="core pinning is Linux's")
def test_a_pinned_command_runs_on_its_cores_only():
  core = min(os.sched_getaffinity(0))
  command = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
  output = subprocess.run(lanes.pinned(command, (core,)), check=True, capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(__file__))).stdout
  assert output.strip() == f"[{core}]"


class Jobs:
  """Offers named jobs in order; each records the cores it was given and runs `body`."""

  def __init__(self, bodies: dict):
    self.bodies = dict(bodies)
    self.started: dict[str, tuple] = {}
    self.finished: list[str] = []
    self.asked_with: list[set] = []
    self.offered: list[str] = []

  def next_job(self, running: set):
    self.asked_with.append(set(running))
    if not self.bodies:
      return None
    name, body = next(iter(self.bodies.items()))
    del self.bodies[name]
    self.offered.append(name)

    def run(cpus):
      self.started[name] = cpus
      body()
      self.finished.append(name)
    return lanes.Job(name, run)


@pytest.fixture
def four_cores(monkeypatch):
  monkeypatch.setattr(lanes, "available_cpus", lambda: [0, 1, 2, 3])


def test_two_lanes_run_two_jobs_at_once_on_disjoint_cores_and_then_the_rest(four_cores):
  both_running = threading.Barrier(2, timeout=WAIT_S)  # broken (an error) unless both wait
  jobs = Jobs({"a": both_running.wait, "b": both_running.wait, "c": lambda: None})
  lanes.run_side_by_side(jobs.next_job, 2)
  assert {jobs.started["a"], jobs.started["b"]} == {(0, 1), (2, 3)}
  assert sorted(jobs.finished) == ["a", "b", "c"]
  assert {"a"} in jobs.asked_with  # b was asked for while a ran


def test_one_lane_runs_jobs_one_after_another_on_every_core(four_cores):
  jobs = Jobs({"a": lambda: None, "b": lambda: None})
  lanes.run_side_by_side(jobs.next_job, 1)
  assert jobs.finished == ["a", "b"] and jobs.started == {"a": None, "b": None}


def test_after_a_failure_no_job_starts(four_cores):
  def fail():
    raise RuntimeError("a failed")

  jobs = Jobs({"a": fail})

  def next_job(running):
    if "a" in jobs.offered and not running:  # a has ended: from now on c is on offer
      jobs.bodies.setdefault("c", lambda: None)
    return jobs.next_job(running)

  with pytest.raises(RuntimeError, match="a failed"):
    lanes.run_side_by_side(next_job, 2)
  assert "c" not in jobs.started


def test_a_failure_waits_for_the_running_jobs_to_finish(four_cores):
  b_started, a_failing = threading.Event(), threading.Event()

  def fail_once_b_runs():
    assert b_started.wait(WAIT_S)
    a_failing.set()
    raise RuntimeError("a failed")

  def run_until_a_fails():
    b_started.set()
    assert a_failing.wait(WAIT_S)

  jobs = Jobs({"a": fail_once_b_runs, "b": run_until_a_fails})
  with pytest.raises(RuntimeError, match="a failed"):
    lanes.run_side_by_side(jobs.next_job, 2)
  assert jobs.finished == ["b"]


def test_a_job_offered_only_after_another_finished_runs_then(four_cores):
  jobs = Jobs({"first": lambda: None})

  def next_job(running):
    if jobs.finished == ["first"] and "second" not in jobs.offered:
      jobs.bodies.setdefault("second", lambda: None)  # a later stage, decided by the first
    return jobs.next_job(running)

  lanes.run_side_by_side(next_job, 2)
  assert jobs.finished == ["first", "second"]


@pytest.mark.end_to_end
def test_the_pin_command_refuses_cores_it_cannot_parse_in_one_line():
  result = subprocess.run([sys.executable, "-m", "tools.lanes", "--cpus=x", "--", "true"],
                          capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == 1 and "--cpus=x" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_a_pinned_run_names_the_cores_it_may_use_and_the_machines(monkeypatch):
  monkeypatch.setattr(os, "cpu_count", lambda: 2)
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)
  assert devices.cores_description() == "1 of 2 cores"
  assert devices.description().endswith(", 1 of 2 cores")
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
  assert devices.cores_description() == "2 cores"
