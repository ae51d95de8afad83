"""results.md (one table per dataset, then every run) and results.json, from the model rows."""
import dataclasses
import json
from typing import Sequence

from tools.report.aggregate import ModelRow, has_latency, only_value, timing_devices
from tools.report.formatting import dataset_label, devices_note, format_accuracy
from tools.report.formatting import format_duration_or_dash, format_images_per_s, format_ms
from tools.report.formatting import format_paper, format_percent, format_timing, markdown_table
from tools.report.formatting import timing_labels, unfinished_note
from tools.report.load import CPU_PREFIX, LATENCY_KEYS, Run


MARKDOWN_FILENAME = "results.md"
JSON_FILENAME = "results.json"
LATENCY_HEADER = ["LiteRT fp32 ms", "LiteRT int8 ms", "LiteRT int8 Top-1"]


def models_table(rows: Sequence[ModelRow], with_paper: bool) -> list[str]:
  header = ["Model", f"{dataset_label(rows[0].dataset)} Accuracy", "Million Mult-Adds",
            "Million Parameters", "Images/s"]
  with_latency = has_latency(rows)
  if with_latency:
    header += LATENCY_HEADER
  if with_paper:
    header.append("Paper: ImageNet Top-1 / Mult-Adds / Params")
  devices = timing_devices(rows)
  labels = timing_labels(devices)
  cells = []
  for row in rows:
    line = [row.name, format_accuracy(row), f"{row.mult_adds / 1e6:.0f}",
            f"{row.params / 1e6:.1f}",
            format_timing(row.infer_images_per_s_by_device, format_images_per_s, labels)]
    if with_latency:
      line += [format_timing(row.litert_fp32_ms_by_device, format_ms, labels),
               format_timing(row.litert_int8_ms_by_device, format_ms, labels),
               format_percent(row.litert_int8_top1_mean, row.litert_int8_top1_spread)]
    if with_paper:
      line.append(format_paper(row.paper))
    cells.append(line)
  return markdown_table(header, cells, text_columns=(header[0], header[-1]) if with_paper
                        else (header[0],))


def runs_table(rows: Sequence[ModelRow]) -> list[str]:
  header = ["Model", "Run", "Seed", "Step", "Top-1", "Top-5", "Million Mult-Adds",
            "Million Parameters", "Images/s", "Train images/s", "Train time", "Device"]
  with_latency = has_latency(rows)
  if with_latency:
    header[-1:-1] = LATENCY_HEADER
  cells = []
  for row in rows:
    for run in row.runs:
      line = [row.name, run.run_name, "—" if run.seed is None else str(run.seed),
              str(run.step), f"{100 * run.top1:.1f}%", f"{100 * run.top5:.1f}%",
              f"{run.mult_adds / 1e6:.0f}", f"{run.params / 1e6:.1f}",
              format_images_per_s(run.infer_images_per_s),
              "—" if run.train_images_per_s is None
              else format_images_per_s(run.train_images_per_s),
              format_duration_or_dash(run.train_wall_s)]
      if with_latency:
        line += [format_ms(run.litert_fp32_ms), format_ms(run.litert_int8_ms),
                 format_percent(run.litert_int8_top1)]
      cells.append(line + [run.device])
  return markdown_table(header, cells, text_columns=("Model", "Run", "Device"))


def table_notes(rows: Sequence[ModelRow], with_paper: bool, base_resolution: int) -> list[str]:
  notes = [
      "Accuracy is top-1 on the evaluation split. Where a model has several runs, the row "
      "shows their mean ± half the range, (max − min) / 2, in percentage points, so that "
      "mean ± spread covers every run; all runs are listed below.",
      "Images/s is the measured inference throughput (mean over runs); train images/s and "
      "time are the run's training steps, every session added up, evaluation excluded; "
      + devices_note(timing_devices(rows), "runs"),
  ]
  if has_latency(rows):
    latency_devices = sorted({run.latency_device.removeprefix(CPU_PREFIX) for row in rows
                              for run in row.runs if run.latency_device is not None})
    notes.append(
        "LiteRT: the run exported by `python -m tools.export --int8`, timed with the LiteRT "
        "interpreter and XNNPACK, batch 1, one thread, median of repeated runs (mean over a "
        "model's exported runs on one CPU); int8 top-1 is the full-integer model's accuracy on "
        "the whole evaluation split (mean ± half the range); — where a run was not exported. On "
        + "; ".join(latency_devices) + ": an x86 CPU running the mobile runtime's kernels, "
        "not a phone.")
  if with_paper:
    notes.append(
        "Paper: ImageNet top-1, mult-adds and parameters of Howard et al. (2017), Tables 4–7, "
        f"for the same variant and width, resolution r read as r × 224 / {base_resolution} and "
        "matched to the nearest of 224/192/160/128 within 16 px. Different dataset, resolution "
        "and classifier: compare trends, not numbers.")
  return notes


