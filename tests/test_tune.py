"""The recipe search: what each stage trains, on which split, and what it ranks."""
import json
import pathlib
import subprocess

import pytest

from tools import lanes, runs, tune

from conftest import unpinned

# Held-out top-1 that the fake training gives each change from START: the best learning rate is
# 0.8, three factors help (crop 0.5 most, then batch 32, then EMA), everything else hurts.
GAINS = {("optimizer.learning_rate", 0.8): 0.05, ("optimizer.learning_rate", 0.4): 0.02,
         ("data.min_area", 0.5): 0.03, ("train.global_batch_size", 32): 0.02,
         ("optimizer.ema_decay", 0.995): 0.01}


def fake_top1(settings: dict, seed: int) -> float:
  return 0.6 + sum(GAINS.get(item, -0.01) for item in settings.items()
                   if tune.START.get(item[0]) != item[1]) - 0.001 * seed


class FakeTrain:
  """Stands in for subprocess.run: train.py leaves a finished run scored by fake_top1."""

  def __init__(self):
    self.commands = []
    self.cores = []  # each command's (None: not pinned)
    self.consoles = []  # where each command's output went (None: this console)

  def __call__(self, command, *, cwd, check, env, stdout=None, stderr=None):
    del cwd, check, env, stderr
    command, cores = unpinned(command)
    self.commands.append(command)
    self.cores.append(cores)
    self.consoles.append(None if stdout is None else stdout.name)
    workdir = pathlib.Path(next(arg for arg in command if arg.startswith("--workdir="))
                           .partition("=")[2])
    config_arg = next(arg for arg in command if arg.startswith("--config=")).partition("=")[2]
    flags = [arg for arg in command if arg.startswith("--config.")]
    config = runs.requested_config(config_arg, flags)
    settings = {field: config[field.split(".")[0]][field.split(".")[1]] for field in tune.START}
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "eval_results.json").write_text(json.dumps(
        dict(top1=fake_top1(settings, config["seed"]), train_wall_s=60.0,
             device=f"cpu: test, {'1 of 2' if cores else 2} cores")))
    (workdir / "metrics.jsonl").write_text(json.dumps(dict(kind="train", step=5, loss=1.5)) + "\n")


@pytest.fixture
def fake_train(monkeypatch) -> FakeTrain:
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  return fake


def _main(tmp_path: pathlib.Path, *flags: str) -> int:
  return tune.TOOL.call(["--workdirs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
                    *flags])


def _changes(command: list[str]) -> dict:
  return dict(arg.removeprefix("--config.").split("=", 1) for arg in command
              if arg.startswith("--config."))


def test_every_run_trains_on_nine_tenths_of_train_and_scores_on_the_rest(tmp_path, fake_train):
  assert _main(tmp_path) == 0
  for command in fake_train.commands:
    assert _changes(command)["data.train_split"] == "train[:90%]"
    assert _changes(command)["data.eval_split"] == "train[90%:]"


def test_the_search_scans_the_rate_then_varies_each_factor_from_the_best_rate(tmp_path,
                                                                              fake_train):
  assert _main(tmp_path) == 0
  rates = [float(_changes(command)["optimizer.learning_rate"]) for command in fake_train.commands]
  assert rates[:4] == list(tune.LEARNING_RATES)
  stage2 = fake_train.commands[4:4 + sum(map(len, tune.FACTORS.values()))]
  assert all(float(_changes(command)["optimizer.learning_rate"]) == 0.8 for command in stage2
             if _changes(command)["optimizer.name"] != "adamw")
  assert len(fake_train.commands) >= 16


def test_the_combined_recipe_takes_every_factor_that_helped(tmp_path, fake_train):
  assert _main(tmp_path) == 0
  ranked = json.loads((tmp_path / "results" / "tuning.json").read_text())["recipes"]
  combined = next(entry for entry in ranked if entry["stage"] == "3: combined")
  assert combined["changes"] == {"optimizer.learning_rate": 0.8, "data.min_area": 0.5,
                                 "train.global_batch_size": 32, "optimizer.ema_decay": 0.995}
  assert ranked[0]["recipe"] == combined["recipe"]


def test_winner_and_runner_up_get_a_second_seed_and_rank_by_their_mean(tmp_path, fake_train):
  assert _main(tmp_path) == 0
  ranked = json.loads((tmp_path / "results" / "tuning.json").read_text())
  assert ranked["complete"]
  assert [entry["seeds"] for entry in ranked["recipes"][:2]] == [[0, 1], [0, 1]]
  assert all(entry["seeds"] == [0] for entry in ranked["recipes"][2:]
             if entry["changes"] != {"optimizer.learning_rate": 0.4})  # the start's: below
  means = [entry["mean_top1"] for entry in ranked["recipes"]]
  assert means == sorted(means, reverse=True)
  assert (tmp_path / "results" / "tuning.png").is_file()
  assert "| 1 | " in (tmp_path / "results" / "tuning.md").read_text()


def test_the_start_gets_a_second_seed_that_no_later_stage_waits_for(tmp_path, fake_train):
  folders = tune.Folders(tmp_path / "runs", tmp_path / "results")
  for item in tune.plan(folders, 5.0)[0]:  # stage 1
    tune.run(folders, item)
  trials, _ = tune.plan(folders, 5.0)
  start_again = tune.trial({"optimizer.learning_rate": 0.4}, 5.0, "4: second seed", seed=1)
  assert trials[-1] == start_again  # decided with stage 2, trained after it
  for item in trials[:-1]:
    if not folders.finished(item):
      tune.run(folders, item)
  trials, _ = tune.plan(folders, 5.0)
  assert "3: combined" in {item.stage for item in trials}  # stage 3 did not wait for it
  assert tune.next_trial(folders, lambda: tune.plan(folders, 5.0), set()) == start_again
  assert _main(tmp_path) == 0
  ranked = json.loads((tmp_path / "results" / "tuning.json").read_text())["recipes"]
  start = next(entry for entry in ranked if entry["changes"] == {"optimizer.learning_rate": 0.4})
  assert start["seeds"] == [0, 1]


