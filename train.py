"""Trains MobileNet: `python train.py --config=configs/dws.py [--workdir=runs/dws]`.

Resumes from the latest checkpoint in the workdir; see README.md for the options.
"""
import sys

from mobilenet import allocator, native_stderr  # pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  # Before TensorFlow and JAX load: the re-exec then imports them once, and the filter is in
  # place for their start-up notices.
  allocator.use_fast_allocator()  # re-executes once under tcmalloc where installed (README)
  native_stderr.quiet_command()

from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from configs import base  # pylint: disable=g-import-not-at-top
from mobilenet import cli, trainer  # pylint: disable=g-import-not-at-top

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/dws.py[:alpha=0.5]",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here "
                    "(default: runs/<dataset>/<variant>_a<alpha>_r<resolution>_s<seed>)")
FLAGS = flags.FLAGS


def main(_, hooks: trainer.Hooks | None = None):
  """`hooks`: tests/fault_injection.py's faults; none otherwise."""
  result = cli.train(FLAGS.config, FLAGS.workdir, check_first=base.check_protocol_folder,
                     hooks=hooks)
  if "preempted_at" in result:
    sys.exit(trainer.EXIT_PREEMPTED)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
