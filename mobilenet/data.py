"""Input pipeline: Imagenette or ImageNet from a folder of images or from tensorflow-datasets.

Every source feeds the same tf.data preprocessing (Inception-style crops for
training, a central crop for evaluation) and yields numpy batches for JAX.

Training batches are a pure function of (seed, step): the global example
counter c = step * global_batch + i picks epoch c // N and position c % N, a
stateless permutation of (seed, epoch) turns the position into an example
index, and the crop and flip are seeded by (seed, c). So a run resumed at any
step sees bit-identical batches without decoding the skipped images, and
process p of P always gets the p-th contiguous slice of the same global batch.

    python -m mobilenet.data --bench --config=configs/dws.py [--resolution 128] [--batches 200]
"""
import dataclasses
import logging
import math
import mmap
import os
import pathlib
import re
import socket
import time
import urllib.parse
from typing import Callable, Iterator, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ warning spam for skipped files

import jax
import numpy as np
import tensorflow as tf

try:  # tf.data runs on the host; leave every accelerator to JAX.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF was already initialised elsewhere; its device choice stands
  pass

SOURCES = ("folder", "tfds")
IMAGE_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16}
ON_CORRUPT = ("skip", "error")
MAX_CROP_ATTEMPTS = 10  # as TF's ResNet/MobileNet preprocessing; the whole image if all fail
NUM_LOGGED_SKIPPED = 5
# data.cache decodes a split into memory only if it takes at most this share of what is
# available: the rest is left to training (activations, XLA's buffers, the other split).
MAX_CACHE_SHARE_OF_MEMORY = 0.5
# Seeds of the independent random streams derived from the user's seed.
_PERMUTATION_STREAM = 1
_AUGMENTATION_STREAM = 2
_FOREVER = np.iinfo(np.int64).max

log = logging.getLogger(__name__)


class DataSourceUnavailableError(RuntimeError):
  """A dataset that cannot be fetched or prepared (no network, missing manual download)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  label_names: tuple[str, ...]
  num_train_examples: int
  num_eval_examples: int


# ----------------------------------------------------------------------------- config checks


def _check_config(data_config) -> None:
  """Fails early, naming the field, rather than deep inside tf.data."""
  c = data_config
  if c.source not in SOURCES:
    raise ValueError(f"data.source={c.source!r}: expected one of {', '.join(SOURCES)}")
  if c.source == "folder" and not c.folder:
    raise ValueError("data.folder is empty: set it to a directory holding <split>/<class>/<image>")
  if c.source == "tfds" and not c.tfds_name:
    raise ValueError("data.tfds_name is empty: set it to e.g. imagenette/160px-v2 or imagenet2012")
  for field in ("train_split", "eval_split"):
    if not c[field]:
      raise ValueError(f"data.{field} is empty")
  if int(c.resolution) < 1:
    raise ValueError(f"data.resolution={c.resolution}: expected a positive number of pixels")
  if not 0 < c.min_area <= c.max_area <= 1:
    raise ValueError(f"data.min_area={c.min_area}, data.max_area={c.max_area}: "
                     "expected 0 < min_area <= max_area <= 1")
  if not 0 < c.min_aspect_ratio <= c.max_aspect_ratio:
    raise ValueError(f"data.min_aspect_ratio={c.min_aspect_ratio}, data.max_aspect_ratio="
                     f"{c.max_aspect_ratio}: expected 0 < min_aspect_ratio <= max_aspect_ratio")
  if not 0 < c.crop_fraction <= 1:
    raise ValueError(f"data.crop_fraction={c.crop_fraction}: expected 0 < crop_fraction <= 1")
  if c.image_dtype not in IMAGE_DTYPES:
    raise ValueError(f"data.image_dtype={c.image_dtype!r}: expected one of {', '.join(IMAGE_DTYPES)}")
  if c.on_corrupt not in ON_CORRUPT:
    raise ValueError(f"data.on_corrupt={c.on_corrupt!r}: expected one of {', '.join(ON_CORRUPT)}")
  if int(c.shuffle_buffer) < 1:
    raise ValueError(f"data.shuffle_buffer={c.shuffle_buffer}: expected at least 1")
  if int(c.prefetch_batches) < 0:
    raise ValueError(f"data.prefetch_batches={c.prefetch_batches}: expected 0 (none) or more")


def _local_batch_size(global_batch_size: int, process_index: Optional[int],
                      process_count: Optional[int]) -> tuple[int, int, int]:
  """(local batch, process index, process count); the global batch must split evenly."""
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index}, process_count={process_count}: "
                     "expected 0 <= process_index < process_count")
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size={global_batch_size}: expected a positive batch size")
  devices = jax.device_count()
  if global_batch_size % devices:
    raise ValueError(f"global_batch_size={global_batch_size} does not divide evenly over "
                     f"jax.device_count()={devices} devices")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} does not divide evenly over "
                     f"process_count={process_count} processes")
  return global_batch_size // process_count, process_index, process_count


# ----------------------------------------------------------------------------- decoding


def _decode_window(contents: tf.Tensor, window_fn) -> tf.Tensor:
  """Decodes only the window a JPEG needs; other formats (PNG, ...) fully, then crops. RGB uint8."""
  def jpeg():
    shape = tf.image.extract_jpeg_shape(contents)
    y, x, h, w = window_fn(shape[0], shape[1])
    return tf.image.decode_and_crop_jpeg(contents, tf.stack([y, x, h, w]), channels=3)

  def other():
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    shape = tf.shape(image)
    y, x, h, w = window_fn(shape[0], shape[1])
    return image[y:y + h, x:x + w]

  image = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def _decode_full(contents: tf.Tensor) -> tf.Tensor:
  """The whole image as RGB uint8: grayscale is replicated, alpha dropped."""
  return tf.io.decode_image(contents, channels=3, expand_animations=False)


def _decode_check(contents: tf.Tensor) -> tf.Tensor:
  """Fails on an unreadable file, cheaply: a JPEG decoded at 1/8 scale still reads every byte."""
  return tf.cond(tf.io.is_jpeg(contents),
                 lambda: tf.shape(tf.io.decode_jpeg(contents, channels=3, ratio=8)),
                 lambda: tf.shape(_decode_full(contents)))


def _unreadable_reason(contents: bytes) -> str:
  try:
    _decode_full(tf.constant(contents))
  except tf.errors.OpError as error:
    return error.message.split("\n")[0].split("}}")[-1].strip()
  return "decoding failed"


# ----------------------------------------------------------------------------- splits


@dataclasses.dataclass
class _Split:
  """One split's examples: random access by index, or (tfds TFRecords) a sequential stream."""
  description: str
  num_examples: int
  skipped: tuple[str, ...] = ()
  # Random access: (index, window_fn) -> (uint8 crop, int32 label).
  read_window: Optional[Callable] = None
  # Sequential only: shuffle seed tensor or None -> Dataset of (encoded image, label).
  stream: Optional[Callable] = None


