"""Makes the folder the protocol trains on, from tensorflow-datasets' Imagenette2 download: every
image squashed to 224x224 (the aspect ratio is not kept), as <out>/{train,val}/<synset>/*.JPEG.

    python -m tools.prepare_imagenette [--out=../shared/data/imagenette2-224] [--data_dir=DIR]

The images are written under a temporary name and renamed when all are there, so a stopped run
never leaves a folder that train.py would take for the whole dataset.
"""
import os
import pathlib
import shutil
import time
import types

from absl import flags
from PIL import Image

from configs import base
from mobilenet import cli, errors, metrics
from mobilenet.input import tfds_source

TFDS_NAME = "imagenette/full-size-v2"
SPLITS = {"train": "train", "validation": "val"}  # tfds split: folder name
SIZE = 224
JPEG_QUALITY = 95

flags.DEFINE_string("out", base.IMAGENETTE_FOLDER, "The folder to make (must not exist)")
flags.DEFINE_string("data_dir", "", "tensorflow-datasets' data_dir (empty: its default)")
flags.DEFINE_integer("size", SIZE, "Side of the square every image is resized to")
FLAGS = flags.FLAGS


def squashed(image, size: int) -> Image.Image:
  """An HxWx3 uint8 array as a size x size picture, stretched rather than cropped."""
  return Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)


def write_split(examples, label_names, folder: pathlib.Path, size: int) -> int:
  """Writes each (image, label) as folder/<synset>/<folder name>_<n>.JPEG; returns the count."""
  for name in label_names:
    (folder / name).mkdir(parents=True, exist_ok=True)
  count = 0
  for count, example in enumerate(examples, start=1):
    path = folder / label_names[int(example["label"])] / f"{folder.name}_{count:05d}.JPEG"
    squashed(example["image"], size).save(path, format="JPEG", quality=JPEG_QUALITY)
  return count


def prepare(out: pathlib.Path, data_dir: str = "", size: int = SIZE) -> dict:
  """Downloads (through tfds, once) and writes the folder; {folder split: image count}."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  (slow)
  if out.exists():
    raise errors.ConfigError(f"--out: {out} already exists; remove it or choose another folder")
  builder = tfds_source.prepared_builder(types.SimpleNamespace(tfds_name=TFDS_NAME,
                                                               data_dir=data_dir))
  label_names = builder.info.features["label"].names
  partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
  counts = {}
  try:
    for split, folder_name in SPLITS.items():
      start = time.perf_counter()
      examples = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
      counts[folder_name] = write_split(examples, label_names, partial / folder_name, size)
      metrics.console(f"{folder_name}: {counts[folder_name]} images of {len(label_names)} classes "
                      f"in {time.perf_counter() - start:.0f} s")
    os.replace(partial, out)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return counts


def main(_):
  out = pathlib.Path(FLAGS.out)
  counts = prepare(out, FLAGS.data_dir, FLAGS.size)
  metrics.console(f"{out}: {' and '.join(f'{n} {split}' for split, n in counts.items())} images, "
                  f"{FLAGS.size}x{FLAGS.size}; train with --config.data.folder={out}")


if __name__ == "__main__":
  cli.run(main)
