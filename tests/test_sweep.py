"""The sweep command: which rows it trains, with what, and what it refuses to mix into a table."""
import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest

from tools import lanes, runs, sweep

from conftest import unpinned

TABLE5 = sweep.TABLES["table5"]
TABLE5_DWS, TABLE5_SHALLOW = TABLE5[:2]
# What the sweep asks of every run today, from the configs: the tests follow a retuned protocol.
PROTOCOL_EPOCHS = sweep.default_epochs("dws")
PROTOCOL_MIN_AREA = runs.requested_config(TABLE5_SHALLOW.config, [])["data"]["min_area"]


@pytest.fixture
def folders(tmp_path, monkeypatch) -> pathlib.Path:
  monkeypatch.setattr(runs, "RESULTS", tmp_path / "results")
  monkeypatch.setattr(runs, "RUNS", tmp_path / "runs")
  return tmp_path


STEPS_PER_EPOCH = 10


def _top1(epochs: float, seed: int) -> float:
  """The fake runs' accuracy: longer training and a higher seed score more."""
  return 0.5 + epochs / 100 + seed / 100


def _eval_results(row: sweep.Row, epochs: float) -> dict:
  return dict(top1=_top1(epochs, row.seed), top5=0.95, params=2_000_000, mult_adds=100_000_000,
              variant=row.variant, alpha=row.alpha, resolution=row.resolution,
              dataset="imagenette", step=round(epochs * STEPS_PER_EPOCH),
              infer_images_per_s=100.0, device="cpu", seed=row.seed, train_wall_s=60.0 * epochs)


def _metrics(row: sweep.Row, epochs: float) -> str:
  """metrics.jsonl as train.py writes it: an evaluation after every epoch, training between."""
  lines = []
  for epoch in range(1, round(epochs) + 1):
    step = epoch * STEPS_PER_EPOCH
    lines += [dict(step=step, kind="train", loss=1.0),
              dict(step=step, kind="eval", top1=_top1(epochs, row.seed) * epoch / epochs)]
  return "".join(json.dumps(line) + "\n" for line in lines)


def _write_run(folder: pathlib.Path, row: sweep.Row, *, finished=True, **changes) -> None:
  """A run of `row` as train.py leaves it, its config changed at dotted fields."""
  config = runs.requested_config(row.config, [])
  for field, value in changes.items():
    section, name = field.split("__")
    config[section][name] = value
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(config))
  if finished:
    epochs = config["train"]["num_epochs"]
    (folder / "eval_results.json").write_text(json.dumps(_eval_results(row, epochs)))
    (folder / "metrics.jsonl").write_text(_metrics(row, epochs))


LITERT_FIGURES = dict(litert_fp32_ms=5.0, litert_int8_ms=3.0, litert_int8_top1=0.69,
                      litert_threads=[1], litert_device="cpu")


class FakeTrain:
  """Stands in for subprocess.run: records each call; train.py leaves a finished run, the export
  merges its figures into eval_results.json (or fails with exit 1, or merges nothing)."""

  def __init__(self, export_fails=False, export_merges=True, rows=TABLE5):
    self.calls = []
    self.export_fails, self.export_merges = export_fails, export_merges
    self.rows = rows
    self.cores, self.consoles = [], []

  @property
  def train_calls(self) -> list:
    return [(command, env) for command, env in self.calls if command[1] == "train.py"]

  @property
  def export_calls(self) -> list:
    return [(command, env) for command, env in self.calls if command[1:3] == ["-m",
                                                                             "tools.export"]]

  def __call__(self, command, *, cwd, check, env, stdout=None, stderr=None):
    del cwd, stderr
    assert check
    command, cores = unpinned(command)
    self.calls.append((command, env))
    self.cores.append(cores)
    self.consoles.append(None if stdout is None else stdout.name)
    workdir = pathlib.Path(next(arg for arg in command if arg.startswith("--workdir="))
                           .partition("=")[2])
    if command[1] == "train.py":
      config_arg = next(arg for arg in command if arg.startswith("--config="))
      row = next(row for row in self.rows if f"--config={row.config}" == config_arg)
      _write_run(workdir, row)
    elif self.export_fails:
      raise subprocess.CalledProcessError(1, command)
    elif self.export_merges:
      results = json.loads((workdir / "eval_results.json").read_text())
      (workdir / "eval_results.json").write_text(json.dumps({**results, **LITERT_FIGURES}))


