"""The shared base of every config: MobileNet on Imagenette at 128 px, sized for a 2-core CPU.

The recipe (learning rate, schedule, weight decay, label smoothing, crop area, batch) is what the
recipe search on held-out data chose for MobileNet-1.0 (`python -m tools.tune --epochs 5`):
results/tuning/tuning.md ranks it with its two seeds against the start recipe's two. Tables 4-7
train every model with it, for `train.num_epochs` (the README's protocol).

Each field can be overridden on the command line (`--config.optimizer.learning_rate=0.1`),
and the config files take a short argument string (`--config=configs/dws.py:alpha=0.5,resolution=96`).
"""
import os
import pathlib

import ml_collections

from mobilenet import defaults, errors, protocol

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGENETTE_FOLDER = os.environ.get(
    "MOBILENET_IMAGENETTE_DIR", str(PROJECT_ROOT.parent / "shared" / "data" / "imagenette2-224"))

# Names the argument string may set, and the config fields they stand for.
SHORTHANDS = {
    "variant": "model.variant",
    "alpha": "model.alpha",
    "resolution": "data.resolution",
    "batch": "train.global_batch_size",
    "epochs": "train.num_epochs",
    "lr": "optimizer.learning_rate",
    "seed": "seed",
    "dataset": "data.source",
}


def get_base_config() -> ml_collections.ConfigDict:
  """The library's defaults (mobilenet/defaults.py: the tuned recipe) on the protocol's folder."""
  config = defaults.default_config()
  config.data.folder = IMAGENETTE_FOLDER
  return config


def apply_argument(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies `key=value,key=value` from `--config=configs/x.py:key=value,...`."""
  if not arg:
    return config
  for item in arg.split(","):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or key not in SHORTHANDS:
      raise ValueError(f"config argument {item!r}: expected key=value with key one of "
                       f"{', '.join(SHORTHANDS)}")
    section, _, field = SHORTHANDS[key].rpartition(".")
    target = config[section] if section else config
    current = target[field]
    try:
      target[field] = type(current)(value)
    except ValueError:
      raise ValueError(f"config argument {key}={value!r}: expected a {type(current).__name__}") from None
  return config


# The protocol's folder (IMAGENETTE_FOLDER), which tools/prepare_imagenette.py makes.
PROTOCOL_DATASET = "imagenette2-224"


def check_protocol_folder(config: ml_collections.ConfigDict) -> None:
  """A missing protocol folder (a clone without ../shared) names the command that makes it;
  train.py and eval.py run it before the library's checks."""
  data = config.data
  if (data.source == "folder" and not os.path.isdir(data.folder)
      and protocol.dataset_name(data) == PROTOCOL_DATASET):
    raise errors.ConfigError(
        f"config.data.folder: no such directory: {data.folder}; make it with `python -m "
        f"tools.prepare_imagenette --out={data.folder}` (Imagenette2 through tensorflow-datasets, "
        "1.5 GB download), or point --config.data.folder at a folder of <split>/<class>/ images")
