"""The sweep command: which rows it trains, with what, and what it refuses to mix into a table."""
import json
import pathlib
import subprocess
import sys

import pytest

from mobilenet import sweep

TABLE5 = sweep.TABLES["table5"]
TABLE5_DWS, TABLE5_SHALLOW = TABLE5[:2]


@pytest.fixture
def folders(tmp_path, monkeypatch) -> pathlib.Path:
  monkeypatch.setattr(sweep, "RESULTS", tmp_path / "results")
  monkeypatch.setattr(sweep, "RUNS", tmp_path / "runs")
  return tmp_path


def _eval_results(row: sweep.Row) -> dict:
  return dict(top1=0.7, top5=0.95, params=2_000_000, mult_adds=100_000_000, variant=row.variant,
              alpha=row.alpha, resolution=row.resolution, dataset="imagenette", step=10,
              infer_images_per_s=100.0, device="cpu", seed=row.seed)


def _write_run(folder: pathlib.Path, row: sweep.Row, *, finished=True, **changes) -> None:
  """A run of `row` as train.py leaves it, its config changed at dotted fields."""
  config = sweep.requested_config(row.config, [])
  for field, value in changes.items():
    section, name = field.split("__")
    config[section][name] = value
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(config))
  if finished:
    (folder / "eval_results.json").write_text(json.dumps(_eval_results(row)))
    (folder / "metrics.jsonl").write_text("")


LITERT_FIGURES = dict(litert_fp32_ms=5.0, litert_int8_ms=3.0, litert_int8_top1=0.69,
                      litert_threads=[1], litert_device="cpu")


class FakeTrain:
  """Stands in for subprocess.run: records each call; train.py leaves a finished run, the export
  merges its figures into eval_results.json (or fails with exit 1, or merges nothing)."""

  def __init__(self, export_fails=False, export_merges=True):
    self.calls = []
    self.export_fails, self.export_merges = export_fails, export_merges

  @property
  def train_calls(self) -> list:
    return [(command, env) for command, env in self.calls if command[1] == "train.py"]

  @property
  def export_calls(self) -> list:
    return [(command, env) for command, env in self.calls if command[1:3] == ["-m",
                                                                             "mobilenet.export"]]

  def __call__(self, command, *, cwd, check, env):
    del cwd
    assert check
    self.calls.append((command, env))
    workdir = pathlib.Path(next(arg for arg in command if arg.startswith("--workdir="))
                           .partition("=")[2])
    if command[1] == "train.py":
      config_arg = next(arg for arg in command if arg.startswith("--config="))
      row = next(row for row in TABLE5 if f"--config={row.config}" == config_arg)
      _write_run(workdir, row)
    elif self.export_fails:
      raise subprocess.CalledProcessError(1, command)
    elif self.export_merges:
      results = json.loads((workdir / "eval_results.json").read_text())
      (workdir / "eval_results.json").write_text(json.dumps({**results, **LITERT_FIGURES}))


def test_dry_run_lists_rows_as_done_missing_or_stale_with_the_field(folders, capsys):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS, train__num_epochs=3.0)
  assert sweep.main(["table5", "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert f"{TABLE5_DWS.name:<24} stale" in out
  assert f"{TABLE5_SHALLOW.name:<24} missing" in out
  assert "train.num_epochs=3.0, the sweep now asks for 10.0" in out


def test_a_result_made_with_another_protocol_stops_the_sweep_before_any_training(
    folders, capsys, monkeypatch):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS,
             optimizer__learning_rate=0.1, train__num_epochs=3.0)
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.main(["table5"]) == 1
  error = capsys.readouterr().err.strip()
  assert error.startswith(f"error: {folders / 'results' / 'runs' / TABLE5_DWS.name} was trained "
                          "with train.num_epochs=3.0, the sweep now asks for 10.0 (and 1 more);")
  assert "\n" not in error
  assert not fake.calls
  assert not (folders / "results" / "table5").exists()


def test_an_unfinished_run_started_with_other_settings_is_refused(folders, capsys, monkeypatch):
  _write_run(folders / "runs" / TABLE5_SHALLOW.name, TABLE5_SHALLOW, finished=False,
             data__min_area=0.08)
  monkeypatch.setattr(subprocess, "run", FakeTrain())
  assert sweep.main(["table5"]) == 1
  assert "holds a run started with data.min_area=0.08, the sweep now asks for 0.25; delete it" in (
      capsys.readouterr().err)


def test_paths_logging_and_implementation_choices_do_not_make_a_result_stale(folders):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS,
             data__folder="/elsewhere", train__log_every_steps=7, model__depthwise_impl="grouped",
             train__eval_batch_size=32)
  assert sweep.stale_reason(TABLE5_DWS, sweep.requested_config(TABLE5_DWS.config, [])) is None


def test_flags_after_double_dash_reach_train_and_count_in_the_staleness_check(folders):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS, train__num_epochs=3.0)
  shorter = sweep.requested_config(TABLE5_DWS.config, ["--config.train.num_epochs=3"])
  assert sweep.stale_reason(TABLE5_DWS, shorter) is None
  assert "train.num_epochs=3.0" in sweep.stale_reason(TABLE5_DWS,
                                                      sweep.requested_config(TABLE5_DWS.config, []))