def test_dry_run_lists_rows_as_done_missing_or_stale_with_the_field(folders, capsys):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS, train__num_epochs=3.0)
  assert sweep.TOOL.call(["table5", "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert f"{TABLE5_DWS.name:<24} stale" in out
  assert f"{TABLE5_SHALLOW.name:<24} missing" in out
  assert f"train.num_epochs=3.0, the sweep now asks for {PROTOCOL_EPOCHS}" in out


def test_a_result_made_with_another_protocol_stops_the_sweep_before_any_training(
    folders, capsys, monkeypatch):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS,
             optimizer__learning_rate=0.1, train__num_epochs=3.0)
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["table5"]) == 1
  error = capsys.readouterr().err.strip()
  assert error.startswith(f"error: {folders / 'results' / 'runs' / TABLE5_DWS.name} was trained "
                          f"with train.num_epochs=3.0, the sweep now asks for {PROTOCOL_EPOCHS} "
                          "(and 1 more);")
  assert "\n" not in error
  assert not fake.calls
  assert not (folders / "results" / "table5").exists()


def test_an_unfinished_run_started_with_other_settings_is_refused(folders, capsys, monkeypatch):
  _write_run(folders / "runs" / TABLE5_SHALLOW.name, TABLE5_SHALLOW, finished=False,
             data__min_area=0.08)
  monkeypatch.setattr(subprocess, "run", FakeTrain())
  assert sweep.TOOL.call(["table5"]) == 1
  assert (f"holds a run started with data.min_area=0.08, the sweep now asks for "
          f"{PROTOCOL_MIN_AREA}; delete it") in capsys.readouterr().err


def test_paths_logging_and_implementation_choices_do_not_make_a_result_stale(folders):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS,
             data__folder="/elsewhere", train__log_every_steps=7, model__depthwise_impl="grouped",
             train__eval_batch_size=32)
  assert sweep.stale_reason(TABLE5_DWS, runs.RUNS,
                           runs.requested_config(TABLE5_DWS.config, [])) is None


def test_flags_after_double_dash_reach_train_and_count_in_the_staleness_check(folders):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS, train__num_epochs=3.0)
  shorter = runs.requested_config(TABLE5_DWS.config, ["--config.train.num_epochs=3"])
  assert sweep.stale_reason(TABLE5_DWS, runs.RUNS, shorter) is None
  assert "train.num_epochs=3.0" in sweep.stale_reason(
      TABLE5_DWS, runs.RUNS, runs.requested_config(TABLE5_DWS.config, []))


def test_missing_rows_train_then_results_and_table_are_written(folders, monkeypatch):
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["table5", "--", "--config.train.log_every_steps=5"]) == 0
  assert [command[-1] for command, _ in fake.train_calls] == (
      ["--config.train.log_every_steps=5"] * len(TABLE5))
  # train.py picks its allocator itself (mobilenet.allocator): no glibc settings from the sweep.
  assert all("GLIBC_TUNABLES" not in env for _, env in fake.calls)
  for row in TABLE5:
    kept = sorted(path.name for path in (folders / "results" / "runs" / row.name).iterdir())
    assert kept == sorted(runs.KEPT_FILES)
  table = (folders / "results" / "table5" / "results.md").read_text()
  assert table.startswith("# Table 5 of the paper, on Imagenette")
  assert "Shallow MobileNet" in table
  assert "Not finished yet" not in table

  fake.calls.clear()
  assert sweep.TOOL.call(["table5"]) == 0  # nothing missing: nothing trained
  assert not fake.calls