def test_a_rerun_of_a_finished_search_trains_nothing(tmp_path, fake_train):
  assert _main(tmp_path) == 0
  fake_train.commands.clear()
  assert _main(tmp_path) == 0
  assert not fake_train.commands


def test_later_stages_wait_for_the_earlier_ones(tmp_path, fake_train):
  folders = tune.Folders(tmp_path / "runs", tmp_path / "results")
  trials, complete = tune.plan(folders, 5.0)
  assert not complete and len(trials) == len(tune.LEARNING_RATES)


def test_a_result_made_with_other_settings_stops_the_search_naming_the_field(tmp_path, fake_train,
                                                                             capsys):
  assert _main(tmp_path) == 0
  first = tmp_path / "results" / "runs" / "dws_e5_lr0.2_s0" / "config.json"
  config = json.loads(first.read_text())
  config["optimizer"]["momentum"] = 0.5
  first.write_text(json.dumps(config))
  fake_train.commands.clear()
  assert _main(tmp_path) == 1
  assert "optimizer.momentum=0.5" in capsys.readouterr().err
  assert not fake_train.commands


def test_two_lanes_train_the_same_trials_each_on_its_own_core_logging_beside_the_workdir(
    tmp_path, fake_train, monkeypatch):
  assert _main(tmp_path) == 0
  one_lane = sorted(map(_changes, fake_train.commands), key=str)
  assert set(fake_train.cores) == {None} and set(fake_train.consoles) == {None}
  monkeypatch.setattr(lanes, "available_cpus", lambda: [0, 1])
  fake_train.__init__()
  assert _main(tmp_path / "two", "--lanes", "2") == 0
  assert sorted(map(_changes, fake_train.commands), key=str) == one_lane
  assert set(fake_train.cores) == {(0,), (1,)}
  workdirs = [next(arg for arg in command if arg.startswith("--workdir=")).partition("=")[2]
              for command in fake_train.commands]
  assert fake_train.consoles == [f"{workdir}.log" for workdir in workdirs]
  assert "| cpu: test, 1 of 2 cores |" in (tmp_path / "two" / "results" / "tuning.md").read_text()
  assert "| cpu: test, 2 cores |" in (tmp_path / "results" / "tuning.md").read_text()


def test_more_lanes_than_cores_stops_before_any_training(tmp_path, fake_train, monkeypatch,
                                                          capsys):
  monkeypatch.setattr(lanes, "available_cpus", lambda: [0, 1])
  assert _main(tmp_path, "--lanes", "3") == 1
  assert "--lanes=3: this process may use 2 cores" in capsys.readouterr().err
  assert not fake_train.commands


def test_the_next_trial_is_chosen_without_reading_a_running_trials_half_written_config(
    tmp_path):
  folders = tune.Folders(tmp_path / "runs", tmp_path / "results")
  first, second = tune.plan(folders, 5.0)[0][:2]
  (folders.workdirs / first.name).mkdir(parents=True)
  (folders.workdirs / first.name / "config.json").write_text('{"optimizer": ')  # being written
  assert tune.next_trial(folders, lambda: tune.plan(folders, 5.0), {first.name}) == second


def test_the_confirmation_retrains_the_start_and_the_searchs_winner_at_the_longer_budget(
    tmp_path, fake_train):
  assert _main(tmp_path) == 0
  winner = json.loads((tmp_path / "results" / "tuning.json").read_text())["recipes"][0]["changes"]
  fake_train.commands.clear()
  assert _main(tmp_path, "--confirm-at", "20", "--seeds", "0,1") == 0
  trained = [_changes(command) for command in fake_train.commands]
  assert len(trained) == 4 and all(changes["train.num_epochs"] == "20.0" for changes in trained)
  assert all(changes["data.eval_split"] == "train[90%:]" for changes in trained)
  def is_recipe(flags: dict, changes: dict) -> bool:
    return all(flags[field] == str(value) for field, value in {**tune.START, **changes}.items())
  assert winner != {"optimizer.learning_rate": 0.4}
  assert sum(is_recipe(flags, winner) for flags in trained) == 2
  assert sum(is_recipe(flags, {}) for flags in trained) == 2
  confirmed = json.loads((tmp_path / "results" / "at_20_epochs" / "tuning.json").read_text())
  assert confirmed["complete"] and confirmed["epochs"] == 20
  assert {entry["stage"]: entry["seeds"] for entry in confirmed["recipes"]} == {
      "confirm: start": [0, 1], "confirm: winner": [0, 1]}
  assert next(entry for entry in confirmed["recipes"]
              if entry["stage"] == "confirm: winner")["changes"] == winner
  assert "retrained for 20 epochs" in (tmp_path / "results" / "at_20_epochs" / "tuning.md"
                                       ).read_text()


def test_the_confirmation_of_an_unfinished_search_stops_before_any_training(tmp_path, fake_train,
                                                                             capsys):
  assert _main(tmp_path, "--confirm-at", "20") == 1
  assert "the 5-epoch search in" in capsys.readouterr().err
  assert not fake_train.commands
