"""Evaluates a checkpoint on the full validation split and writes `<workdir>/eval_results.json`.

    python eval.py --config=configs/dws.py --workdir=runs/dws [--step=N]
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds data here

from absl import app, flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from mobilenet import cli, train_lib

config_flags.DEFINE_config_file("config", None, "The config the checkpoint was trained with",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The training run's workdir")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest)")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config, workdir = cli.prepare(FLAGS.config, FLAGS.workdir, for_training=False)
  train_lib.evaluate_checkpoint(config, workdir, FLAGS.step)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
