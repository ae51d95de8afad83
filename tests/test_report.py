"""The report command: paper-style table, merged seeds, paper column, plot and input errors."""
import json
import pathlib

import pytest

from tools.report import aggregate, build, command, formatting, load, paper, plots, schedule

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(folder: pathlib.Path, **overrides) -> pathlib.Path:
  """A workdir with an eval_results.json: a 1.0 MobileNet-128 on Imagenette unless overridden."""
  record = dict(top1=0.853, top5=0.981, params=3_220_000, mult_adds=186_123_456, variant="dws",
                alpha=1.0, resolution=128, dataset="imagenette", step=5000,
                infer_images_per_s=812.3, device="cpu: AMD EPYC x2", seed=0)
  record.update(overrides)
  folder.mkdir(parents=True)
  (folder / "eval_results.json").write_text(json.dumps(record))
  return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> pathlib.Path:
  """Two seeds of one model and four other models, as several runs of the project would leave."""
  runs = tmp_path_factory.mktemp("runs")
  write_run(runs / "dws_seed0", seed=0, top1=0.853)
  write_run(runs / "dws_seed1", seed=1, top1=0.861, infer_images_per_s=800.0,
            train_wall_s=3725.0, train_images_per_s=25.43)
  write_run(runs / "half", alpha=0.5, top1=0.792, params=870_000, mult_adds=48_700_000)
  write_run(runs / "low_res", resolution=96, top1=0.8249, mult_adds=104_600_000)
  write_run(runs / "conv", variant="conv", top1=0.874, params=28_150_000,
            mult_adds=1_606_000_000, infer_images_per_s=95.44)
  write_run(runs / "shallow", variant="shallow", top1=0.81, params=2_010_000,
            mult_adds=101_300_000, name="shallow-final")
  return runs