def test_missing_rows_train_then_results_and_table_are_written(folders, monkeypatch):
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.main(["table5", "--", "--config.train.log_every_steps=5"]) == 0
  assert [command[-1] for command, _ in fake.train_calls] == (
      ["--config.train.log_every_steps=5"] * len(TABLE5))
  # train.py picks its allocator itself (mobilenet.allocator): no glibc settings from the sweep.
  assert all("GLIBC_TUNABLES" not in env for _, env in fake.calls)
  for row in TABLE5:
    kept = sorted(path.name for path in (folders / "results" / "runs" / row.name).iterdir())
    assert kept == sorted(sweep.KEPT_FILES)
  table = (folders / "results" / "table5" / "results.md").read_text()
  assert table.startswith("# Table 5 of the paper, on Imagenette")
  assert "Shallow MobileNet" in table

  fake.calls.clear()
  assert sweep.main(["table5"]) == 0  # nothing missing: nothing trained
  assert not fake.calls


def test_a_glibc_tunables_setting_of_the_user_is_kept(folders, monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "")
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.main(["table5"]) == 0
  # Both commands of every row, train.py and the export, get the user's environment.
  assert [env["GLIBC_TUNABLES"] for _, env in fake.calls] == [""] * 2 * len(TABLE5)


@pytest.mark.parametrize("flag, message", [
    ("--config.train.epochs=3", "error: --config.train.epochs: config.train has no field 'epochs' "
                                "(did you mean 'num_epochs'?)"),
    ("--config.train.num_epochs=many", "error: flag --config.train.num_epochs=many: could not "
                                       "convert string to float: 'many'"),
])
def test_a_bad_flag_after_double_dash_is_one_line_naming_it(folders, capsys, flag, message):
  assert sweep.main(["table5", "--dry-run", "--", flag]) == 2
  assert capsys.readouterr().err.strip() == message


def test_an_unreadable_result_config_is_one_line_naming_the_file(folders, capsys):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS)
  (folders / "results" / "runs" / TABLE5_DWS.name / "config.json").write_text("{not json")
  assert sweep.main(["table5"]) == 2
  error = capsys.readouterr().err.strip()
  assert error.startswith(f"error: {folders / 'results' / 'runs' / TABLE5_DWS.name / 'config.json'}"
                          " is not valid JSON")
  assert "\n" not in error


def test_every_trained_row_is_exported_with_int8_right_after_its_training(folders, monkeypatch):
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.main(["table5"]) == 0
  expected = []
  for row in TABLE5:
    expected += [[sys.executable, "train.py", f"--config={row.config}",
                  f"--workdir={folders / 'runs' / row.name}"],
                 [sys.executable, "-m", "mobilenet.export",
                  f"--workdir={folders / 'runs' / row.name}", "--int8"]]
  assert [command for command, _ in fake.calls] == expected


def test_kept_results_carry_the_export_figures_and_the_table_its_columns(folders, monkeypatch):
  monkeypatch.setattr(subprocess, "run", FakeTrain())
  assert sweep.main(["table5"]) == 0
  for row in TABLE5:
    kept = json.loads((folders / "results" / "runs" / row.name / "eval_results.json").read_text())
    assert kept["litert_fp32_ms"] == 5.0 and kept["litert_int8_top1"] == 0.69
  assert "LiteRT int8 ms" in (folders / "results" / "table5" / "results.md").read_text()
  assert (folders / "results" / "table5" / "accuracy_vs_latency.png").is_file()


def test_a_failed_export_stops_the_sweep_in_one_line_with_the_command(
    folders, capsys, monkeypatch):
  fake = FakeTrain(export_fails=True)
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.main(["table5"]) == 1
  error = capsys.readouterr().err.strip()
  first = TABLE5[0]
  command = f"{sys.executable} -m mobilenet.export --workdir={folders / 'runs' / first.name} --int8"
  assert error == (f"error: {first.name} trained, but its export failed (exit 1): `{command}`; "
                   "rerun the sweep to export it again")
  assert len(fake.train_calls) == 1  # no further row trained
  assert not (folders / "results" / "runs" / first.name).exists()  # the row is not finished
  assert not (folders / "results" / "table5").exists()


def test_an_export_that_merges_no_figures_stops_the_sweep(folders, capsys, monkeypatch):
  monkeypatch.setattr(subprocess, "run", FakeTrain(export_merges=False))
  assert sweep.main(["table5"]) == 1
  error = capsys.readouterr().err.strip()
  assert "\n" not in error and "mobilenet.export" in error
  assert "lacks litert_fp32_ms, litert_int8_ms, litert_int8_top1" in error
  assert not (folders / "results" / "runs" / TABLE5[0].name).exists()


def test_a_failed_training_names_its_command_and_skips_the_export(folders, capsys, monkeypatch):
  calls = []

  def failing_train(command, *, cwd, check, env):
    del cwd, check, env
    calls.append(command)
    raise subprocess.CalledProcessError(3, command)

  monkeypatch.setattr(subprocess, "run", failing_train)
  assert sweep.main(["table5"]) == 1
  error = capsys.readouterr().err.strip()
  assert error.startswith(f"error: {TABLE5[0].name} failed (exit 3): `{sys.executable} train.py")
  assert error.endswith("rerun to resume it")
  assert [command[1] for command in calls] == ["train.py"]
