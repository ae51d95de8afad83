"""Imports released MobileNet v1 weights into a workdir that eval.py, the LiteRT export and
fine-tuning (--config.train.init_from) read like any trained run.

    python -m tools.import_weights --workdir=runs/imported/keras_a1_r224 --keras_file=mobilenet_1_0_224_tf.h5
    python -m tools.import_weights --workdir=W --keras=imagenet --alpha=0.75 --resolution=192
    python -m tools.import_weights --workdir=W --slim_checkpoint=mobilenet_v1_1.0_224.ckpt --resolution=224

One source per command: a Keras model or weights file, Keras' own download (online machines),
or a TF-slim checkpoint (its 1001 classes become ImageNet's 1000 unless --keep_background).
"""
from absl import flags

from mobilenet import errors, metrics, pretrained
from tools import command_line


def define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "The workdir to create", required=True,
                      flag_values=flag_values)
  flags.DEFINE_string("keras_file", None, "A Keras model (.keras, .h5) or weights file "
                      "(.weights.h5, or a released mobilenet_<a>_<rows>_tf.h5)",
                      flag_values=flag_values)
  flags.DEFINE_enum("keras", None, ["imagenet"], "Keras' released ImageNet weights (downloads)",
                    flag_values=flag_values)
  flags.DEFINE_string("slim_checkpoint", None, "A TF-slim MobileNet v1 checkpoint prefix",
                      flag_values=flag_values)
  flags.DEFINE_float("alpha", None, "Width multiplier (weights-only files and --keras)",
                     flag_values=flag_values)
  flags.DEFINE_integer("resolution", None, "Input resolution (default: the file name's, or 224)",
                       flag_values=flag_values)
  flags.DEFINE_bool("keep_background", False, "TF-slim: keep the background class (1001 outputs)",
                    flag_values=flag_values)


def load(values: flags.FlagValues):
  """(config, variables) from the one source the flags name."""
  given = [name for name in ("keras_file", "keras", "slim_checkpoint") if values[name].value]
  if len(given) != 1:
    raise errors.ConfigError("give exactly one of --keras_file, --keras=imagenet, "
                             f"--slim_checkpoint; got {len(given) or 'none'}")
  if values.keras_file:
    return pretrained.from_keras_file(values.keras_file, alpha=values.alpha,
                                      resolution=values.resolution)
  if values.keras:
    return pretrained.from_keras_imagenet(values.alpha or 1.0, values.resolution or 224)
  return pretrained.from_slim_checkpoint(
      values.slim_checkpoint, resolution=values.resolution or pretrained.DEFAULT_RESOLUTION,
      keep_background=values.keep_background)


def main(command: command_line.CommandLine) -> None:
  values = command.flags
  config, variables = load(values)
  pretrained.save_workdir(config, variables, values.workdir)
  metrics.console(
      f"{config.train.init_from}: MobileNet alpha={config.model.alpha:g} at "
      f"{config.data.resolution} px, {config.model.num_classes} classes, ReLU6, into "
      f"{values.workdir}; evaluate with `python eval.py --workdir={values.workdir} "
      "--config.data.folder=<a folder of ImageNet synsets>`, fine-tune with "
      f"--config.train.init_from={values.workdir}")


TOOL = command_line.Tool(define_flags, main)

if __name__ == "__main__":
  TOOL.start()