def test_a_glibc_tunables_setting_of_the_user_is_kept(folders, monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "")
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["table5"]) == 0
  # Both commands of every row, train.py and the export, get the user's environment.
  assert [env["GLIBC_TUNABLES"] for _, env in fake.calls] == [""] * 2 * len(TABLE5)


@pytest.mark.parametrize("flag, message", [
    ("--config.train.epochs=3", "error: --config.train.epochs: config.train has no field 'epochs' "
                                "(did you mean 'num_epochs'?)"),
    ("--config.train.num_epochs=many", "error: flag --config.train.num_epochs=many: could not "
                                       "convert string to float: 'many'"),
])
def test_a_bad_flag_after_double_dash_is_one_line_naming_it(folders, capsys, flag, message):
  assert sweep.TOOL.call(["table5", "--dry-run", "--", flag]) == 1
  assert capsys.readouterr().err.strip() == message


def test_an_unreadable_result_config_is_one_line_naming_the_file(folders, capsys):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS)
  (folders / "results" / "runs" / TABLE5_DWS.name / "config.json").write_text("{not json")
  assert sweep.TOOL.call(["table5"]) == 1
  error = capsys.readouterr().err.strip()
  assert error.startswith(f"error: {folders / 'results' / 'runs' / TABLE5_DWS.name / 'config.json'}"
                          " is not valid JSON")
  assert "\n" not in error


@pytest.mark.end_to_end
def test_every_trained_row_is_exported_with_int8_right_after_its_training(folders, monkeypatch):
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["table5"]) == 0
  expected = []
  for row in TABLE5:
    expected += [[sys.executable, "train.py", f"--config={row.config}",
                  f"--workdir={folders / 'runs' / row.name}"],
                 [sys.executable, "-m", "tools.export",
                  f"--workdir={folders / 'runs' / row.name}", "--int8"]]
  assert [command for command, _ in fake.calls] == expected


def test_kept_results_carry_the_export_figures_and_the_table_its_columns(folders, monkeypatch):
  monkeypatch.setattr(subprocess, "run", FakeTrain())
  assert sweep.TOOL.call(["table5"]) == 0
  for row in TABLE5:
    kept = json.loads((folders / "results" / "runs" / row.name / "eval_results.json").read_text())
    assert kept["litert_fp32_ms"] == 5.0 and kept["litert_int8_top1"] == 0.69
  assert "LiteRT int8 ms" in (folders / "results" / "table5" / "results.md").read_text()
  assert (folders / "results" / "table5" / "accuracy_vs_latency.png").is_file()


@pytest.mark.end_to_end
def test_a_failed_export_stops_the_sweep_in_one_line_with_the_command(
    folders, capsys, monkeypatch):
  fake = FakeTrain(export_fails=True)
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["table5"]) == 1
  error = capsys.readouterr().err.strip()
  first = TABLE5[0]
  command = f"{sys.executable} -m tools.export --workdir={folders / 'runs' / first.name} --int8"
  assert error == (f"error: {first.name} trained, but its export failed (exit 1): `{command}`; "
                   "rerun the sweep to export it again")
  assert len(fake.train_calls) == 1  # no further row trained
  assert not (folders / "results" / "runs" / first.name).exists()  # the row is not finished
  assert not (folders / "results" / "table5").exists()


def test_an_export_that_merges_no_figures_stops_the_sweep(folders, capsys, monkeypatch):
  monkeypatch.setattr(subprocess, "run", FakeTrain(export_merges=False))
  assert sweep.TOOL.call(["table5"]) == 1
  error = capsys.readouterr().err.strip()
  assert "\n" not in error and "tools.export" in error
  assert "lacks litert_fp32_ms, litert_int8_ms, litert_int8_top1" in error
  assert not (folders / "results" / "runs" / TABLE5[0].name).exists()