@pytest.fixture(scope="module")
def paper_report(sweep, tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("report")
  paths = [str(path) for path in sorted(sweep.iterdir())]
  assert command.TOOL.call(paths + ["--out", str(out), "--paper", "--base-resolution", "128",
                              "--title", "Imagenette sweep"]) == 0
  return out


def table_rows(markdown: str, heading: str) -> list[list[str]]:
  """The cells of the first table after the line that starts with `heading`."""
  lines = markdown.splitlines()
  start = next(index for index, line in enumerate(lines) if line.startswith(heading))
  table = []
  for line in lines[start + 1:]:
    if line.startswith("|"):
      table.append([cell.strip() for cell in line.strip("|").split("|")])
    elif table:
      break
  return table[2:]  # past the header and the alignment row


def test_model_table_has_the_papers_columns_names_and_descending_mult_adds(paper_report):
  markdown = (paper_report / "results.md").read_text()
  assert markdown.startswith("# Imagenette sweep")
  assert ("| Model | Imagenette Accuracy | Million Mult-Adds | Million Parameters | Images/s |"
          in markdown)
  rows = table_rows(markdown, "## Imagenette")
  assert [row[0] for row in rows] == [
      "Conv MobileNet", "1.0 MobileNet-128", "1.0 MobileNet-96", "Shallow MobileNet",
      "0.5 MobileNet-128"]


def test_model_table_rounds_accuracy_mult_adds_params_and_throughput(paper_report):
  rows = {row[0]: row for row in table_rows((paper_report / "results.md").read_text(),
                                            "## Imagenette")}
  assert rows["1.0 MobileNet-96"][1:5] == ["82.5%", "105", "3.2", "812"]
  assert rows["0.5 MobileNet-128"][1:4] == ["79.2%", "49", "0.9"]
  assert rows["Conv MobileNet"][2:5] == ["1606", "28.1", "95.4"]  # slow models keep a decimal


def test_two_seeds_of_one_model_become_one_row_with_mean_and_half_range(paper_report):
  markdown = (paper_report / "results.md").read_text()
  rows = {row[0]: row for row in table_rows(markdown, "## Imagenette")}
  assert rows["1.0 MobileNet-128"][1] == "85.7% ± 0.4 (2 seeds)"
  assert rows["1.0 MobileNet-128"][4] == "806"  # mean images/s of the two runs
  assert "half the range" in markdown


def test_all_runs_table_keeps_every_seed_and_the_run_name(paper_report):
  runs = table_rows((paper_report / "results.md").read_text(), "### All runs")
  assert len(runs) == 6
  seeds = [(row[1], row[2], row[4]) for row in runs if row[0] == "1.0 MobileNet-128"]
  assert seeds == [("dws_seed0", "0", "85.3%"), ("dws_seed1", "1", "86.1%")]
  assert any(row[1] == "shallow-final" for row in runs)  # `name` wins over the folder name


def test_all_runs_table_shows_training_speed_and_time_where_recorded(paper_report):
  runs = {row[1]: row for row in table_rows((paper_report / "results.md").read_text(),
                                            "### All runs")}
  assert runs["dws_seed1"][9:11] == ["25.4", "1h02m"]
  assert runs["dws_seed0"][9:11] == ["—", "—"]


def test_paper_column_matches_variant_width_and_rescaled_resolution(paper_report):
  rows = {row[0]: row for row in table_rows((paper_report / "results.md").read_text(),
                                            "## Imagenette")}
  assert rows["1.0 MobileNet-128"][5] == "70.6% / 569M / 4.2M (1.0 MobileNet-224)"
  assert rows["1.0 MobileNet-96"][5] == "67.2% / 290M / 4.2M (1.0 MobileNet-160)"  # 96 * 224/128 = 168
  assert rows["Conv MobileNet"][5] == "71.7% / 4866M / 29.3M (Conv MobileNet)"
  assert rows["Shallow MobileNet"][5] == "65.3% / 307M / 2.9M (Shallow MobileNet)"
  assert rows["0.5 MobileNet-128"][5] == "63.7% / 149M / 1.3M (0.5 MobileNet-224)"


def test_results_json_holds_the_aggregated_rows_and_every_run(paper_report):
  document = json.loads((paper_report / "results.json").read_text())
  models = document["models"]
  assert [model["mult_adds"] for model in models] == sorted(
      (model["mult_adds"] for model in models), reverse=True)
  merged = next(model for model in models if model["name"] == "1.0 MobileNet-128")
  assert merged["num_runs"] == 2 and merged["seeds"] == [0, 1]
  assert merged["top1_mean"] == pytest.approx(0.857)
  assert merged["top1_half_range"] == pytest.approx(0.004)
  assert merged["paper_imagenet"]["top1_percent"] == 70.6
  assert len(document["runs"]) == 6


def test_plot_is_a_valid_png_of_real_size(paper_report):
  from matplotlib import image

  path = paper_report / "accuracy_vs_mult_adds.png"
  assert path.read_bytes()[:8] == PNG_SIGNATURE
  assert path.stat().st_size > 20_000
  height, width, _ = image.imread(path).shape
  assert width >= 800 and height >= 600


def test_without_paper_flag_there_is_no_paper_column_and_a_workdir_counts_once(sweep, tmp_path):
  run = sweep / "half"
  assert command.TOOL.call([str(run), str(run / "eval_results.json"), "--out", str(tmp_path)]) == 0
  markdown = (tmp_path / "results.md").read_text()
  assert "Paper" not in markdown
  assert table_rows(markdown, "## Imagenette") == [["0.5 MobileNet-128", "79.2%", "49", "0.9",
                                                     "812"]]


def test_names_follow_the_paper_and_mark_non_base_conv_and_shallow():
  assert aggregate.model_name("dws", 1.0, 224, 224) == "1.0 MobileNet-224"
  assert aggregate.model_name("dws", 0.75, 128, 128) == "0.75 MobileNet-128"
  assert aggregate.model_name("conv", 1.0, 128, 128) == "Conv MobileNet"
  assert aggregate.model_name("conv", 1.0, 96, 128) == "Conv MobileNet-96"
  assert aggregate.model_name("shallow", 0.5, 224, 224) == "0.5 Shallow MobileNet"


def test_project_resolution_ladder_maps_onto_the_papers():
  assert [paper.paper_resolution(r, 128) for r in (128, 112, 96, 80)] == [224, 192, 160, 128]
  assert [paper.paper_resolution(r, 224) for r in (224, 192, 160, 128)] == [224, 192, 160, 128]
  assert paper.paper_resolution(48, 128) is None  # 84 px: far from every rung


def run_failing(argv, capsys) -> str:
  """Runs main expecting failure; returns its single line of stderr."""
  assert command.TOOL.call(argv) != 0
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and "Traceback" not in error
  return error


def test_only_unfinished_workdirs_fail_with_one_line_naming_them(tmp_path, capsys):
  (tmp_path / "unfinished").mkdir()
  (tmp_path / "started").mkdir()
  error = run_failing([str(tmp_path / "unfinished"), str(tmp_path / "started"),
                       "--out", str(tmp_path / "out")], capsys)
  assert str(tmp_path / "unfinished") in error and str(tmp_path / "started") in error
  assert "no finished run" in error and "eval_results.json" in error
  assert not (tmp_path / "out").exists()


def test_unfinished_workdir_beside_finished_runs_is_skipped_with_one_warning(tmp_path, capsys):
  finished = write_run(tmp_path / "finished")
  (tmp_path / "unfinished").mkdir()
  assert command.TOOL.call([str(finished), str(tmp_path / "unfinished"),
                      "--out", str(tmp_path / "out")]) == 0
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and error.startswith("warning: ")
  assert str(tmp_path / "unfinished") in error and "skipped" in error
  assert len(table_rows((tmp_path / "out" / "results.md").read_text(), "### All runs")) == 1


def test_malformed_results_fail_the_report_even_beside_unfinished_workdirs(tmp_path, capsys):
  broken = write_run(tmp_path / "broken")
  (broken / "eval_results.json").write_text('{"top1": 0.8,')
  (tmp_path / "unfinished").mkdir()
  assert command.TOOL.call([str(tmp_path / "unfinished"), str(broken),
                      "--out", str(tmp_path / "out")]) != 0
  error = capsys.readouterr().err.splitlines()[-1]
  assert error.startswith("error: ") and str(broken / "eval_results.json") in error
  assert "not valid JSON" in error
  assert not (tmp_path / "out").exists()


def test_missing_path_fails_with_one_line_naming_it(tmp_path, capsys):
  error = run_failing([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")], capsys)
  assert str(tmp_path / "nowhere") in error


def test_missing_key_fails_with_one_line_naming_file_and_key(tmp_path, capsys):
  run = write_run(tmp_path / "run")
  record = json.loads((run / "eval_results.json").read_text())
  del record["mult_adds"]
  (run / "eval_results.json").write_text(json.dumps(record))
  error = run_failing([str(run), "--out", str(tmp_path / "out")], capsys)
  assert str(run / "eval_results.json") in error and "'mult_adds'" in error


def test_malformed_json_fails_with_one_line_naming_the_file(tmp_path, capsys):
  broken = tmp_path / "broken.json"
  broken.write_text('{"top1": 0.8,')
  error = run_failing([str(broken), "--out", str(tmp_path / "out")], capsys)
  assert str(broken) in error and "not valid JSON" in error


def test_top1_written_as_a_percentage_is_rejected(tmp_path, capsys):
  run = write_run(tmp_path / "run", top1=85.3)
  error = run_failing([str(run), "--out", str(tmp_path / "out")], capsys)
  assert "'top1'" in error and "fraction" in error


def test_runs_of_one_model_that_disagree_on_size_are_rejected(tmp_path, capsys):
  first = write_run(tmp_path / "a", seed=0)
  second = write_run(tmp_path / "b", seed=1, mult_adds=200_000_000)
  error = run_failing([str(first), str(second), "--out", str(tmp_path / "out")], capsys)
  assert "1.0 MobileNet-128" in error and "'mult_adds'" in error


def test_each_dataset_gets_its_own_table_headed_by_its_name(tmp_path):
  imagenette = write_run(tmp_path / "imagenette")
  imagenet = write_run(tmp_path / "imagenet", dataset="imagenet2012", resolution=224, top1=0.702,
                       mult_adds=569_000_000, params=4_230_000)
  assert command.TOOL.call([str(imagenette), str(imagenet), "--out", str(tmp_path / "out")]) == 0
  markdown = (tmp_path / "out" / "results.md").read_text()
  assert "| Model | ImageNet Accuracy |" in markdown
  assert "| Model | Imagenette Accuracy |" in markdown
  assert table_rows(markdown, "## ImageNet (imagenet2012)")[0][:3] == [
      "1.0 MobileNet-224", "70.2%", "569"]


def test_crowded_labels_still_make_a_plot(tmp_path):
  """Many models at one point: no free place is left for most labels, the plot still comes out."""
  runs = [write_run(tmp_path / f"run{alpha}", alpha=alpha) for alpha in (1.0, 0.9, 0.8, 0.7, 0.6)]
  assert command.TOOL.call([str(run) for run in runs] + ["--out", str(tmp_path / "out")]) == 0
  assert (tmp_path / "out" / "accuracy_vs_mult_adds.png").read_bytes()[:8] == PNG_SIGNATURE


def test_dataset_labels_read_the_names_the_trainer_writes():
  assert formatting.dataset_label("imagenette2-224") == "Imagenette"
  assert formatting.dataset_label("imagenet2012") == "ImageNet"
  assert formatting.dataset_label("cifar10") == "cifar10"


# ---------------------------------------------------------------- protocols

BASE_CONFIG = {
    "seed": 0,
    "model": {"variant": "dws", "alpha": 1.0, "depthwise_impl": "auto"},
    "data": {"folder": "/data/imagenette2-224", "resolution": 128, "cache": True},
    "train": {"global_batch_size": 64, "num_epochs": 10.0, "log_every_steps": 20},
    "optimizer": {"name": "sgd", "learning_rate": 0.4, "schedule": "warmup_cosine"},
}


def write_config(folder: pathlib.Path, **changes) -> None:
  """A config.json beside the run's results, as train.py writes it, changed at
  section__field (e.g. train__num_epochs=3.0)."""
  config = json.loads(json.dumps(BASE_CONFIG))
  for field, value in changes.items():
    if "__" in field:
      section, name = field.split("__")
      config[section][name] = value
    else:
      config[field] = value
  (folder / "config.json").write_text(json.dumps(config))


def model_rows(out: pathlib.Path) -> dict:
  return {row[0]: row for row in table_rows((out / "results.md").read_text(), "## Imagenette")}


def test_seeds_of_one_protocol_merge_though_paths_and_logging_differ(tmp_path):
  first, second = write_run(tmp_path / "s0", seed=0), write_run(tmp_path / "s1", seed=1)
  write_config(first)
  write_config(second, seed=1, data__folder="/elsewhere", train__log_every_steps=7,
               model__depthwise_impl="grouped")
  assert command.TOOL.call([str(first), str(second), "--out", str(tmp_path / "out")]) == 0
  assert list(model_rows(tmp_path / "out")) == ["1.0 MobileNet-128"]


@pytest.mark.parametrize("changes, label", [
    (dict(train__num_epochs=3.0), "train.num_epochs"),
    (dict(optimizer__schedule="exponential"), "optimizer.schedule"),
    (dict(optimizer__learning_rate=0.1), "optimizer.learning_rate"),
    (dict(train__global_batch_size=128), "train.global_batch_size"),
])
def test_runs_of_one_model_under_different_protocols_are_separate_labelled_rows(
    tmp_path, changes, label):
  first = write_run(tmp_path / "a", seed=0, top1=0.85)
  second = write_run(tmp_path / "b", seed=1, top1=0.60)
  write_config(first)
  write_config(second, seed=1, **changes)
  assert command.TOOL.call([str(first), str(second), "--out", str(tmp_path / "out")]) == 0
  (value,) = changes.values()
  section, name = label.split(".")
  original = BASE_CONFIG[section][name]
  accuracies = {name: row[1] for name, row in model_rows(tmp_path / "out").items()}
  assert accuracies == {f"1.0 MobileNet-128 ({label}={original})": "85.0%",  # not "± (2 seeds)"
                        f"1.0 MobileNet-128 ({label}={value})": "60.0%"}


def test_two_seeds_of_each_of_two_protocols_make_two_merged_rows(tmp_path):
  paths = []
  for epochs in (10.0, 3.0):
    for seed in (0, 1):
      run = write_run(tmp_path / f"e{epochs:g}_s{seed}", seed=seed, top1=0.5 + epochs / 100)
      write_config(run, seed=seed, train__num_epochs=epochs)
      paths.append(str(run))
  assert command.TOOL.call(paths + ["--out", str(tmp_path / "out")]) == 0
  rows = model_rows(tmp_path / "out")
  assert rows["1.0 MobileNet-128 (train.num_epochs=10.0)"][1] == "60.0% ± 0.0 (2 seeds)"
  assert rows["1.0 MobileNet-128 (train.num_epochs=3.0)"][1] == "53.0% ± 0.0 (2 seeds)"
  document = json.loads((tmp_path / "out" / "results.json").read_text())
  assert sorted(model["protocol"]["train.num_epochs"] for model in document["models"]) == [
      3.0, 10.0]


def test_runs_evaluated_at_different_steps_do_not_merge(tmp_path):
  """eval.py --step=N records an earlier checkpoint's accuracy under the same config.json."""
  final, earlier = write_run(tmp_path / "final", step=1470), write_run(tmp_path / "early", step=500)
  write_config(final)
  write_config(earlier)
  assert command.TOOL.call([str(final), str(earlier), "--out", str(tmp_path / "out")]) == 0
  assert sorted(model_rows(tmp_path / "out")) == ["1.0 MobileNet-128 (step=1470)",
                                                  "1.0 MobileNet-128 (step=500)"]


def test_a_run_without_config_json_does_not_merge_with_runs_that_have_one(tmp_path):
  known, unknown = write_run(tmp_path / "known", seed=0), write_run(tmp_path / "unknown", seed=1)
  write_config(known)
  assert command.TOOL.call([str(known), str(unknown), "--out", str(tmp_path / "out")]) == 0
  assert sorted(model_rows(tmp_path / "out")) == ["1.0 MobileNet-128",
                                                  "1.0 MobileNet-128 (config.json=missing)"]


def test_different_models_need_no_protocol_label(tmp_path):
  wide, narrow = write_run(tmp_path / "wide"), write_run(tmp_path / "narrow", alpha=0.5)
  write_config(wide)
  write_config(narrow, model__alpha=0.5)
  assert command.TOOL.call([str(wide), str(narrow), "--out", str(tmp_path / "out")]) == 0
  assert sorted(model_rows(tmp_path / "out")) == ["0.5 MobileNet-128", "1.0 MobileNet-128"]


def test_malformed_config_json_fails_with_one_line_naming_it(tmp_path, capsys):
  run = write_run(tmp_path / "run")
  (run / "config.json").write_text("{not json")
  error = run_failing([str(run), "--out", str(tmp_path / "out")], capsys)
  assert str(run / "config.json") in error and "not valid JSON" in error


def test_committed_runs_rebuild_their_committed_tables(tmp_path):
  """The protocol split leaves the first sweep's tables as they are: all their seeds merge."""
  from tools import runs, sweep

  archive = runs.RESULTS / "untuned_10_epochs"
  for table in ("table4", "table6"):
    done = [str(archive / "runs" / row.name) for row in sweep.TABLES[table]
            if (archive / "runs" / row.name / "eval_results.json").is_file()]
    out = tmp_path / table
    title = f"Table {table.removeprefix('table')} of the paper, on Imagenette"
    assert command.TOOL.call(done + ["--out", str(out), "--paper", "--base-resolution",
                               str(sweep.BASE_RESOLUTION), "--title", title]) == 0
    assert ((out / "results.md").read_text()
            == (archive / table / "results.md").read_text())


# ---------------------------------------------------------------- LiteRT latency

def exported(litert_device="AMD EPYC x2", **figures) -> dict:
  """The keys tools.export merges into eval_results.json (a subset of them); the export
  names the CPU bare, where the trainer's `device` says "cpu: " first."""
  return dict(litert_threads=[1], litert_device=litert_device,
              litert_fp32_max_rel_error=2e-6, **figures)


@pytest.fixture(scope="module")
def latency_report(tmp_path_factory) -> pathlib.Path:
  """Two exported seeds of MobileNet, one exported Conv MobileNet, one run never exported."""
  runs = tmp_path_factory.mktemp("exported_runs")
  write_run(runs / "dws_s0", seed=0, top1=0.70,
            **exported(litert_fp32_ms=5.0, litert_int8_ms=3.0, litert_int8_top1=0.68))
  write_run(runs / "dws_s1", seed=1, top1=0.72,
            **exported(litert_fp32_ms=7.0, litert_int8_ms=4.0, litert_int8_top1=0.70))
  write_run(runs / "conv", variant="conv", top1=0.78, params=28_280_000,
            mult_adds=1_589_000_000,
            **exported(litert_fp32_ms=123.4, litert_int8_ms=40.25, litert_int8_top1=0.775))
  write_run(runs / "half", alpha=0.5, top1=0.67, params=870_000, mult_adds=48_700_000)
  out = tmp_path_factory.mktemp("latency_report")
  assert command.TOOL.call([str(path) for path in sorted(runs.iterdir())]
                     + ["--out", str(out), "--paper", "--base-resolution", "128"]) == 0
  return out


def test_latency_columns_sit_between_throughput_and_paper_and_average_the_seeds(latency_report):
  markdown = (latency_report / "results.md").read_text()
  assert ("| Images/s | LiteRT fp32 ms | LiteRT int8 ms | LiteRT int8 Top-1 | Paper: ImageNet"
          in markdown)
  rows = model_rows(latency_report)
  assert rows["1.0 MobileNet-128"][5:8] == ["6.0", "3.5", "69.0% ± 1.0"]
  assert rows["Conv MobileNet"][5:8] == ["123", "40.2", "77.5%"]


def test_a_model_never_exported_shows_dashes_in_the_latency_columns(latency_report):
  assert model_rows(latency_report)["0.5 MobileNet-128"][5:8] == ["—", "—", "—"]
  runs = {row[1]: row for row in table_rows((latency_report / "results.md").read_text(),
                                            "### All runs")}
  assert runs["half"][11:14] == ["—", "—", "—"]
  assert runs["dws_s1"][11:15] == ["7.0", "4.0", "70.0%", "cpu: AMD EPYC x2"]


def test_latency_note_names_the_runtime_and_the_device_it_was_timed_on(latency_report):
  markdown = (latency_report / "results.md").read_text()
  assert "XNNPACK, batch 1, one thread" in markdown
  assert "On AMD EPYC x2: an x86 CPU" in markdown and "not a phone" in markdown


def test_results_json_carries_latency_means_and_each_runs_figures(latency_report):
  document = json.loads((latency_report / "results.json").read_text())
  models = {model["name"]: model for model in document["models"]}
  assert models["1.0 MobileNet-128"]["litert_fp32_ms_mean"] == pytest.approx(6.0)
  assert models["1.0 MobileNet-128"]["litert_int8_ms_mean"] == pytest.approx(3.5)
  assert models["1.0 MobileNet-128"]["litert_int8_top1_mean"] == pytest.approx(0.69)
  assert models["1.0 MobileNet-128"]["litert_int8_top1_half_range"] == pytest.approx(0.01)
  assert models["0.5 MobileNet-128"]["litert_fp32_ms_mean"] is None
  runs = {pathlib.Path(run["source"]).parent.name: run for run in document["runs"]}
  assert runs["conv"]["litert_int8_top1"] == 0.775 and runs["half"]["litert_int8_ms"] is None


def test_latency_plot_is_written_beside_the_mult_adds_plot(latency_report):
  from matplotlib import image

  path = latency_report / "accuracy_vs_latency.png"
  assert path.read_bytes()[:8] == PNG_SIGNATURE
  height, width, _ = image.imread(path).shape
  assert width >= 800 and height >= 600
  assert (latency_report / "accuracy_vs_mult_adds.png").is_file()


@pytest.fixture(scope="module")
def two_device_report(tmp_path_factory) -> pathlib.Path:
  """Conv MobileNet's two seeds trained, evaluated and exported on different CPUs; MobileNet's
  one seed on one of them."""
  runs = tmp_path_factory.mktemp("two_device_runs")
  xeon, epyc = "Intel(R) Xeon(R) Processor, 2 cores", "AMD EPYC, 2 cores"
  conv = dict(variant="conv", params=28_280_000, mult_adds=1_589_000_000)
  write_run(runs / "conv_s0", seed=0, top1=0.828, device="cpu: " + xeon, infer_images_per_s=67.2,
            **conv, **exported(xeon, litert_fp32_ms=37.5, litert_int8_ms=2.3,
                               litert_int8_top1=0.827))
  write_run(runs / "conv_s1", seed=1, top1=0.830, device="cpu: " + epyc, infer_images_per_s=52.8,
            **conv, **exported(epyc, litert_fp32_ms=34.4, litert_int8_ms=8.7,
                               litert_int8_top1=0.830))
  write_run(runs / "dws_s0", seed=0, top1=0.859, device="cpu: " + xeon, infer_images_per_s=434.0,
            **exported(xeon, litert_fp32_ms=2.9, litert_int8_ms=1.0, litert_int8_top1=0.860))
  out = tmp_path_factory.mktemp("two_device_report")
  assert command.TOOL.call([str(path) for path in sorted(runs.iterdir())]
                     + ["--out", str(out), "--paper", "--base-resolution", "128"]) == 0
  return out


def test_timings_of_different_cpus_are_shown_per_cpu_never_averaged(two_device_report):
  rows = model_rows(two_device_report)
  assert rows["Conv MobileNet"][4:8] == [
      "52.8 (EPYC), 67.2 (Xeon)", "34.4 (EPYC), 37.5 (Xeon)", "8.7 (EPYC), 2.3 (Xeon)",
      "82.8% ± 0.2"]  # accuracy does not depend on the machine: it stays one mean
  assert rows["1.0 MobileNet-128"][4:7] == ["434 (Xeon)", "2.9 (Xeon)", "1.0 (Xeon)"]
  markdown = (two_device_report / "results.md").read_text()
  assert ("EPYC = cpu: AMD EPYC, 2 cores; Xeon = cpu: Intel(R) Xeon(R) Processor, 2 cores."
          in markdown)


def test_json_gives_timings_per_device_and_no_mean_across_devices(two_device_report):
  models = {model["name"]: model
            for model in json.loads((two_device_report / "results.json").read_text())["models"]}
  conv, dws = models["Conv MobileNet"], models["1.0 MobileNet-128"]
  assert conv["infer_images_per_s_mean"] is None and conv["litert_int8_ms_mean"] is None
  assert conv["litert_int8_ms_by_device"] == {"cpu: AMD EPYC, 2 cores": 8.7,
                                              "cpu: Intel(R) Xeon(R) Processor, 2 cores": 2.3}
  assert dws["litert_fp32_ms_mean"] == 2.9
  assert dws["infer_images_per_s_by_device"] == {
      "cpu: Intel(R) Xeon(R) Processor, 2 cores": 434.0}


def test_latency_note_names_each_cpu_once_whether_the_export_named_it_or_not(tmp_path):
  epyc = "AMD EPYC, 2 cores"
  write_run(tmp_path / "named", seed=0, device="cpu: " + epyc,
            **exported(epyc, litert_fp32_ms=3.0, litert_int8_ms=1.0, litert_int8_top1=0.7))
  write_run(tmp_path / "unnamed", seed=1, device="cpu: " + epyc,  # an export that named none
            **exported(None, litert_fp32_ms=3.2, litert_int8_ms=1.1, litert_int8_top1=0.7))
  out = tmp_path / "report"
  assert command.TOOL.call([str(tmp_path / "named"), str(tmp_path / "unnamed"), "--out", str(out)]) == 0
  markdown = (out / "results.md").read_text()
  assert "mean over a model's exported runs on one CPU" in markdown
  assert f"On {epyc}: an x86 CPU" in markdown


def test_latency_plot_of_two_cpus_is_still_written(two_device_report):
  assert (two_device_report / "accuracy_vs_latency.png").read_bytes()[:8] == PNG_SIGNATURE


def test_device_labels_shorten_cpu_names_add_cores_or_keep_full_names_where_they_collide():
  assert formatting.device_labels(["cpu: AMD EPYC 7B13, 2 cores", "gpu: NVIDIA H200 x1"]) == {
      "cpu: AMD EPYC 7B13, 2 cores": "EPYC 7B13", "gpu: NVIDIA H200 x1": "gpu: NVIDIA H200 x1"}
  one_cpu_two_shares = ["cpu: AMD EPYC, 1 of 2 cores", "cpu: AMD EPYC, 2 cores"]
  assert formatting.device_labels(one_cpu_two_shares) == {
      "cpu: AMD EPYC, 1 of 2 cores": "EPYC 1 of 2 cores", "cpu: AMD EPYC, 2 cores": "EPYC 2 cores"}
  same_name = ["cpu: AMD EPYC, 2 cores", "cpu: AMD(R) EPYC, 2 cores"]
  assert formatting.device_labels(same_name) == {device: device for device in same_name}


def test_without_any_exported_run_there_are_no_latency_columns_keys_or_plot(sweep, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "accuracy_vs_latency.png").write_bytes(PNG_SIGNATURE)  # from an earlier report
  assert command.TOOL.call([str(sweep / "conv"), "--out", str(out)]) == 0
  assert "LiteRT" not in (out / "results.md").read_text()
  assert "litert" not in (out / "results.json").read_text()
  assert not (out / "accuracy_vs_latency.png").exists()


@pytest.mark.parametrize("figures, key", [
    (dict(litert_int8_top1=68.0), "'litert_int8_top1'"),  # a percentage, not a fraction
    (dict(litert_fp32_ms=0.0), "'litert_fp32_ms'"),
    (dict(litert_int8_ms="fast"), "'litert_int8_ms'"),
])
def test_impossible_latency_figures_fail_with_one_line_naming_the_key(
    tmp_path, capsys, figures, key):
  run = write_run(tmp_path / "run", **figures)
  error = run_failing([str(run), "--out", str(tmp_path / "out")], capsys)
  assert key in error and str(run / "eval_results.json") in error


# ---------------------------------------------------------------- paper panel

def test_paper_panel_plots_two_panels_and_brings_the_paper_column(sweep, tmp_path):
  from matplotlib import image

  out = tmp_path / "out"
  assert command.TOOL.call([str(path) for path in sorted(sweep.iterdir())]
                     + ["--out", str(out), "--paper-panel", "--base-resolution", "128"]) == 0
  assert "Paper: ImageNet Top-1 / Mult-Adds / Params" in (out / "results.md").read_text()
  height, width, _ = image.imread(out / "accuracy_vs_mult_adds.png").shape
  assert width >= 1600 and height >= 600


def test_the_panels_points_are_a_models_mean_and_spread_and_the_papers_figures(tmp_path):
  paths = [write_run(tmp_path / "s0", seed=0, top1=0.85), write_run(tmp_path / "s1", seed=1,
                                                                    top1=0.86),
           write_run(tmp_path / "tiny", resolution=48, mult_adds=26_000_000, top1=0.6)]
  runs, _ = load.load_runs(paths)
  rows = {row.name: row for row in aggregate.aggregate(runs, 128)}
  ours = plots.measured_point(rows["1.0 MobileNet-128"])
  assert (ours.label, ours.million_mult_adds) == ("1.0 MobileNet-128", 186.123456)
  assert (ours.top1_percent, ours.spread) == (pytest.approx(85.5), pytest.approx(0.5))
  assert plots.paper_point(rows["1.0 MobileNet-128"]) == plots.PlanePoint(
      "1.0 MobileNet-224", 569, 70.6)
  assert plots.paper_point(rows["1.0 MobileNet-48"]) is None  # no such row in the paper


# ---------------------------------------------------------------- schedule study

def write_metrics(folder: pathlib.Path, *records: dict) -> None:
  (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def write_study_run(folder: pathlib.Path, epochs: float, seed: int, top1: float,
                    variant: str = "dws", **overrides) -> pathlib.Path:
  """A finished run trained for `epochs` (100 steps each), evaluated after every epoch."""
  run = write_run(folder, **{"seed": seed, "top1": top1, "variant": variant,
                              "step": round(100 * epochs), "train_wall_s": 60.0 * epochs,
                              **overrides})
  write_config(run, seed=seed, train__num_epochs=epochs, model__variant=variant)
  write_metrics(run, *[dict(step=100 * epoch, kind="eval", top1=top1 * epoch / epochs)
                       for epoch in range(1, round(epochs) + 1)])
  return run


@pytest.fixture(scope="module")
def schedule_report(tmp_path_factory) -> pathlib.Path:
  """MobileNet at 5 and 20 epochs (two seeds each) and Conv MobileNet at 5 epochs."""
  runs = tmp_path_factory.mktemp("study")
  paths = [write_study_run(runs / "dws_e5_s0", 5.0, 0, 0.60),
           write_study_run(runs / "dws_e5_s1", 5.0, 1, 0.62),
           write_study_run(runs / "dws_e20_s0", 20.0, 0, 0.80),
           write_study_run(runs / "dws_e20_s1", 20.0, 1, 0.81),
           write_study_run(runs / "conv_e5_s0", 5.0, 0, 0.70, variant="conv",
                           params=28_150_000, mult_adds=1_606_000_000)]
  out = tmp_path_factory.mktemp("schedule_report")
  assert command.TOOL.call([str(path) for path in paths] + [
      "--out", str(out), "--schedule", "--base-resolution", "128", "--title", "Study"]) == 0
  return out


def test_schedule_table_has_a_row_per_model_and_epoch_count_with_seeds_merged(schedule_report):
  markdown = (schedule_report / "schedule.md").read_text()
  assert markdown.startswith("# Study")
  assert table_rows(markdown, "# Study") == [
      ["1.0 MobileNet-128", "5", "0, 1", "61.0% ± 1.0 (2 seeds)", "186", "5m00s"],
      ["1.0 MobileNet-128", "20", "0, 1", "80.5% ± 0.5 (2 seeds)", "186", "20m00s"],
      ["Conv MobileNet", "5", "0", "70.0%", "1606", "5m00s"]]
  assert "evaluation excluded, on the device of its last training sitting; on cpu: AMD EPYC x2." in (
      markdown)
  assert not (schedule_report / "results.md").exists()


def test_schedule_train_times_of_seeds_on_different_devices_are_shown_per_device(tmp_path):
  paths = [write_study_run(tmp_path / "s0", 5.0, 0, 0.60, device="cpu: AMD EPYC, 1 of 2 cores",
                           train_wall_s=1800.0),
           write_study_run(tmp_path / "s1", 5.0, 1, 0.62,
                           device="cpu: Intel(R) Xeon(R) Processor, 2 cores", train_wall_s=1200.0)]
  assert command.TOOL.call([str(path) for path in paths] + [
      "--out", str(tmp_path / "out"), "--schedule", "--base-resolution", "128"]) == 0
  markdown = (tmp_path / "out" / "schedule.md").read_text()
  assert table_rows(markdown, "# ")[0][5] == "30m00s (EPYC), 20m00s (Xeon)"
  assert "EPYC = cpu: AMD EPYC, 1 of 2 cores; Xeon = cpu: Intel(R) Xeon(R) Processor" in markdown
  point = json.loads((tmp_path / "out" / "schedule.json").read_text())["points"][0]
  assert point["train_wall_s_mean"] is None
  assert point["train_wall_s_by_device"] == {"cpu: AMD EPYC, 1 of 2 cores": 1800.0,
                                             "cpu: Intel(R) Xeon(R) Processor, 2 cores": 1200.0}


def test_schedule_runs_without_a_train_time_show_a_dash_and_say_none_was_recorded(tmp_path):
  run = write_study_run(tmp_path / "s0", 5.0, 0, 0.60, train_wall_s=None)
  assert command.TOOL.call([str(run), "--out", str(tmp_path / "out"), "--schedule"]) == 0
  markdown = (tmp_path / "out" / "schedule.md").read_text()
  assert table_rows(markdown, "# ")[0][5] == "—"
  assert "on the device of its last training sitting; none was recorded." in markdown
  assert "several devices" not in markdown


def test_a_run_evaluated_again_elsewhere_keeps_its_train_time_on_its_training_device(tmp_path):
  run = write_study_run(tmp_path / "s0", 5.0, 0, 0.60, device="cpu: Intel(R) Xeon(R), 2 cores",
                        train_device="cpu: AMD EPYC, 2 cores", train_wall_s=1800.0)
  assert command.TOOL.call([str(run), "--out", str(tmp_path / "out"), "--schedule"]) == 0
  point = json.loads((tmp_path / "out" / "schedule.json").read_text())["points"][0]
  assert point["train_wall_s_by_device"] == {"cpu: AMD EPYC, 2 cores": 1800.0}


def test_schedule_json_holds_the_points_and_each_runs_curve_in_epochs(schedule_report):
  document = json.loads((schedule_report / "schedule.json").read_text())
  point = document["points"][1]
  assert (point["model"], point["epochs"], point["seeds"]) == ("1.0 MobileNet-128", 20.0, [0, 1])
  assert point["top1_mean"] == pytest.approx(0.805)
  assert point["train_wall_s_mean"] == 1200.0
  curve = next(curve for curve in document["curves"] if curve["run_name"] == "dws_e5_s1")
  assert curve["epochs"] == [1.0, 2.0, 3.0, 4.0, 5.0]
  assert curve["top1"][-1] == pytest.approx(0.62)


def test_schedule_plot_is_a_valid_png_of_two_panels(schedule_report):
  from matplotlib import image

  height, width, _ = image.imread(schedule_report / "schedule.png").shape
  assert width >= 1600 and height >= 600


def test_an_evaluation_is_placed_at_its_recorded_epoch_else_at_its_step_and_the_last_wins(
    tmp_path):
  run = write_study_run(tmp_path / "run", 4.0, 0, 0.8)
  write_metrics(run, dict(step=100, kind="eval", top1=0.3), dict(step=150, kind="train", loss=1),
                dict(step=200, kind="eval", top1=0.4),
                dict(step=200, kind="eval", top1=0.5),  # evaluated again after a resume
                dict(step=300, kind="eval", top1=0.6, epoch=2.9))
  runs, _ = load.load_runs([run])
  (point,) = schedule.schedule_points(aggregate.aggregate(runs, 128), 128)
  curve = schedule.eval_curve(point, runs[0])
  assert curve.epochs == (1.0, 2.0, 2.9)
  assert curve.top1 == (0.3, 0.5, 0.6)


def test_a_run_of_unknown_length_fails_the_schedule_with_one_line_naming_it(tmp_path, capsys):
  run = write_run(tmp_path / "run")  # no config.json beside it
  error = run_failing([str(run), "--out", str(tmp_path / "out"), "--schedule"], capsys)
  assert str(run / "eval_results.json") in error and "train.num_epochs" in error


def test_a_malformed_metrics_line_fails_the_schedule_with_one_line_naming_it(tmp_path, capsys):
  run = write_study_run(tmp_path / "run", 2.0, 0, 0.8)
  (run / "metrics.jsonl").write_text('{"step": 100, "kind": "eval", "top1": 0.5}\n{"step": 2')
  error = run_failing([str(run), "--out", str(tmp_path / "out"), "--schedule"], capsys)
  assert str(run / "metrics.jsonl") in error and "line 2" in error


def test_latency_plot_over_two_datasets_names_and_colours_the_one_it_shows(tmp_path):
  """Imagenette runs were exported, the dogs runs were not: the latency plot's title names
  Imagenette only, its series says Imagenette, in Imagenette's colour of the other plot."""
  write_run(tmp_path / "nette", dataset="imagenette2-224",
            **exported("AMD EPYC, 2 cores", litert_fp32_ms=2.9, litert_int8_ms=1.0,
                       litert_int8_top1=0.85))
  write_run(tmp_path / "dogs", dataset="aadogs", top1=0.60)  # sorts before Imagenette
  runs, _ = load.load_runs(sorted(tmp_path.iterdir()))
  rows = aggregate.aggregate(runs, 128)
  timed = plots.rows_by_latency_device(rows, 128)
  dataset_colors = plots.series_colors(formatting.dataset_label(row.dataset) for row in rows)
  series_of = plots.latency_series(timed, name_datasets=True)
  assert [series_of(row) for row in timed] == ["Imagenette, EPYC"]
  assert plots.latency_colors(timed, series_of, dataset_colors) == {
      "Imagenette, EPYC": dataset_colors["Imagenette"]}
  title = build.latency_title(rows, timed, build.default_title(rows))
  assert title == "MobileNet accuracy vs LiteRT fp32 latency (Imagenette)"
  assert "aadogs" in build.default_title(rows)
  assert command.TOOL.call([str(path) for path in sorted(tmp_path.iterdir())]
                     + ["--out", str(tmp_path / "out")]) == 0
  assert (tmp_path / "out" / "accuracy_vs_latency.png").read_bytes().startswith(PNG_SIGNATURE)