def format_markdown(rows: Sequence[ModelRow], title: str, with_paper: bool,
                    base_resolution: int, unfinished: Sequence[str] = ()) -> str:
  lines = [f"# {title}", "", *unfinished_note(unfinished)]
  for dataset in sorted({row.dataset for row in rows}):
    dataset_rows = [row for row in rows if row.dataset == dataset]
    lines += [f"## {dataset_label(dataset)} ({dataset})", ""]
    lines += models_table(dataset_rows, with_paper) + [""]
    for note in table_notes(dataset_rows, with_paper, base_resolution):
      lines += [note, ""]
    lines += [f"### All runs ({dataset_label(dataset)})", ""]
    lines += runs_table(dataset_rows) + [""]
  return "\n".join(lines)


def run_to_json(run: Run, with_latency: bool) -> dict:
  """The run as its eval_results.json gave it; its settings are its config.json's."""
  document = dataclasses.asdict(run)
  del document["settings"], document["has_config"]
  if run.train_device is None:  # trained where it was evaluated, as nearly every run
    del document["train_device"]
  if not with_latency:
    for key in (*LATENCY_KEYS, "litert_device"):
      del document[key]
  return document


def row_to_json(row: ModelRow, with_latency: bool) -> dict:
  """The row's figures; latency keys (null for a row without them) only where some run of
  the report has them, so that reports of runs never exported keep their former shape."""
  document = {
      "name": row.name, "dataset": row.dataset, "variant": row.variant, "alpha": row.alpha,
      "resolution": row.resolution, "num_runs": len(row.runs),
      "seeds": [run.seed for run in row.runs],
      "top1_mean": row.top1_mean, "top1_half_range": row.top1_spread,
      "top5_mean": row.top5_mean, "mult_adds": row.mult_adds, "params": row.params,
      "infer_images_per_s_mean": only_value(row.infer_images_per_s_by_device),
      "infer_images_per_s_by_device": row.infer_images_per_s_by_device,
      **({"litert_fp32_ms_mean": only_value(row.litert_fp32_ms_by_device),
          "litert_fp32_ms_by_device": row.litert_fp32_ms_by_device,
          "litert_int8_ms_mean": only_value(row.litert_int8_ms_by_device),
          "litert_int8_ms_by_device": row.litert_int8_ms_by_device,
          "litert_int8_top1_mean": row.litert_int8_top1_mean,
          "litert_int8_top1_half_range": row.litert_int8_top1_spread}
         if with_latency else {}),
      "devices": sorted({run.device for run in row.runs}),
      "sources": [run.source for run in row.runs],
      "paper_imagenet": None if row.paper is None else dataclasses.asdict(row.paper),
  }
  if row.protocol:  # only where one model has runs under several protocols
    document["protocol"] = row.protocol
  return document


SPREAD_NOTE = ("top1_half_range = (max - min) / 2 over a model's runs, as a fraction; null for "
               "a single run")
TIMINGS_NOTE = ("*_by_device: a row's timing means over its runs on each device; *_mean: the "
                "same where the row was timed on one device, null where on several (speeds "
                "of different machines are not averaged)")


def document_head(title: str, base_resolution: int, unfinished: Sequence[str]) -> dict:
  """What every JSON report opens with: what it is, and how to read its figures."""
  return {"title": title, "base_resolution": base_resolution, "spread": SPREAD_NOTE,
          "timings": TIMINGS_NOTE, "unfinished": list(unfinished)}


def format_json(rows: Sequence[ModelRow], title: str, base_resolution: int,
                unfinished: Sequence[str] = ()) -> str:
  with_latency = has_latency(rows)
  document = {
      **document_head(title, base_resolution, unfinished),
      "models": [row_to_json(row, with_latency) for row in rows],
      "runs": [run_to_json(run, with_latency) for row in rows for run in row.runs],
  }
  if with_latency:
    document["litert"] = ("litert_*_ms: median batch-1 latency of the exported LiteRT model, "
                          "one thread, XNNPACK; litert_int8_top1: the int8 model's top-1, a "
                          "fraction; row values are means over the runs that have them, null "
                          "where none has")
  return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