def _cached_split(description: str, images: tf.Tensor, offsets: np.ndarray, shapes: np.ndarray,
                  labels: np.ndarray, skipped=()) -> _Split:
  offsets = tf.constant(offsets, tf.int64)
  shapes = tf.constant(shapes, tf.int64)
  labels = tf.constant(labels, tf.int32)

  def read_window(index, window_fn):
    height, width = shapes[index][0], shapes[index][1]
    y, x, h, w = (tf.cast(v, tf.int64) for v in window_fn(tf.cast(height, tf.int32),
                                                            tf.cast(width, tf.int32)))
    start = offsets[index] + y * width * 3  # only the crop's rows are sliced out
    rows = tf.reshape(images[start:start + h * width * 3], tf.stack([h, width, 3]))
    return rows[:, x:x + w], labels[index]

  return _Split(description, len(labels), tuple(skipped), read_window=read_window)


def _encoded_split(description: str, fetch: Callable, num_examples: int, skipped=()) -> _Split:
  """fetch(index) -> (encoded image bytes, label); decoding happens per crop."""
  def read_window(index, window_fn):
    contents, label = fetch(index)
    return _decode_window(contents, window_fn), tf.cast(label, tf.int32)
  return _Split(description, num_examples, tuple(skipped), read_window=read_window)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _header_shape(contents: tf.Tensor) -> tf.Tensor:
  """[height, width] of an encoded image, from its header where the format allows.

  JPEG and PNG (nearly every dataset) are read from the header alone; other formats
  (GIF, BMP, WebP) are decoded to learn their size.
  """
  def png():  # IHDR: width and height as big-endian 32-bit integers at bytes 16..24
    size = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, 16, 8), tf.uint8), tf.int32)
    size = tf.reshape(size, [2, 4])
    size = ((size[:, 0] * 256 + size[:, 1]) * 256 + size[:, 2]) * 256 + size[:, 3]
    return tf.stack([size[1], size[0]])

  def other():
    return tf.shape(_decode_full(contents))[:2]

  is_png = tf.equal(tf.strings.substr(contents, 0, 8), _PNG_SIGNATURE)
  return tf.case([(tf.io.is_jpeg(contents), lambda: tf.image.extract_jpeg_shape(contents)[:2]),
                  (is_png, png)], default=other)


