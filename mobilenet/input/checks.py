"""Every check of config.data, and the values its enumerated fields allow.

All of them run before anything is listed, downloaded or decoded, so that a mistake is named by
its field rather than found deep inside tf.data.
"""
import os

from mobilenet import errors
from mobilenet.input import folder

SOURCES = ("folder", "tfds")
IMAGE_DTYPES = ("float32", "bfloat16")
ON_CORRUPT = ("skip", "error")


def check_config(data_config) -> None:
  """Raises ConfigError naming the first bad field of config.data."""
  c = data_config
  if c.source not in SOURCES:
    raise errors.ConfigError(f"config.data.source must be one of {', '.join(SOURCES)}; "
                             f"got {c.source!r}")
  if c.source == "folder" and not c.folder:
    raise errors.ConfigError(
        "data.folder is empty: set it to a directory holding <split>/<class>/<image>")
  if c.source == "tfds" and not c.tfds_name:
    raise errors.ConfigError(
        "data.tfds_name is empty: set it to e.g. imagenette/160px-v2 or imagenet2012")
  for field in ("train_split", "eval_split"):
    if not c[field]:
      raise errors.ConfigError(f"data.{field} is empty")
    if c.source == "folder":
      folder.parse_split(c[field])
  if int(c.resolution) < 1:
    raise errors.ConfigError(
        f"data.resolution={c.resolution}: expected a positive number of pixels")
  if not 0 < c.min_area <= c.max_area <= 1:
    raise errors.ConfigError(f"data.min_area={c.min_area}, data.max_area={c.max_area}: "
                             "expected 0 < min_area <= max_area <= 1")
  if not 0 < c.min_aspect_ratio <= c.max_aspect_ratio:
    raise errors.ConfigError(
        f"data.min_aspect_ratio={c.min_aspect_ratio}, data.max_aspect_ratio="
        f"{c.max_aspect_ratio}: expected 0 < min_aspect_ratio <= max_aspect_ratio")
  if not 0 < c.crop_fraction <= 1:
    raise errors.ConfigError(
        f"data.crop_fraction={c.crop_fraction}: expected 0 < crop_fraction <= 1")
  if c.image_dtype not in IMAGE_DTYPES:
    raise errors.ConfigError(f"config.data.image_dtype must be one of {', '.join(IMAGE_DTYPES)}; "
                             f"got {c.image_dtype!r}")
  if c.on_corrupt not in ON_CORRUPT:
    raise errors.ConfigError(
        f"data.on_corrupt={c.on_corrupt!r}: expected one of {', '.join(ON_CORRUPT)}")
  if int(c.shuffle_buffer) < 1:
    raise errors.ConfigError(f"data.shuffle_buffer={c.shuffle_buffer}: expected at least 1")
  if int(c.prefetch_batches) < 0:
    raise errors.ConfigError(
        f"data.prefetch_batches={c.prefetch_batches}: expected 0 (none) or more")
  if c.source == "folder" and not os.path.isdir(c.folder):
    raise errors.ConfigError(f"config.data.folder: no such directory: {c.folder}")
  if c.source == "tfds":
    _check_tfds_name(c.tfds_name, c.data_dir)


def _check_tfds_name(name: str, data_dir: str) -> None:
  """tfds' own error for an unknown name lists every dataset it knows: hundreds of lines."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow; tfds runs only)
  try:
    tfds.builder(name, data_dir=data_dir or None)
  except (ValueError, AssertionError) as error:  # unknown dataset, config or version
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise errors.ConfigError(f"config.data.tfds_name={name!r}: {reason}") from None
