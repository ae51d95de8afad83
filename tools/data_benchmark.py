"""Images/s of the train input pipeline: the one-off load of the train split (with data.cache,
its files read into memory, or decoded into it with data.cache_decoded; else the check of every
file), then the steady state.

    python -m tools.data_benchmark --config=configs/dws.py [--resolution 128] [--batches 200]
        [--batch_size 64] [--compare_caches --rounds 5]

--compare_caches times the steady state of the three data.cache settings (encoded files, decoded
pixels, none) in one process, in alternating rounds, so that a loaded machine slows them alike:
compare their ratios, not their images/s across machines or runs.
"""
import copy
import os
import time

from absl import flags  # pylint: disable=g-import-not-at-top


from mobilenet.input import Dataset, splits

FLAGS = flags.FLAGS


def benchmark(data_config, *, global_batch_size: int, num_batches: int, seed: int = 0,
              warmup_batches: int = 10, print_fn=print) -> dict[str, float]:
  """Images/s of the train pipeline: loading the train split, then steady state."""
  dataset = Dataset(data_config)
  start, start_cpu = time.perf_counter(), time.process_time()
  batches = dataset.train_batches(global_batch_size=global_batch_size, seed=seed)  # loads the split
  load_seconds = time.perf_counter() - start
  load_cpu_seconds = time.process_time() - start_cpu
  num_images = dataset.info.num_train_examples  # also loads the eval split, as training does
  load_cpu_ms = load_cpu_seconds * 1000 / num_images
  what = {"encoded": "kept encoded in memory", "decoded": "decoded into memory",
          None: "checked"}[splits.cache_kind(data_config)]
  print_fn(f"loaded {num_images} train images ({what}) in {load_seconds:.1f} s: "
           f"{num_images / load_seconds:.0f} images/s; {load_cpu_ms:.2f} CPU ms per image")
  start = time.perf_counter()
  for _ in range(warmup_batches):
    next(batches)
  warmup_seconds = time.perf_counter() - start
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    batch = next(batches)
  seconds = time.perf_counter() - start
  # CPU time of all the process's threads: a figure that other jobs on the machine barely move.
  cpu_ms_per_image = (time.process_time() - start_cpu) * 1000 / (num_batches * global_batch_size)
  rate = num_batches * global_batch_size / seconds
  print_fn(f"train pipeline, {data_config.resolution} px, batch {global_batch_size}, "
           f"{batch['image'].dtype}: {rate:.0f} images/s over {num_batches} batches "
           f"(after {warmup_batches} warm-up batches in {warmup_seconds:.1f} s); "
           f"{cpu_ms_per_image:.2f} CPU ms per image = {1000 / cpu_ms_per_image:.0f} images/s "
           "per fully free core")
  return {"load_images_per_s": num_images / load_seconds, "images_per_s": rate,
          "cpu_ms_per_image": cpu_ms_per_image}


CACHE_SETTINGS = {"encoded": dict(cache=True, cache_decoded=False),
                  "decoded": dict(cache=True, cache_decoded=True), "none": dict(cache=False)}


def compare_caches(data_config, *, global_batch_size: int, num_batches: int, rounds: int,
                   seed: int = 0, warmup_batches: int = 10,
                   print_fn=print) -> dict[str, dict[str, float]]:
  """Steady-state CPU ms and wall ms per image of each cache setting, timed in alternating
  rounds of `num_batches` batches in one process; the median round of each, and its ratio to
  the decoded cache's."""
  iterators = {}
  for name, settings in CACHE_SETTINGS.items():
    config = copy.deepcopy(data_config)
    config.update(settings)
    iterators[name] = Dataset(config).train_batches(global_batch_size=global_batch_size, seed=seed)
    for _ in range(warmup_batches):
      next(iterators[name])
  cpu_ms, wall_ms = {name: [] for name in iterators}, {name: [] for name in iterators}
  images = num_batches * global_batch_size
  for round_index in range(rounds):
    order = list(iterators) if round_index % 2 == 0 else list(reversed(iterators))
    for name in order:
      start, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(num_batches):
        next(iterators[name])
      wall_ms[name].append((time.perf_counter() - start) * 1000 / images)
      cpu_ms[name].append((time.process_time() - start_cpu) * 1000 / images)
  median = lambda values: sorted(values)[len(values) // 2]
  figures = {name: {"cpu_ms_per_image": median(cpu_ms[name]),
                    "wall_ms_per_image": median(wall_ms[name]),
                    "cpu_ms_rounds": [round(v, 3) for v in cpu_ms[name]],
                    "wall_ms_rounds": [round(v, 3) for v in wall_ms[name]]} for name in iterators}
  for name, figure in figures.items():
    figure["cpu_ratio_to_decoded"] = figure["cpu_ms_per_image"] / figures["decoded"]["cpu_ms_per_image"]
    figure["wall_ratio_to_decoded"] = figure["wall_ms_per_image"] / figures["decoded"]["wall_ms_per_image"]
    print_fn(f"{name:8s} {figure['cpu_ms_per_image']:.3f} CPU ms/image "
             f"({figure['cpu_ratio_to_decoded']:.2f}x decoded), "
             f"{figure['wall_ms_per_image']:.3f} wall ms/image "
             f"({figure['wall_ratio_to_decoded']:.2f}x decoded); median of {rounds} rounds of "
             f"{num_batches} batches of {global_batch_size}, {data_config.resolution} px")
  return figures


def main(argv):
  del argv
  config = FLAGS.config
  data_config = config.data
  if FLAGS.resolution:
    data_config.resolution = FLAGS.resolution
  batch_size = FLAGS.batch_size or config.train.global_batch_size
  source = data_config.folder if data_config.source == "folder" else data_config.tfds_name
  print(f"source: {data_config.source} {source}, cache={data_config.cache}, "
        f"cache_decoded={data_config.cache_decoded}, "
        f"os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
  if FLAGS.compare_caches:
    compare_caches(data_config, global_batch_size=batch_size, num_batches=FLAGS.batches,
                   rounds=FLAGS.rounds, seed=config.seed)
  else:
    benchmark(data_config, global_batch_size=batch_size, num_batches=FLAGS.batches,
              seed=config.seed)
  print(f"load average afterwards {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  from mobilenet import cli  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", "configs/dws.py", "Config file (configs/*.py[:args]).")
  flags.DEFINE_integer("resolution", 0, "Overrides config.data.resolution.")
  flags.DEFINE_integer("batches", 200, "Batches to time after the warm-up.")
  flags.DEFINE_integer("batch_size", 0, "Global batch size; default config.train.global_batch_size.")
  flags.DEFINE_bool("compare_caches", False, "Time the three data.cache settings in alternating rounds.")
  flags.DEFINE_integer("rounds", 5, "Rounds of --compare_caches.")
  cli.run(main)