def available_memory_bytes() -> int:
  """What this process may still allocate: the machine's MemAvailable, or less under a cgroup."""
  available = None
  try:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
      for line in meminfo:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) * 1024
  except (OSError, ValueError):
    pass
  try:
    limit = pathlib.Path("/sys/fs/cgroup/memory.max").read_text().strip()
    used = int(pathlib.Path("/sys/fs/cgroup/memory.current").read_text())
    if limit != "max":
      available = min(available or _FOREVER, int(limit) - used)
  except (OSError, ValueError):
    pass
  if available is None:
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
  return max(int(available), 0)


def _format_bytes(count: int) -> str:
  return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


class _DecodedImages:
  """Decoded images back to back in one anonymous memory map of exactly their total size.

  The size comes from the file headers before anything is decoded, so the map never grows
  (growing an anonymous shared map and writing past its first size faults with SIGBUS), and
  TF reads it through DLPack without a copy (the map is page-aligned).
  """

  def __init__(self, num_bytes: int):
    self._map = mmap.mmap(-1, max(num_bytes, 1))
    if hasattr(mmap, "MADV_HUGEPAGE"):
      try:
        self._map.madvise(mmap.MADV_HUGEPAGE)
      except OSError:
        pass
    self.num_bytes = num_bytes

  def write(self, offset: int, image: np.ndarray) -> None:
    self._map[offset:offset + image.nbytes] = np.ascontiguousarray(image).data.cast("B")

  def to_tensor(self) -> tf.Tensor:
    array = np.frombuffer(self._map, np.uint8, count=self.num_bytes)
    if array.ctypes.data % 64 == 0:  # TF requires aligned buffers
      return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.constant(array)


@dataclasses.dataclass
class _Decoded:
  """A split decoded into memory: kept example numbers, their labels, and where each image is."""
  kept: np.ndarray
  labels: np.ndarray
  images: Optional[_DecodedImages]
  offsets: np.ndarray
  shapes: np.ndarray


