"""The folder source: <folder>/<split>/<class>/<image>, labelled by the sorted class folders,
each split optionally sliced per class in percent (train[:90%])."""
import os
import pathlib
import re

import numpy as np
import tensorflow as tf

from mobilenet import errors
from mobilenet.input import decode, splits

_SLICE = re.compile(r"^(?P<name>[^\[\]]+)(\[(?P<start>\d+)?%?:(?P<end>\d+)?%?\])?$")


def parse_split(split: str) -> tuple[str, float, float]:
  """'train[:90%]' -> ('train', 0.0, 0.9): a per-class slice, as tfds slices its splits.

  Slicing each class's sorted files keeps the class balance, so 'train[90%:]' is a fair
  held-out set for tuning without touching the validation split.
  """
  match = _SLICE.match(split)
  start = int(match["start"] or 0) if match else 0
  end = int(match["end"] or 100) if match else 100
  if not match or not 0 <= start < end <= 100:
    raise errors.ConfigError(f"split {split!r}: expected a folder name, optionally sliced in "
                             "percent like train[:90%] or train[90%:]")
  return match["name"], start / 100, end / 100


def _class_folders(split_dir: pathlib.Path) -> list[str]:
  if not split_dir.is_dir():
    raise errors.DataError(f"split folder {split_dir} not found (data.folder must hold "
                           "<split>/<class>/<image>, e.g. train/ and val/)")
  classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not classes:
    raise errors.DataError(f"split folder {split_dir} holds no class folders "
                           "(expected <split>/<class>/<image>)")
  return classes


def label_names(data_config) -> tuple[str, ...]:
  """The sorted class folders of the training split: the same order as tfds' Imagenette labels."""
  train_dir, _, _ = parse_split(data_config.train_split)
  return tuple(_class_folders(pathlib.Path(data_config.folder) / train_dir))


def _list_folder(split_dir: pathlib.Path, class_names: tuple[str, ...], start: float = 0.0,
                 end: float = 1.0) -> tuple[list[str], np.ndarray]:
  """(image paths, labels) of the slice [start, end) of each class folder's sorted files."""
  classes = _class_folders(split_dir)
  if classes != list(class_names):
    missing = sorted(set(class_names) - set(classes))
    extra = sorted(set(classes) - set(class_names))
    name = missing[0] if missing else extra[0]
    problem = "is missing" if missing else "is not a class of the training split"
    raise errors.DataError(f"class folder {split_dir / name} {problem} "
                           "(every split must hold the same class folders)")
  paths, labels = [], []
  for label, name in enumerate(class_names):
    class_dir = split_dir / name
    files = sorted(entry.name for entry in os.scandir(class_dir)
                   if entry.is_file() and not entry.name.startswith("."))
    if not files:
      raise errors.DataError(
          f"class folder {class_dir} is empty (every class needs at least one image)")
    files = files[round(start * len(files)):round(end * len(files))]
    if not files:
      raise errors.DataError(
          f"the slice [{start:.0%}:{end:.0%}] of class folder {class_dir} is empty")
    paths += [str(class_dir / f) for f in files]
    labels += [label] * len(files)
  return paths, np.asarray(labels, np.int32)


def _split_folders_present(root: pathlib.Path) -> str:
  names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
  return ", ".join(names) if names else "no folders"


def check_layout(data_config) -> None:
  """Both split folders exist and hold the same classes, each with files; nothing is read."""
  root = pathlib.Path(data_config.folder)
  class_names = None
  for field in ("train_split", "eval_split"):
    name, start, end = parse_split(data_config[field])
    if not (root / name).is_dir():
      raise errors.DataError(f"data.{field}={data_config[field]!r}: no folder {root / name} "
                             f"({root} holds {_split_folders_present(root)})")
    class_names = class_names or label_names(data_config)
    _list_folder(root / name, class_names, start, end)


def load_split(data_config, split: str) -> splits.Split:
  """Lists the split's files and keeps those that decode (with data.cache, their bytes in memory;
  with data.cache_decoded too, their pixels)."""
  name, start, end = parse_split(split)
  split_dir = pathlib.Path(data_config.folder) / name
  class_names = label_names(data_config)
  paths, labels = _list_folder(split_dir, class_names, start, end)
  examples = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(paths), dtype=np.int64), paths, labels))
  examples = examples.map(lambda i, path, label: (i, tf.io.read_file(path), label))
  cache = splits.cache_kind(data_config)
  decoded = (decode.decode_all(examples, str(split_dir), splits.stream_instead)
             if cache == "decoded" else None)
  encoded = (decode.encode_all(examples, str(split_dir), splits.stream_instead,
                               expected_bytes=sum(os.path.getsize(path) for path in paths))
             if cache == "encoded" else None)
  kept = (decoded or encoded).kept if (decoded or encoded) else decode.check_all(examples)
  skipped = [paths[i] for i in sorted(set(range(len(paths))) - set(kept.tolist()))]
  splits.report_skipped(str(split_dir), skipped,
                        lambda k: decode.unreadable_reason(pathlib.Path(skipped[k]).read_bytes()),
                        data_config.on_corrupt)
  kept_labels = labels[kept]
  for label, class_name in enumerate(class_names):
    if not np.any(kept_labels == label):
      raise errors.DataError(f"class folder {split_dir / class_name} holds no readable image")
  if decoded:
    return splits.from_decoded(str(split_dir), decoded, skipped)
  if encoded:
    return splits.from_encoded_in_memory(str(split_dir), encoded, skipped)
  kept_paths = tf.constant([paths[i] for i in kept])
  kept_labels = tf.constant(kept_labels)
  return splits.from_encoded(str(split_dir),
                             lambda i: (tf.io.read_file(kept_paths[i]), kept_labels[i]),
                             len(kept), skipped)