@pytest.mark.end_to_end
def test_a_failed_training_names_its_command_and_skips_the_export(folders, capsys, monkeypatch):
  calls = []

  def failing_train(command, *, cwd, check, env, stdout, stderr):
    del cwd, check, env, stdout, stderr
    calls.append(command)
    raise subprocess.CalledProcessError(3, command)

  monkeypatch.setattr(subprocess, "run", failing_train)
  assert sweep.TOOL.call(["table5"]) == 1
  error = capsys.readouterr().err.strip()
  assert error.startswith(f"error: {TABLE5[0].name} failed (exit 3): `{sys.executable} train.py")
  assert error.endswith("rerun to resume it")
  assert [command[1] for command in calls] == ["train.py"]


def test_two_lanes_train_and_export_every_row_each_on_its_own_core_logging_beside_it(
    folders, monkeypatch):
  monkeypatch.setattr(lanes, "available_cpus", lambda: [0, 1])
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["table5", "--lanes", "2"]) == 0
  assert sorted(next(arg for arg in command if arg.startswith("--config="))
                for command, _ in fake.train_calls) == sorted(f"--config={row.config}"
                                                              for row in TABLE5)
  assert set(fake.cores) == {(0,), (1,)}
  for (command, _), cores, console in zip(fake.calls, fake.cores, fake.consoles):
    workdir = next(arg for arg in command if arg.startswith("--workdir=")).partition("=")[2]
    assert console == f"{workdir}.log"  # training and export of a row share its log
  for row in TABLE5:
    assert sweep.finished(row)
    trained_on = [cores for (command, _), cores in zip(fake.calls, fake.cores)
                  if f"--workdir={runs.RUNS / row.name}" in command]
    assert len(trained_on) == 2 and len(set(trained_on)) == 1  # exported on its own core


@pytest.mark.end_to_end
def test_a_failure_in_a_lane_names_the_row_and_its_console(folders, capsys, monkeypatch):
  monkeypatch.setattr(lanes, "available_cpus", lambda: [0, 1])

  def failing_train(command, *, cwd, check, env, stdout=None, stderr=None):
    del cwd, check, env, stdout, stderr
    raise subprocess.CalledProcessError(3, command)

  monkeypatch.setattr(subprocess, "run", failing_train)
  assert sweep.TOOL.call(["table5", "--lanes", "2"]) == 1
  error = capsys.readouterr().err.strip()
  assert "\n" not in error and error.startswith("error: ") and "failed (exit 3)" in error
  assert f"`{sys.executable} train.py" in error  # the command as given, not its pinning
  assert error.endswith(".log)")


# ---------------------------------------------------------------- where the workdirs live

def test_the_runs_flag_puts_every_workdir_there_for_training_and_export(folders, monkeypatch):
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  elsewhere = folders / "elsewhere"
  assert sweep.TOOL.call(["table5", "--runs", str(elsewhere)]) == 0
  workdirs = {arg for command, _ in fake.calls for arg in command if arg.startswith("--workdir=")}
  assert workdirs == {f"--workdir={elsewhere / row.name}" for row in TABLE5}
  assert len(fake.export_calls) == len(TABLE5)
  assert all(sweep.finished(row) for row in TABLE5)  # kept from there
  assert not (folders / "runs").exists()


def test_unfinished_runs_are_checked_for_staleness_where_the_runs_flag_says(folders, capsys):
  elsewhere = folders / "elsewhere"
  _write_run(elsewhere / TABLE5_SHALLOW.name, TABLE5_SHALLOW, finished=False,
             data__min_area=0.08)
  # The default folder's stale run of another row is not looked at.
  _write_run(folders / "runs" / TABLE5_DWS.name, TABLE5_DWS, finished=False, data__min_area=0.3)
  assert sweep.TOOL.call(["table5", "--dry-run", "--runs", str(elsewhere)]) == 0
  out = capsys.readouterr().out
  assert f"{TABLE5_SHALLOW.name:<24} stale" in out
  assert f"{TABLE5_DWS.name:<24} missing" in out
  assert (f"stale: {elsewhere / TABLE5_SHALLOW.name} holds a run started with "
          f"data.min_area=0.08, the sweep now asks for {PROTOCOL_MIN_AREA}") in out