def _readable(examples: tf.data.Dataset, check) -> tf.data.Dataset:
  """(index, contents, label) -> (index, label, check(contents)), unreadable files dropped."""
  def checked(index, contents, label):
    return index, label, check(contents)
  checked_examples = examples.map(checked, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return checked_examples.ignore_errors().prefetch(64)


def _check_all(examples: tf.data.Dataset) -> np.ndarray:
  """The indices of the examples whose image decodes (streaming: nothing is kept)."""
  return np.asarray([index for index, _, _ in _readable(examples, _decode_check).as_numpy_iterator()],
                    np.int64)


def _decode_all(examples: tf.data.Dataset, description: str, on_too_large) -> Optional[_Decoded]:
  """Decodes every readable image of (index, contents, label) into one buffer sized beforehand.

  A first pass reads each image's size from its header; when the split would not fit in the
  memory available, `on_too_large(message)` decides (stream instead: returns None).
  """
  headers = list(_readable(examples, _header_shape).as_numpy_iterator())
  shapes = np.asarray([(int(h), int(w), 3) for _, _, (h, w) in headers], np.int64).reshape(-1, 3)
  sizes = shapes.prod(axis=1)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
  total = int(sizes.sum())
  available = available_memory_bytes()
  if total > MAX_CACHE_SHARE_OF_MEMORY * available:
    return on_too_large(
        f"{description}: decoding {len(headers)} images needs {_format_bytes(total)}, more than "
        f"{MAX_CACHE_SHARE_OF_MEMORY:.0%} of the {_format_bytes(available)} of memory available")
  images = _DecodedImages(total)
  slot_of = {int(index): slot for slot, (index, _, _) in enumerate(headers)}
  has_header = np.zeros(max(slot_of, default=-1) + 1, bool)
  has_header[list(slot_of)] = True
  has_header = tf.constant(has_header)
  kept, labels, kept_slots = [], [], []
  with_header = examples.filter(lambda index, contents, label: has_header[index])
  start = time.perf_counter()
  for index, label, image in _readable(with_header, _decode_full).as_numpy_iterator():
    slot = slot_of[int(index)]
    if image.shape != tuple(shapes[slot]):  # the header lied; such a file is skipped
      continue
    images.write(int(offsets[slot]), image)
    kept.append(index)
    labels.append(label)
    kept_slots.append(slot)
  log.info("%s: %d images decoded into %s of memory in %.1f s", description, len(kept),
           _format_bytes(total), time.perf_counter() - start)
  kept_slots = np.asarray(kept_slots, np.int64)
  return _Decoded(np.asarray(kept, np.int64), np.asarray(labels, np.int32), images,
                  offsets[kept_slots], shapes[kept_slots])


def _report_skipped(description: str, names: list[str], reason_of: Callable[[int], str],
                    on_corrupt: str) -> None:
  if not names:
    return
  if on_corrupt == "error":
    raise ValueError(f"unreadable image file {names[0]}: {reason_of(0)} "
                     "(data.on_corrupt='error'; set it to 'skip' to skip and count such files)")
  log.warning("%s: skipped %d unreadable image file(s), e.g. %s", description, len(names),
              ", ".join(names[:NUM_LOGGED_SKIPPED]))


# --- folder source


def _class_folders(split_dir: pathlib.Path) -> list[str]:
  if not split_dir.is_dir():
    raise ValueError(f"split folder {split_dir} not found (data.folder must hold "
                     "<split>/<class>/<image>, e.g. train/ and val/)")
  classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not classes:
    raise ValueError(f"split folder {split_dir} holds no class folders "
                     "(expected <split>/<class>/<image>)")
  return classes


_SLICE = re.compile(r"^(?P<name>[^\[\]]+)(\[(?P<start>\d+)?%?:(?P<end>\d+)?%?\])?$")


def _parse_folder_split(split: str) -> tuple[str, float, float]:
  """'train[:90%]' -> ('train', 0.0, 0.9): a per-class slice, as tfds slices its splits.

  Slicing each class's sorted files keeps the class balance, so 'train[90%:]' is a fair
  held-out set for tuning without touching the validation split.
  """
  match = _SLICE.match(split)
  start = int(match["start"] or 0) if match else 0
  end = int(match["end"] or 100) if match else 100
  if not match or not 0 <= start < end <= 100:
    raise ValueError(f"split {split!r}: expected a folder name, optionally sliced in percent "
                     "like train[:90%] or train[90%:]")
  return match["name"], start / 100, end / 100


def _folder_label_names(data_config) -> tuple[str, ...]:
  """The sorted class folders of the training split: the same order as tfds' Imagenette labels."""
  train_dir, _, _ = _parse_folder_split(data_config.train_split)
  return tuple(_class_folders(pathlib.Path(data_config.folder) / train_dir))


def _list_folder(split_dir: pathlib.Path, label_names: tuple[str, ...], start: float = 0.0,
                 end: float = 1.0):
  classes = _class_folders(split_dir)
  if classes != list(label_names):
    missing = sorted(set(label_names) - set(classes))
    extra = sorted(set(classes) - set(label_names))
    name = missing[0] if missing else extra[0]
    problem = "is missing" if missing else "is not a class of the training split"
    raise ValueError(f"class folder {split_dir / name} {problem} "
                     "(every split must hold the same class folders)")
  paths, labels = [], []
  for label, name in enumerate(label_names):
    class_dir = split_dir / name
    files = sorted(entry.name for entry in os.scandir(class_dir)
                   if entry.is_file() and not entry.name.startswith("."))
    if not files:
      raise ValueError(f"class folder {class_dir} is empty (every class needs at least one image)")
    files = files[round(start * len(files)):round(end * len(files))]
    if not files:
      raise ValueError(f"the slice [{start:.0%}:{end:.0%}] of class folder {class_dir} is empty")
    paths += [str(class_dir / f) for f in files]
    labels += [label] * len(files)
  return paths, np.asarray(labels, np.int32)


def _load_folder_split(data_config, split: str) -> _Split:
  name, start, end = _parse_folder_split(split)
  split_dir = pathlib.Path(data_config.folder) / name
  label_names = _folder_label_names(data_config)
  paths, labels = _list_folder(split_dir, label_names, start, end)
  examples = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(paths), dtype=np.int64), paths, labels))
  examples = examples.map(lambda i, path, label: (i, tf.io.read_file(path), label))
  decoded = _decode_all(examples, str(split_dir), _stream_instead) if data_config.cache else None
  kept = decoded.kept if decoded else _check_all(examples)
  skipped = [paths[i] for i in sorted(set(range(len(paths))) - set(kept.tolist()))]
  _report_skipped(str(split_dir), skipped,
                  lambda k: _unreadable_reason(pathlib.Path(skipped[k]).read_bytes()),
                  data_config.on_corrupt)
  kept_labels = labels[kept]
  for label, class_name in enumerate(label_names):
    if not np.any(kept_labels == label):
      raise ValueError(f"class folder {split_dir / class_name} holds no readable image")
  if decoded:
    return _cached_split(str(split_dir), decoded.images.to_tensor(), decoded.offsets,
                         decoded.shapes, decoded.labels, skipped)
  kept_paths = tf.constant([paths[i] for i in kept])
  kept_labels = tf.constant(kept_labels)
  return _encoded_split(str(split_dir), lambda i: (tf.io.read_file(kept_paths[i]), kept_labels[i]),
                        len(kept), skipped)


