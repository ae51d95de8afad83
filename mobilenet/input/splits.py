"""A loaded split, whatever its source: how the pipeline reads example i's crop, which cache
config.data asks for, and what loading does with unreadable files and with a cache that would not
fit in memory."""
import dataclasses
import logging
from typing import Callable, Optional

import tensorflow as tf

from mobilenet import errors
from mobilenet.input import decode

NUM_LOGGED_SKIPPED = 5

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Split:
  """One split's examples: random access by index, or (tfds TFRecords) a sequential stream."""
  description: str
  num_examples: int
  skipped: tuple[str, ...] = ()
  # Random access: (index, window_fn) -> (uint8 crop, int32 label).
  read_window: Optional[Callable] = None
  # Sequential only: shuffle seed tensor or None -> Dataset of (encoded image, label).
  stream: Optional[Callable] = None


def cache_kind(data_config) -> Optional[str]:
  """"encoded" (data.cache, the default: the files' bytes, each image decoded as it is read into
  the decoded cache's pixels), "decoded" (data.cache and data.cache_decoded: the images' pixels, several
  times the memory) or None (data.cache=False: the files are read at every epoch)."""
  if not data_config.cache:
    return None
  return "decoded" if data_config.get("cache_decoded", False) else "encoded"


def from_decoded(description: str, decoded: decode.Decoded, skipped=()) -> Split:
  """Crops sliced out of the images decoded into memory: only the crop's rows are read."""
  images = decoded.images.to_tensor()
  offsets = tf.constant(decoded.offsets, tf.int64)
  shapes = tf.constant(decoded.shapes, tf.int64)
  labels = tf.constant(decoded.labels, tf.int32)

  def read_window(index, window_fn):
    height, width = shapes[index][0], shapes[index][1]
    y, x, h, w = (tf.cast(v, tf.int64) for v in window_fn(tf.cast(height, tf.int32),
                                                            tf.cast(width, tf.int32)))
    start = offsets[index] + y * width * 3
    rows = tf.reshape(images[start:start + h * width * 3], tf.stack([h, width, 3]))
    return rows[:, x:x + w], labels[index]

  return Split(description, len(decoded.labels), tuple(skipped), read_window=read_window)


def from_encoded(description: str, fetch: Callable, num_examples: int, skipped=()) -> Split:
  """fetch(index) -> (encoded image bytes, label); decoding happens per crop."""
  def read_window(index, window_fn):
    contents, label = fetch(index)
    return decode.decode_window(contents, window_fn), tf.cast(label, tf.int32)
  return Split(description, num_examples, tuple(skipped), read_window=read_window)


def from_encoded_in_memory(description: str, encoded: decode.Encoded, skipped=()) -> Split:
  """Crops of the images decoded whole from the files' bytes held in memory: the decoded
  cache's crops, bit for bit, in a fraction of its memory."""
  contents = encoded.contents
  labels = tf.constant(encoded.labels, tf.int32)

  def read_window(index, window_fn):
    return decode.crop_of_whole_image(contents[index], window_fn), labels[index]

  return Split(description, len(encoded.labels), tuple(skipped), read_window=read_window)


def report_skipped(description: str, names: list[str], reason_of: Callable[[int], str],
                   on_corrupt: str) -> None:
  """One warning naming the first few unreadable files; with on_corrupt='error', a DataError."""
  if not names:
    return
  if on_corrupt == "error":
    raise errors.DataError(
        f"unreadable image file {names[0]}: {reason_of(0)} "
        "(data.on_corrupt='error'; set it to 'skip' to skip and count such files)")
  log.warning("%s: skipped %d unreadable image file(s), e.g. %s", description, len(names),
              ", ".join(names[:NUM_LOGGED_SKIPPED]))


def stream_instead(message: str) -> None:
  """decode.decode_all's answer to a cache too large for memory: read the files at every epoch."""
  log.warning("%s; reading the images from their files at every epoch instead "
              "(data.cache=False streams from the start)", message)
  return None
