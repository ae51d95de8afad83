"""The sweep command: which rows it trains, with what, and what it refuses to mix into a table."""
import json
import pathlib
import subprocess

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
  config = sweep.requested_config(row, [])
  for field, value in changes.items():
    section, name = field.split("__")
    config[section][name] = value
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(config))
  if finished:
    (folder / "eval_results.json").write_text(json.dumps(_eval_results(row)))
    (folder / "metrics.jsonl").write_text("")


class FakeTrain:
  """Stands in for subprocess.run: records each train.py call and leaves a finished run."""

  def __init__(self):
    self.calls = []

  def __call__(self, command, *, cwd, check, env):
    del cwd, check
    self.calls.append((command, env))
    config_arg = next(arg for arg in command if arg.startswith("--config="))
    workdir = pathlib.Path(next(arg for arg in command if arg.startswith("--workdir="))
                           .partition("=")[2])
    row = next(row for row in TABLE5 if f"--config={row.config}" == config_arg)
    _write_run(workdir, row)


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
  assert sweep.stale_reason(TABLE5_DWS, sweep.requested_config(TABLE5_DWS, [])) is None


def test_flags_after_double_dash_reach_train_and_count_in_the_staleness_check(folders):
  _write_run(folders / "results" / "runs" / TABLE5_DWS.name, TABLE5_DWS, train__num_epochs=3.0)
  shorter = sweep.requested_config(TABLE5_DWS, ["--config.train.num_epochs=3"])
  assert sweep.stale_reason(TABLE5_DWS, shorter) is None
  assert "train.num_epochs=3.0" in sweep.stale_reason(TABLE5_DWS,
                                                      sweep.requested_config(TABLE5_DWS, []))


def test_missing_rows_train_then_results_and_table_are_written(folders, monkeypatch):
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  fake = FakeTrain()
  monkeypatch.setattr(subprocess, "run", fake)
  assert sweep.main(["table5", "--", "--config.train.log_every_steps=5"]) == 0
  assert [command[-1] for command, _ in fake.calls] == (
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
  assert [env["GLIBC_TUNABLES"] for _, env in fake.calls] == [""] * len(TABLE5)


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