def _stream_instead(message: str) -> None:
  log.warning("%s; reading the images from their files at every epoch instead "
              "(data.cache=False streams from the start)", message)
  return None


# --- tfds source


def _is_network_error(error: BaseException) -> bool:
  network_types = [ConnectionError, TimeoutError, socket.gaierror, socket.timeout]
  try:
    import requests
    network_types.append(requests.exceptions.RequestException)
  except ImportError:
    pass
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, tuple(network_types)):
      return True
    error = error.__cause__ or error.__context__
  return False


def _offline_message(data_config, builder, cause: BaseException) -> str:
  reason = str(cause).split("\n")[0][:200]
  return (
      f"Could not download the tfds dataset '{data_config.tfds_name}' into {builder.data_dir}: "
      f"the network is unreachable ({type(cause).__name__}: {reason}). Point the run at a local "
      "copy instead: either a folder of images laid out as <folder>/train/<class>/*.JPEG and "
      "<folder>/val/<class>/*.JPEG, with --config.data.source=folder "
      "--config.data.folder=/path/to/imagenette2 (Imagenette2 unpacked from its .tgz has this "
      "layout), or a tfds data_dir where the dataset is already prepared, with "
      "--config.data.data_dir=/path/to/tensorflow_datasets.")


def _check_download_hosts_reachable(data_config, builder) -> None:
  """Fails in seconds when offline; tfds itself retries each download for minutes first."""
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    return  # nothing to download: tfds explains where the manual files go
  if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
    return  # only the proxy knows whether the hosts are reachable
  hosts = set()
  for url in getattr(builder, "url_infos", None) or {}:
    parsed = urllib.parse.urlparse(url)
    if parsed.hostname:
      hosts.add((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)))
  for address in sorted(hosts):
    try:
      socket.create_connection(address, timeout=10).close()
    except OSError as error:
      raise DataSourceUnavailableError(_offline_message(data_config, builder, error)) from None


def _tfds_builder(data_config):
  """The prepared tfds builder; prepares (downloads) it if needed, with a clear error offline."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(data_config.tfds_name, data_dir=data_config.data_dir or None)
  if builder.is_prepared():
    return builder
  _check_download_hosts_reachable(data_config, builder)
  try:
    builder.download_and_prepare()
  except Exception as error:  # pylint: disable=broad-except
    if _is_network_error(error):
      raise DataSourceUnavailableError(_offline_message(data_config, builder, error)) from None
    if isinstance(error, AssertionError) and "manual" in str(error).lower():
      raise DataSourceUnavailableError(
          f"tfds dataset '{data_config.tfds_name}' needs a manual download: "
          f"{str(error).strip()} Or use --config.data.source=folder with a folder of JPEGs."
      ) from None
    raise
  return builder


def _tfds_split_name(builder, split: str) -> str:
  """Lets the folder-style 'val' name tfds' 'validation' split."""
  if split == "val" and "val" not in builder.info.splits:
    return "validation"
  return split


def _tfds_examples(builder, split: str) -> tf.data.Dataset:
  """(encoded image, label) in the prepared files' fixed order; images stay undecoded."""
  import tensorflow_datasets as tfds
  dataset = builder.as_dataset(
      split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False))
  return dataset.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))


def _tfds_num_examples(builder, split: str, examples: tf.data.Dataset) -> int:
  count = int(examples.cardinality())
  if count >= 0:
    return count
  return int(builder.info.splits[split].num_examples)


