"""Image decoding: the crop window of one encoded image, image sizes from their headers, and the
two in-memory caches of a split (data.cache): its encoded files (the default), or its images
decoded into one memory map (data.cache_decoded)."""
import dataclasses
import math
import mmap
import os
import pathlib
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from mobilenet import metrics

# data.cache holds a split in memory only if it takes at most this share of what is available:
# the rest is left to training (activations, XLA's buffers, the other split).
MAX_CACHE_SHARE_OF_MEMORY = 0.5
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"



def decode_window(contents: tf.Tensor, window_fn) -> tf.Tensor:
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


def crop_of_whole_image(contents: tf.Tensor, window_fn) -> tf.Tensor:
  """The window of the whole decoded image: the decoded cache's pixels, bit for bit. (A JPEG
  decoded only in its window, as decode_window does, differs by a few levels at the window's
  edges, which would change what a run of the default config trains on.)"""
  image = _decode_full(contents)
  shape = tf.shape(image)
  y, x, h, w = window_fn(shape[0], shape[1])
  image = image[y:y + h, x:x + w]
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


def unreadable_reason(contents: bytes) -> str:
  """TensorFlow's reason for refusing an image, in one line."""
  try:
    _decode_full(tf.constant(contents))
  except tf.errors.OpError as error:
    return error.message.split("\n")[0].split("}}")[-1].strip()
  return "decoding failed"


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
      available = min(available or math.inf, int(limit) - used)
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
class Decoded:
  """A split decoded into memory: kept example numbers, their labels, and where each image is."""
  kept: np.ndarray
  labels: np.ndarray
  images: Optional[_DecodedImages]
  offsets: np.ndarray
  shapes: np.ndarray


def _readable(examples: tf.data.Dataset, check, keep_contents: bool = False) -> tf.data.Dataset:
  """(index, contents, label) -> (index, label, check(contents)), unreadable files dropped;
  with keep_contents, (index, label, contents) of the files that pass the check."""
  def checked(index, contents, label):
    return index, label, check(contents)

  def checked_keeping(index, contents, label):
    return index, label, contents, check(contents)
  checked_examples = examples.map(checked_keeping if keep_contents else checked,
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  checked_examples = checked_examples.ignore_errors()
  if keep_contents:
    checked_examples = checked_examples.map(lambda index, label, contents, _: (index, label, contents))
  return checked_examples.prefetch(64)


def check_all(examples: tf.data.Dataset) -> np.ndarray:
  """The indices of the examples whose image decodes (streaming: nothing is kept)."""
  return np.asarray([index for index, _, _ in _readable(examples, _decode_check).as_numpy_iterator()],
                    np.int64)


@dataclasses.dataclass
class Encoded:
  """A split's encoded files in memory: kept example numbers, their labels and their bytes."""
  kept: np.ndarray
  labels: np.ndarray
  contents: tf.Tensor  # tf.string [len(kept)]: the files as they are, decoded per crop
  num_bytes: int


def encode_all(examples: tf.data.Dataset, description: str, on_too_large: Callable[[str], None],
               expected_bytes: Optional[int] = None) -> Optional[Encoded]:
  """Keeps the encoded bytes of every readable image of (index, contents, label) in memory.

  The same check as check_all decides which files are readable, so the kept examples are the
  decoded cache's, and each crop, cut from the image decoded whole (crop_of_whole_image), is
  bit for bit the decoded cache's. When `expected_bytes` (the files' sizes) would not fit in the memory
  available, `on_too_large(message)` decides (stream instead: returns None).
  """
  available = available_memory_bytes()
  if expected_bytes is not None and expected_bytes > MAX_CACHE_SHARE_OF_MEMORY * available:
    return on_too_large(
        f"{description}: keeping the encoded images needs {_format_bytes(expected_bytes)}, more "
        f"than {MAX_CACHE_SHARE_OF_MEMORY:.0%} of the {_format_bytes(available)} of memory "
        "available")
  start = time.perf_counter()
  kept, labels, chunks = [], [], []
  for index, label, contents in _readable(examples, _decode_check, keep_contents=True).batch(1024):
    kept.append(index.numpy())
    labels.append(label.numpy())
    chunks.append(contents)
  contents = tf.concat(chunks, 0) if chunks else tf.constant([], tf.string)
  del chunks
  num_bytes = int(tf.reduce_sum(tf.cast(tf.strings.length(contents, unit="BYTE"), tf.int64)))
  kept = np.concatenate(kept).astype(np.int64) if kept else np.zeros([0], np.int64)
  labels = np.concatenate(labels).astype(np.int32) if labels else np.zeros([0], np.int32)
  metrics.console(f"{description}: {len(kept)} images kept in memory as their encoded files, "
                  f"{_format_bytes(num_bytes)}, read in {time.perf_counter() - start:.1f} s; "
                  "each image is decoded as it is read "
                  "(--config.data.cache_decoded=True holds their decoded pixels instead, several times "
                  "the memory; --config.data.cache=False reads them from their files)")
  return Encoded(kept, labels, contents, num_bytes)


def decode_all(examples: tf.data.Dataset, description: str,
               on_too_large: Callable[[str], None]) -> Optional[Decoded]:
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
  metrics.console(f"{description}: {len(kept)} images decoded into {_format_bytes(total)} of "
                  f"memory in {time.perf_counter() - start:.1f} s "
                  "(--config.data.cache_decoded=False keeps their encoded files instead, "
                  "--config.data.cache=False reads them from their files instead)")
  kept_slots = np.asarray(kept_slots, np.int64)
  return Decoded(np.asarray(kept, np.int64), np.asarray(labels, np.int32), images,
                 offsets[kept_slots], shapes[kept_slots])