def test_a_relative_runs_folder_is_taken_from_where_the_sweep_is_started(folders, monkeypatch):
  monkeypatch.chdir(folders)
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["table5", "--runs", "relative/runs"]) == 0
  first_workdir = next(arg for arg in fake.calls[0][0] if arg.startswith("--workdir="))
  assert first_workdir == f"--workdir={folders.resolve() / 'relative' / 'runs' / TABLE5[0].name}"


def test_every_row_of_every_table_has_seeds_0_and_1():
  for table, rows in sweep.TABLES.items():
    both_seeds = {dataclasses.replace(row, seed=seed) for row in rows for seed in (0, 1)}
    assert set(rows) == both_seeds, table


# ---------------------------------------------------------------- the schedule study

# 5 and 15 epochs: neither is the configs' own count, which names a row as the tables do.
STUDY_ARGS = ["schedule", "--epochs", "15,5", "--variants", "dws,conv", "--seeds", "0,1"]
STUDY_ROWS = [sweep.schedule_row(variant, epochs, seed)
              for epochs in (5, 15) for variant in ("dws", "conv") for seed in (0, 1)]


def test_schedule_rows_are_named_and_configured_with_their_epochs_shortest_first(folders, capsys):
  assert sweep.TOOL.call(STUDY_ARGS + ["--dry-run"]) == 0
  names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
  assert names == ["dws_a1_r128_e5_s0", "dws_a1_r128_e5_s1", "conv_a1_r128_e5_s0",
                   "conv_a1_r128_e5_s1", "dws_a1_r128_e15_s0", "dws_a1_r128_e15_s1",
                   "conv_a1_r128_e15_s0", "conv_a1_r128_e15_s1"]
  config = runs.requested_config(sweep.schedule_row("conv", 15, 1).config, [])
  assert (config["train"]["num_epochs"], config["model"]["variant"], config["seed"]) == (
      15.0, "conv", 1)


