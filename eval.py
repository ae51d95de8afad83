"""Evaluates a checkpoint on the full validation split and writes `<workdir>/eval_results.json`.

    python eval.py --workdir=runs/dws [--step=N] [--config.data.folder=...] [--resolution=N]

The model, its resolution and the data come from the config saved in the checkpoint;
`--config.<field>` flags change what does not change the model (data folder, split, batch
size). A flag or `--config` file that contradicts the checkpoint's model is refused.
"""
import os

from mobilenet import allocator, native_stderr  # pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  # Before TensorFlow and JAX load (see train.py).
  allocator.use_fast_allocator()  # re-executes once under tcmalloc where installed (README)
  native_stderr.quiet_command()

from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from configs import base  # pylint: disable=g-import-not-at-top
from mobilenet import cli, evaluation  # pylint: disable=g-import-not-at-top

config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "dws.py"),
    "Optional: checked against the checkpoint's config, which is the one used", lock_config=True)
flags.DEFINE_string("workdir", None, "The training run's workdir")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest)")
flags.DEFINE_integer("resolution", None, "Evaluate at this input resolution instead of the "
                     "trained one, deliberately: written to eval_results_r<N>.json")
FLAGS = flags.FLAGS


def main(_):
  config, workdir = cli.prepare_evaluation(FLAGS["config"], FLAGS.workdir, step=FLAGS.step,
                                           resolution=FLAGS.resolution,
                                           check_first=base.check_protocol_folder)
  evaluation.evaluate_checkpoint(config, workdir, FLAGS.step)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.run(main)
