"""`python -m tools.export`: see the package's docstring."""
import os

from absl import flags

from mobilenet import cli, costs, errors
from tools.export.latency_table import latency_table, write_latency_table
from tools.export.trained_run import export_run


def define_flags() -> None:
  """The command's flags, defined only when it runs as a program: other tools (the benchmark)
  define flags of the same names in the same process-wide registry."""
  flags.DEFINE_string("workdir", None, "A training run's workdir (export that run)")
  flags.DEFINE_boolean("int8", False, "Also export and measure a full-integer int8 model")
  flags.DEFINE_integer("threads", None, "Also measure latency with this many threads (1 always)")
  flags.DEFINE_string("data_folder", None, "Read the images from here instead of the folder in "
                      "the checkpoint's config")
  flags.DEFINE_integer("calibration_images", 300, "Training images for the int8 calibration")
  flags.DEFINE_integer("check_images", 200, "Validation images for the fp32-against-Flax check")
  flags.DEFINE_integer("latency_runs", 50, "Timed invocations per model, after 10 of warm-up")
  flags.DEFINE_boolean("latency-table", False, "Measure untrained copies of the paper's models "
                       "instead of a run (writes --out/latency.json and latency.md)")
  flags.DEFINE_string("out", "results/latency", "Where the latency table goes")
  flags.DEFINE_list("resolutions", ["224", "128"], "Resolutions of the latency table")
  flags.DEFINE_integer("rounds", 5, "Alternating rounds of the latency table")
  flags.DEFINE_float("round_s", 1.0, "Seconds per model per round of the latency table")


def _positive(name: str, value: int) -> None:
  if value is not None and value < 1:
    raise errors.ConfigError(f"--{name} must be >= 1; got {value}")


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  for name in ("threads", "calibration_images", "check_images", "latency_runs", "rounds"):
    _positive(name, FLAGS[name].value)
  threads = [1] + ([FLAGS.threads] if FLAGS.threads and FLAGS.threads != 1 else [])
  if FLAGS["latency-table"].value:
    try:
      resolutions = [int(value) for value in FLAGS.resolutions]
    except ValueError:
      raise errors.ConfigError(f"--resolutions must be integers; got "
                               f"{','.join(FLAGS.resolutions)}") from None
    for resolution in resolutions:
      try:
        costs.check_resolution(resolution)
      except ValueError as error:
        raise errors.ConfigError(f"--resolutions: {error}") from None
    table = latency_table(resolutions, rounds=FLAGS.rounds, round_s=FLAGS.round_s,
                          threads=threads)
    write_latency_table(table, FLAGS.out)
    print(f"wrote {os.path.join(FLAGS.out, 'latency.json')} and latency.md "
          f"({len(table['models'])} models)")
    return
  if not FLAGS.workdir:
    raise errors.ConfigError("--workdir is required (or --latency-table)")
  if not os.path.isdir(FLAGS.workdir):
    raise errors.NotFound(f"workdir {FLAGS.workdir} does not exist")
  export_run(FLAGS.workdir, int8=FLAGS.int8, threads=threads,
             calibration_count=FLAGS.calibration_images, check_count=FLAGS.check_images,
             latency_runs=FLAGS.latency_runs, data_folder=FLAGS.data_folder)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