def _tfds_random_access(builder) -> bool:
  """ArrayRecord files allow reading example i directly; TFRecords only in sequence."""
  import tensorflow_datasets as tfds
  return builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def _load_tfds_split(data_config, split: str) -> _Split:
  import tensorflow_datasets as tfds
  builder = _tfds_builder(data_config)
  split = _tfds_split_name(builder, split)
  description = f"tfds {data_config.tfds_name} split {split}"
  examples = _tfds_examples(builder, split)
  num_examples = _tfds_num_examples(builder, split, examples)
  indexed = examples.enumerate().map(lambda i, record: (i, record[0], record[1]))
  decoded = _decode_all(indexed, description, _stream_instead) if data_config.cache else None
  if decoded:
    missing = sorted(set(range(num_examples)) - set(decoded.kept.tolist()))
    skipped = [f"{description} record {i}" for i in missing]
    _report_skipped(description, skipped, lambda k: "the image does not decode",
                    data_config.on_corrupt)
    return _cached_split(description, decoded.images.to_tensor(), decoded.offsets,
                         decoded.shapes, decoded.labels, skipped)
  if _tfds_random_access(builder):
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})

    def read(index):
      example = source[int(index)]
      return example["image"], np.int32(example["label"])

    def fetch(index):
      contents, label = tf.py_function(read, [index], [tf.string, tf.int32])
      contents.set_shape([])
      return contents, label
    return _encoded_split(description, fetch, len(source))

  def stream(seed):
    if seed is None:
      return examples
    return examples.shuffle(int(data_config.shuffle_buffer), seed=seed,
                            reshuffle_each_iteration=False)
  return _Split(description, num_examples, stream=stream)


_loaded_splits: dict = {}
_MAX_LOADED_SPLITS = 4  # a train and an eval split of two configs


def _load_split(data_config, split: str) -> _Split:
  """Lists, checks and (with data.cache) decodes a split once per process."""
  _check_config(data_config)
  if data_config.source == "folder":
    key = ("folder", str(pathlib.Path(data_config.folder).resolve()), data_config.train_split, split)
  else:
    key = ("tfds", data_config.tfds_name, data_config.data_dir, split)
  key += (bool(data_config.cache), data_config.on_corrupt)
  if key not in _loaded_splits:
    loader = _load_folder_split if data_config.source == "folder" else _load_tfds_split
    loaded = loader(data_config, split)
    while len(_loaded_splits) >= _MAX_LOADED_SPLITS:
      _loaded_splits.pop(next(iter(_loaded_splits)))
    _loaded_splits[key] = loaded
  return _loaded_splits[key]


# ----------------------------------------------------------------------------- preprocessing


def _train_window_fn(data_config, seed: tf.Tensor):
  def window(height, width):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([height, width, 3]), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed, min_object_covered=float(data_config.min_area),
        aspect_ratio_range=(float(data_config.min_aspect_ratio), float(data_config.max_aspect_ratio)),
        area_range=(float(data_config.min_area), float(data_config.max_area)),
        max_attempts=MAX_CROP_ATTEMPTS, use_image_if_no_bounding_boxes=True)
    return begin[0], begin[1], size[0], size[1]
  return window


def _center_window_fn(data_config):
  def window(height, width):
    side = tf.cast(tf.round(float(data_config.crop_fraction) *
                            tf.cast(tf.minimum(height, width), tf.float32)), tf.int32)
    side = tf.maximum(side, 1)
    return (height - side) // 2, (width - side) // 2, side, side
  return window


def _finish(image: tf.Tensor, data_config) -> tf.Tensor:
  """Resizes to the resolution and maps [0, 255] to [-1, 1], as TF's MobileNet did."""
  resolution = int(data_config.resolution)
  image = tf.image.resize(image, [resolution, resolution], method="bilinear")
  image = image / 127.5 - 1.0
  image.set_shape([resolution, resolution, 3])
  return image


def _seed_pair(seed: int, stream: int) -> tf.Tensor:
  return tf.constant([seed, stream], tf.int64)


def _train_example_fn(data_config, seed: int, read_window):
  """counter, index -> example: the crop and flip are seeded by (seed, counter) alone."""
  augmentation_seed = _seed_pair(seed, _AUGMENTATION_STREAM)
  dtype = IMAGE_DTYPES[data_config.image_dtype]

  def example(counter, index, *read_args):
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(augmentation_seed, counter), 2))
    image, label = read_window(index, _train_window_fn(data_config, crop_seed), *read_args)
    image = _finish(image, data_config)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return {"image": tf.cast(image, dtype), "label": label}
  return example


def _eval_example_fn(data_config, read_window):
  dtype = IMAGE_DTYPES[data_config.image_dtype]
  resolution = int(data_config.resolution)

  def example(index, valid, *read_args):
    def real():
      image, label = read_window(index, _center_window_fn(data_config), *read_args)
      return tf.cast(_finish(image, data_config), dtype), label

    def padding():
      return tf.zeros([resolution, resolution, 3], dtype), tf.constant(0, tf.int32)

    image, label = tf.cond(valid, real, padding)
    return {"image": image, "label": label, "mask": valid}
  return example


