"""The latency table: untrained copies of every model of the paper's Tables 4 to 7 (the list
in configs/experiments.py), timed fp32 and int8 in alternating rounds of one process."""
import json
import math
import os
import statistics
import time
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from configs import base, experiments
from mobilenet import costs, devices
from tools.export.conversion import check_graph, convert, inference_fn
from tools.export.timing import Runner, cpu_description, latency_summary, litert_version
from mobilenet.devices import load_average
from tools.export.trained_run import export_model


def latency_table_models(resolutions: Sequence[int]) -> list[dict]:
  """Every model of Tables 4 to 6 at each of `resolutions`, then Table 7's other resolutions."""
  entries = [dict(tables=tables, variant=variant, alpha=alpha, resolution=resolution)
             for resolution in resolutions
             for tables, variant, alpha in experiments.LATENCY_TABLE_MODELS]
  entries += [dict(tables="7", variant="dws", alpha=1.0, resolution=resolution)
              for resolution in experiments.LATENCY_TABLE7_RESOLUTIONS
              if resolution not in resolutions]
  return entries


def _untrained_fn(entry: dict, num_classes: int):
  model_config = base.get_base_config().model
  model_config.update(num_classes=num_classes, variant=entry["variant"], alpha=entry["alpha"])
  net = export_model(model_config)
  resolution = entry["resolution"]
  variables = net.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)), train=False)
  return inference_fn(net, variables)


def random_images(resolution: int, count: int, seed: int = 0) -> Callable[[], Iterator]:
  """Uniform noise in the model's input range [-1, 1]: latency does not depend on the values."""
  def images():
    rng = np.random.default_rng(seed)
    for _ in range(count):
      yield rng.uniform(-1, 1, (1, resolution, resolution, 3)).astype(np.float32)
  return images


def latency_table(resolutions: Sequence[int], *, num_classes: int = 1000, rounds: int = 5,
                  round_s: float = 1.0, threads: Sequence[int] = (1,), calibration_count: int = 8,
                  print_fn=print) -> dict:
  """Latency of untrained copies of the paper's models, fp32 and int8, in one process.

  Every model's interpreters are built first; then each of `rounds` rounds runs every
  (model, kind, threads) for about round_s seconds in turn, so that a change of the machine's
  load during the measurement spreads over all models instead of landing on a few."""
  entries = latency_table_models(resolutions)
  subjects = []
  for entry in entries:
    fn = _untrained_fn(entry, num_classes)
    cost = costs.count(entry["variant"], entry["alpha"], entry["resolution"], num_classes)
    entry.update(mult_adds=cost.mult_adds, params=cost.params)
    for kind in ("fp32", "int8"):
      calibration = (random_images(entry["resolution"], calibration_count) if kind == "int8"
                     else None)
      content = convert(fn, entry["resolution"], calibration_images=calibration)
      graph = check_graph(content, f"{entry['variant']} {entry['alpha']} {entry['resolution']}px "
                          f"{kind}")
      entry[f"{kind}_bytes"] = len(content)
      entry[f"{kind}_ops"] = graph["num_ops"]
      for thread_count in threads:
        runner = Runner(content, thread_count)
        image = random_images(entry["resolution"], 1, seed=1)()
        runner.set_input(next(image)[0])
        warmup = runner.time_invocations(3)
        per_run = max(statistics.median(warmup), 0.01)
        subjects.append(dict(entry=entry, kind=kind, threads=thread_count, runner=runner,
                             runs=max(3, math.ceil(1000 * round_s / per_run)), times=[],
                             round_medians=[]))
    print_fn(f"converted {entry['variant']} alpha={entry['alpha']} {entry['resolution']}px "
             f"({entry['mult_adds'] / 1e6:.0f}M mult-adds)")

  load = {"before": load_average()}
  started = time.time()
  for round_index in range(rounds):
    for subject in subjects:
      times = subject["runner"].time_invocations(subject["runs"])
      subject["times"] += times
      subject["round_medians"].append(statistics.median(times))
    load[f"after_round_{round_index + 1}"] = load_average()
    print_fn(f"round {round_index + 1}/{rounds} done, load average {load_average()[0]:.2f}")

  for subject in subjects:
    summary = latency_summary(subject["times"])
    summary["round_medians_ms"] = subject["round_medians"]
    subject["entry"].setdefault("latency", {}).setdefault(subject["kind"], {})[
        str(subject["threads"])] = summary
  return {
      "device": cpu_description(),
      "runtime": f"ai-edge-litert {litert_version()} interpreter, XNNPACK delegate, batch 1",
      "weights": "untrained (Flax initialisation, seed 0); int8 calibrated on "
                 f"{calibration_count} uniform random images in [-1, 1]",
      "num_classes": num_classes, "threads": list(threads), "rounds": rounds,
      "round_s_per_model": round_s, "measure_wall_s": time.time() - started,
      "load_average": load, "cores": devices.usable_cores(),
      "models": [{key: value for key, value in entry.items()} for entry in entries],
  }


def model_label(entry: dict) -> str:
  if entry["variant"] == "dws":
    alpha = entry["alpha"]
    width = f"{alpha:.1f}" if float(alpha).is_integer() else f"{alpha:g}"  # the paper's "1.0"
    return f"{width} MobileNet-{entry['resolution']}"
  name = {"conv": "Conv MobileNet", "shallow": "Shallow MobileNet"}[entry["variant"]]
  return f"{name}-{entry['resolution']}"


def format_latency_markdown(table: dict) -> str:
  lines = [
      "# MobileNet latency with the mobile runtime (LiteRT + XNNPACK), batch 1",
      "",
      f"Machine: {table['device']} (an x86 server CPU running LiteRT's kernels, not a phone). "
      f"{table['runtime']}; weights {table['weights']}. "
      f"{table['rounds']} alternating rounds of about {table['round_s_per_model']:g} s per "
      f"model; load average {table['load_average']['before'][0]:.2f} before, "
      f"{list(table['load_average'].values())[-1][0]:.2f} after the last round (the machine is "
      "shared). Median ms, [min–max] over every run.",
      "",
  ]
  for thread_count in table["threads"]:
    key = str(thread_count)
    header = ["Model", "Paper table", "Million Mult-Adds", "fp32 ms", "int8 ms",
              "int8 speed-up", "fp32 ms per 100M mult-adds"]
    lines += [f"## {thread_count} thread{'s' if thread_count > 1 else ''}", "",
              "| " + " | ".join(header) + " |",
              "|---|---|" + "---:|" * (len(header) - 2)]
    for entry in table["models"]:
      fp32, int8 = entry["latency"]["fp32"][key], entry["latency"]["int8"][key]
      lines.append(
          f"| {model_label(entry)} | {entry['tables']} | {entry['mult_adds'] / 1e6:.0f} | "
          f"{fp32['median_ms']:.2f} [{fp32['min_ms']:.2f}–{fp32['max_ms']:.2f}] | "
          f"{int8['median_ms']:.2f} [{int8['min_ms']:.2f}–{int8['max_ms']:.2f}] | "
          f"{fp32['median_ms'] / int8['median_ms']:.2f}x | "
          f"{100e6 * fp32['median_ms'] / entry['mult_adds']:.2f} |")
    lines.append("")
  return "\n".join(lines)


def write_latency_table(table: dict, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "latency.json"), "w", encoding="utf-8") as out:
    json.dump(table, out, indent=2)
    out.write("\n")
  with open(os.path.join(out_dir, "latency.md"), "w", encoding="utf-8") as out:
    out.write(format_latency_markdown(table))