def test_the_study_takes_0_75_mobilenet_by_its_row_name_and_finds_its_table_rows(folders,
                                                                                 capsys):
  """Table 5's other side: `--variants dws_a0.75` trains dws at alpha 0.75; its finished 20-epoch
  table row (named without an epoch count) is found as the study's point."""
  table_row = sweep.Row("dws", 0.75, seed=1)
  _write_run(folders / "results" / "runs" / table_row.name, table_row)
  assert sweep.TOOL.call(["schedule", "--epochs", "40", "--variants", "dws_a0.75", "--dry-run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].split() == ["dws_a0.75_r128_e40_s0", "missing"]
  assert lines[1].split()[:2] == ["dws_a0.75_r128_s1", "done"]
  config = runs.requested_config(sweep.schedule_row("dws", 40, 0, 0.75).config, [])
  assert (config["model"]["alpha"], config["train"]["num_epochs"]) == (0.75, 40.0)
  assert sweep.TOOL.call(["schedule", "--epochs", "40", "--variants", "dws_a0.5"]) == 1
  assert "--variants: 'dws_a0.5' is not one of dws, shallow, conv, dws_a0.75" in (
      capsys.readouterr().err)


def test_a_schedule_result_trained_for_other_epochs_is_stale_naming_the_field(folders, capsys):
  row = sweep.schedule_row("dws", 15, 0)
  _write_run(folders / "results" / "runs" / row.name, row, train__num_epochs=10.0)
  assert sweep.TOOL.call(["schedule", "--epochs", "15", "--variants", "dws", "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert f"{row.name:<24} stale" in out
  assert "train.num_epochs=10.0, the sweep now asks for 15.0" in out


def test_schedule_trains_the_missing_rows_then_writes_its_table_json_and_plot(
    folders, monkeypatch):
  fake = FakeTrain(rows=STUDY_ROWS)
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(STUDY_ARGS + ["--", "--config.train.log_every_steps=5"]) == 0
  assert [command[2:] for command, _ in fake.train_calls] == [
      [f"--config={row.config}", f"--workdir={folders / 'runs' / row.name}",
       "--config.train.log_every_steps=5"] for row in STUDY_ROWS]
  assert len(fake.export_calls) == len(STUDY_ROWS)
  out = folders / "results" / "schedule"
  markdown = (out / "schedule.md").read_text()
  assert "| Model | Epochs | Seeds | Top-1 | Million Mult-Adds | Train time |" in markdown
  assert "| 1.0 MobileNet-128 | 15 | 0, 1 | 65.5% ± 0.5 (2 seeds) | 100 | 15m00s |" in markdown
  assert "| Conv MobileNet | 5 | 0, 1 | 55.5% ± 0.5 (2 seeds) | 100 | 5m00s |" in markdown
  document = json.loads((out / "schedule.json").read_text())
  assert [(point["model"], point["epochs"]) for point in document["points"]] == [
      ("1.0 MobileNet-128", 5.0), ("1.0 MobileNet-128", 15.0), ("Conv MobileNet", 5.0),
      ("Conv MobileNet", 15.0)]
  curve = next(curve for curve in document["curves"]
               if curve["run_name"] == "dws_a1_r128_e15_s1")
  assert curve["epochs"] == [float(epoch) for epoch in range(1, 16)]
  assert curve["top1"][-1] == pytest.approx(0.66)
  assert (out / "schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_schedule_row_at_the_configs_own_epoch_count_is_the_table_row_and_serves_as_is(
    folders, monkeypatch):
  assert sweep.schedule_row("dws", PROTOCOL_EPOCHS, 1) == sweep.Row("dws", seed=1)
  table_run = sweep.Row("dws", seed=1)
  _write_run(folders / "results" / "runs" / "dws_a1_r128_s1", table_run)
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["schedule", "--epochs", f"{PROTOCOL_EPOCHS:g}", "--variants", "dws",
                     "--seeds", "1"]) == 0
  assert not fake.calls
  document = json.loads((folders / "results" / "schedule" / "schedule.json").read_text())
  points = [(point["epochs"], point["seeds"]) for point in document["points"]]
  assert points == [(PROTOCOL_EPOCHS, [1])]


def test_the_schedule_report_shows_study_runs_of_earlier_commands_but_not_stale_ones(
    folders, monkeypatch, capsys):
  longer = sweep.schedule_row("shallow", 40, 0)
  _write_run(folders / "results" / "runs" / longer.name, longer)
  older = sweep.schedule_row("conv", 5, 0)
  _write_run(folders / "results" / "runs" / older.name, older, optimizer__learning_rate=0.1)
  narrow = sweep.Row("dws", 0.5)  # not a model of the study
  _write_run(folders / "results" / "runs" / narrow.name, narrow)
  asked = sweep.schedule_row("dws", 5, 0)
  monkeypatch.setattr(subprocess, "run", FakeTrain(rows=[asked]))
  assert sweep.TOOL.call(["schedule", "--epochs", "5", "--variants", "dws"]) == 0
  captured = capsys.readouterr()
  assert f"{longer.name:<24} done (found)" in captured.out
  assert f"{older.name:<24} stale, left out of the report (found)" in captured.out
  assert (f"warning: left out of the report: {folders / 'results' / 'runs' / older.name} was "
          "trained with optimizer.learning_rate=0.1") in captured.err
  document = json.loads((folders / "results" / "schedule" / "schedule.json").read_text())
  assert [(point["model"], point["epochs"]) for point in document["points"]] == [
      ("1.0 MobileNet-128", 5.0), ("Shallow MobileNet", 40.0)]


@pytest.mark.parametrize("argv, message", [
    (["schedule", "--epochs", "0"], "--epochs: '0' is not a positive number of epochs"),
    (["schedule", "--epochs", "5,ten"], "--epochs: 'ten' is not a positive number of epochs"),
    (["schedule", "--epochs", "5", "--variants", "dws,foo"],
     "--variants: 'foo' is not one of dws, shallow, conv, dws_a0.75"),
    (["schedule", "--epochs", "5", "--seeds", "-1"], "--seeds: '-1' is not a seed (0, 1, ...)"),
    (["schedule"], "--epochs: the schedule target needs the epoch counts to train, "
                   "e.g. --epochs 5,10,20"),
    (["table4", "--seeds", "1"], "--seeds: only the schedule target takes it"),
    (["schedule", "--epochs", "5", "--", "--config.train.num_epochs=3"],
     "--config.train.num_epochs: the schedule target sets each row's epoch count; give the "
     "counts to --epochs"),
])
def test_a_bad_schedule_flag_is_one_line_naming_it(folders, capsys, argv, message):
  assert sweep.TOOL.call(argv) == 1
  captured = capsys.readouterr()
  assert captured.err == f"error: {message}\n"
  assert not captured.out  # nothing listed, nothing trained


# ---------------------------------------------------------------- the combined plot

def test_combined_reports_every_finished_table_row_beside_the_paper_and_trains_nothing(
    folders, monkeypatch):
  from matplotlib import image

  done = [sweep.Row("conv"), sweep.Row("dws"), sweep.Row("dws", seed=1), sweep.Row("dws", 0.75),
          sweep.Row("dws", 1.0, 112, seed=1)]
  for row in done:
    _write_run(folders / "results" / "runs" / row.name, row)
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["combined"]) == 0
  assert not fake.calls
  out = folders / "results" / "combined"
  markdown = (out / "results.md").read_text()
  for model in ("Conv MobileNet", "1.0 MobileNet-128", "0.75 MobileNet-128", "1.0 MobileNet-112"):
    assert f"| {model} |" in markdown
  mean = (_top1(PROTOCOL_EPOCHS, 0) + _top1(PROTOCOL_EPOCHS, 1)) / 2
  assert f"| 1.0 MobileNet-128 | {100 * mean:.1f}% ± 0.5 (2 seeds) |" in markdown  # one point
  assert "Paper: ImageNet" in markdown
  _, width, _ = image.imread(out / "accuracy_vs_mult_adds.png").shape
  assert width >= 1600  # two panels


def test_a_report_of_part_of_a_table_names_the_runs_it_still_waits_for(folders, monkeypatch):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS)
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["table5", "--report-only"]) == 0
  assert not fake.calls
  waiting = [row.name for row in TABLE5[1:]]
  out = folders / "results" / "table5"
  assert f"Not finished yet, so not in this report: {', '.join(waiting)}." in (
      out / "results.md").read_text().splitlines()
  assert json.loads((out / "results.json").read_text())["unfinished"] == waiting


def test_schedule_report_only_without_epochs_reports_every_finished_study_run(
    folders, monkeypatch):
  done = [sweep.schedule_row("dws", 5, 0), sweep.schedule_row("conv", 15, 1), sweep.Row("shallow")]
  for row in done:
    _write_run(folders / "results" / "runs" / row.name, row)
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.TOOL.call(["schedule", "--report-only"]) == 0
  assert not fake.calls
  document = json.loads((folders / "results" / "schedule" / "schedule.json").read_text())
  assert [(point["model"], point["epochs"]) for point in document["points"]] == [
      ("1.0 MobileNet-128", 5.0), ("Conv MobileNet", 15.0),
      ("Shallow MobileNet", sweep.default_epochs("shallow"))]


def test_a_report_rebuilt_from_the_project_records_its_runs_relative_to_it(folders, monkeypatch):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS)
  monkeypatch.chdir(folders)
  assert sweep.TOOL.call(["table5", "--report-only"]) == 0
  document = json.loads((folders / "results" / "table5" / "results.json").read_text())
  assert [run["source"] for run in document["runs"]] == [
      f"results/runs/{TABLE5_DWS.name}/eval_results.json"]