def _decode_stream_window(index, window_fn, contents, label):
  del index
  return _decode_window(contents, window_fn), label


def _finalise(dataset: tf.data.Dataset, local_batch: int, data_config) -> Iterator[dict]:
  dataset = dataset.batch(local_batch, drop_remainder=True)
  if int(data_config.prefetch_batches):
    dataset = dataset.prefetch(int(data_config.prefetch_batches))
  options = tf.data.Options()
  options.deterministic = True
  # tf.data's graph rewrites would serialise the captured image cache (a 1.4 GB copy, seconds,
  # at every iterator) and buy nothing here: the pipeline is already parallel and prefetched.
  options.experimental_optimization.apply_default_optimizations = False
  dataset = dataset.with_options(options)
  return dataset.as_numpy_iterator()


# ----------------------------------------------------------------------------- public API


def _split_folders_present(root: pathlib.Path) -> str:
  names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
  return ", ".join(names) if names else "no folders"


def check_layout(data_config) -> None:
  """Both splits exist (and a folder's hold the same classes): found before anything decodes."""
  _check_config(data_config)
  if data_config.source == "folder":
    root = pathlib.Path(data_config.folder)
    label_names = None
    for field in ("train_split", "eval_split"):
      name, start, end = _parse_folder_split(data_config[field])
      if not (root / name).is_dir():
        raise ValueError(f"data.{field}={data_config[field]!r}: no folder {root / name} "
                         f"({root} holds {_split_folders_present(root)})")
      label_names = label_names or _folder_label_names(data_config)
      _list_folder(root / name, label_names, start, end)
    return
  builder = _tfds_builder(data_config)
  if not builder.info.splits:  # a builder without metadata (tfds' mock data) names none
    return
  for field in ("train_split", "eval_split"):
    name = _tfds_split_name(builder, data_config[field])
    try:
      builder.info.splits[name]
    except (KeyError, ValueError):
      raise ValueError(f"data.{field}={data_config[field]!r}: {data_config.tfds_name} has the "
                       f"splits {', '.join(sorted(builder.info.splits))}") from None


def dataset_info(data_config) -> DatasetInfo:
  """Class names and example counts (readable images only) of the configured source."""
  check_layout(data_config)
  if data_config.source == "folder":
    label_names = _folder_label_names(data_config)
  else:
    label_names = tuple(_tfds_builder(data_config).info.features["label"].names)
  return DatasetInfo(
      num_classes=len(label_names),
      label_names=label_names,
      num_train_examples=_load_split(data_config, data_config.train_split).num_examples,
      num_eval_examples=_load_split(data_config, data_config.eval_split).num_examples)


def train_batches(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index=None, process_count=None) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of global batches start_step, start_step + 1, ... forever.

  {'image': [local_batch, R, R, 3] float32 (or bfloat16) in [-1, 1], 'label': int32 [local_batch]}
  """
  local_batch, process_index, _ = _local_batch_size(global_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step={start_step}: expected 0 or more")
  split = _load_split(data_config, data_config.train_split)
  num_examples = split.num_examples
  permutation_seed = _seed_pair(seed, _PERMUTATION_STREAM)
  first_counter = start_step * global_batch_size

  def counter_of(i):  # the i-th example this process reads -> global example counter
    step = i // local_batch
    return step * global_batch_size + process_index * local_batch + i % local_batch

  def is_ours(counter):
    return (counter % global_batch_size) // local_batch == process_index

  if split.read_window is not None:
    def counter_and_index(i):
      counter = counter_of(i)
      epoch_seed = tf.random.experimental.stateless_fold_in(permutation_seed, counter // num_examples)
      index = tf.random.experimental.index_shuffle(
          counter % num_examples, seed=epoch_seed, max_index=num_examples - 1)
      return counter, index
    dataset = tf.data.Dataset.range(start_step * local_batch, _FOREVER).map(counter_and_index)
    read_window = split.read_window
  else:
    # TFRecords: each epoch is the file order through a shuffle buffer seeded by (seed, epoch).
    # A resumed run skips the epoch's earlier records undecoded.
    def epoch_records(epoch):
      epoch_seed = tf.random.experimental.stateless_fold_in(permutation_seed, epoch)[0]
      records = split.stream(epoch_seed).enumerate(start=epoch * num_examples)
      records = records.skip(tf.maximum(first_counter - epoch * num_examples, 0))
      records = records.filter(lambda counter, record: is_ours(counter))
      return records.map(lambda counter, record: (counter, counter, record[0], record[1]))
    dataset = tf.data.Dataset.range(first_counter // num_examples, _FOREVER).flat_map(epoch_records)
    read_window = _decode_stream_window
  example = _train_example_fn(data_config, seed, read_window)
  dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _finalise(dataset, local_batch, data_config)


def num_eval_batches(data_config, *, global_batch_size: int) -> int:
  """ceil(eval examples / global batch): the last batch is padded, never dropped."""
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size={global_batch_size}: expected a positive batch size")
  return math.ceil(_load_split(data_config, data_config.eval_split).num_examples / global_batch_size)


def eval_batches(data_config, *, global_batch_size: int, process_index=None,
                 process_count=None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the eval split; every example once, padding masked, same batch count everywhere.

  {'image', 'label', 'mask': bool [local_batch], False on padding}
  """
  local_batch, process_index, _ = _local_batch_size(global_batch_size, process_index, process_count)
  split = _load_split(data_config, data_config.eval_split)
  num_examples = split.num_examples
  num_batches = num_eval_batches(data_config, global_batch_size=global_batch_size)

  def position_of(i):  # the i-th example this process reads -> position in the eval split
    batch = i // local_batch
    return batch * global_batch_size + process_index * local_batch + i % local_batch

  if split.read_window is not None:
    def index_and_valid(i):
      position = position_of(i)
      return tf.minimum(position, num_examples - 1), position < num_examples
    dataset = tf.data.Dataset.range(num_batches * local_batch).map(index_and_valid)
    read_window = split.read_window
  else:
    num_ours = sum(min(max(num_examples - b * global_batch_size - process_index * local_batch, 0),
                       local_batch) for b in range(num_batches))
    records = split.stream(None).enumerate()
    records = records.filter(lambda position, record: (position % global_batch_size) // local_batch
                             == process_index)
    records = records.map(lambda position, record: (position, True, record[0], record[1]))
    padding = tf.data.Dataset.range(num_batches * local_batch - num_ours).map(
        lambda _: (tf.constant(0, tf.int64), False, tf.constant(b""), tf.constant(0, tf.int32)))
    dataset = records.concatenate(padding)
    read_window = _decode_stream_window
  example = _eval_example_fn(data_config, read_window)
  dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _finalise(dataset, local_batch, data_config)


# ----------------------------------------------------------------------------- benchmark


def benchmark(data_config, *, global_batch_size: int, num_batches: int, seed: int = 0,
              warmup_batches: int = 10, print_fn=print) -> dict[str, float]:
  """Images/s of the train pipeline: loading the split (cache fill or file check), then steady state."""
  start, start_cpu = time.perf_counter(), time.process_time()
  split = _load_split(data_config, data_config.train_split)
  load_seconds = time.perf_counter() - start
  load_cpu_ms = (time.process_time() - start_cpu) * 1000 / split.num_examples
  what = "decoded into memory" if data_config.cache else "checked"
  print_fn(f"loaded {split.num_examples} train images ({what}) in {load_seconds:.1f} s: "
           f"{split.num_examples / load_seconds:.0f} images/s; {load_cpu_ms:.2f} CPU ms per image")
  batches = train_batches(data_config, global_batch_size=global_batch_size, seed=seed)
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
  return {"load_images_per_s": split.num_examples / load_seconds, "images_per_s": rate,
          "cpu_ms_per_image": cpu_ms_per_image}


def main(argv):
  from absl import flags
  del argv
  if not flags.FLAGS.bench:
    raise SystemExit("nothing to do: pass --bench to measure the train pipeline's images/s")
  config = flags.FLAGS.config
  data_config = config.data
  if flags.FLAGS.resolution:
    data_config.resolution = flags.FLAGS.resolution
  batch_size = flags.FLAGS.batch_size or config.train.global_batch_size
  source = data_config.folder if data_config.source == "folder" else data_config.tfds_name
  print(f"source: {data_config.source} {source}, cache={data_config.cache}, "
        f"os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
  try:
    benchmark(data_config, global_batch_size=batch_size, num_batches=flags.FLAGS.batches,
              seed=config.seed)
  except (DataSourceUnavailableError, ValueError) as error:
    raise SystemExit(f"error: {error}") from None
  print(f"load average afterwards {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/dws.py", "Config file (configs/*.py[:args]).")
  flags.DEFINE_bool("bench", False, "Measure the train pipeline's images/s.")
  flags.DEFINE_integer("resolution", 0, "Overrides config.data.resolution.")
  flags.DEFINE_integer("batches", 200, "Batches to time after the warm-up.")
  flags.DEFINE_integer("batch_size", 0, "Global batch size; default config.train.global_batch_size.")
  app.run(main)
