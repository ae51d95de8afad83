"""The tf.data graphs that turn a loaded split into this process's batches.

Training batches are a pure function of (seed, step): the global example counter
c = step * global_batch + i picks epoch c // N and position c % N, a stateless permutation of
(seed, epoch) turns the position into an example index, and the crop and flip are seeded by
(seed, c). So a run resumed at any step sees bit-identical batches without decoding the skipped
images, and process p of P always gets the p-th contiguous slice of the same global batch.
"""
from typing import Iterator, Optional

import jax
import numpy as np
import tensorflow as tf

from mobilenet import errors
from mobilenet.input import decode, splits

MAX_CROP_ATTEMPTS = 10  # as TF's ResNet/MobileNet preprocessing; the whole image if all fail
# Seeds of the independent random streams derived from the user's seed.
_PERMUTATION_STREAM = 1
_AUGMENTATION_STREAM = 2
_FOREVER = np.iinfo(np.int64).max


def check_global_batch_size(global_batch_size: int) -> None:
  if global_batch_size < 1:
    raise errors.ConfigError(
        f"global_batch_size={global_batch_size}: expected a positive batch size")


def local_batch_size(global_batch_size: int, process_index: Optional[int],
                     process_count: Optional[int]) -> tuple[int, int]:
  """(local batch, process index), JAX's index by default; the global batch must split evenly."""
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index}, process_count={process_count}: "
                     "expected 0 <= process_index < process_count")
  check_global_batch_size(global_batch_size)
  devices = jax.device_count()
  if global_batch_size % devices:
    raise errors.ConfigError(f"global_batch_size={global_batch_size} does not divide evenly "
                             f"over jax.device_count()={devices} devices")
  if global_batch_size % process_count:
    raise errors.ConfigError(f"global_batch_size={global_batch_size} does not divide evenly "
                             f"over process_count={process_count} processes")
  return global_batch_size // process_count, process_index


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
  dtype = tf.dtypes.as_dtype(data_config.image_dtype)

  def example(counter, index, *read_args):
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(augmentation_seed, counter), 2))
    image, label = read_window(index, _train_window_fn(data_config, crop_seed), *read_args)
    image = _finish(image, data_config)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return {"image": tf.cast(image, dtype), "label": label}
  return example


def _eval_example_fn(data_config, read_window):
  dtype = tf.dtypes.as_dtype(data_config.image_dtype)
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
  return decode.decode_window(contents, window_fn), label


def _finalise(dataset: tf.data.Dataset, local_batch: int, data_config) -> Iterator[dict]:
  dataset = dataset.batch(local_batch, drop_remainder=True)
  if int(data_config.prefetch_batches):
    dataset = dataset.prefetch(int(data_config.prefetch_batches))
  options = tf.data.Options()
  options.deterministic = True
  # tf.data's graph rewrites would serialise the captured cache (a copy of every encoded file,
  # or of 1.4 GB of decoded images, seconds at every iterator) and buy nothing here: the
  # pipeline is already parallel and prefetched.
  options.experimental_optimization.apply_default_optimizations = False
  dataset = dataset.with_options(options)
  return dataset.as_numpy_iterator()


# ----------------------------------------------------------------------------- batches


def train_batches(split: splits.Split, data_config, *, global_batch_size: int, local_batch: int,
                  process_index: int, seed: int,
                  start_step: int) -> Iterator[dict[str, np.ndarray]]:
  """Process `process_index`'s slices of global batches start_step, start_step + 1, ... forever."""
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


def eval_batches(split: splits.Split, data_config, *, global_batch_size: int, local_batch: int,
                 process_index: int, num_batches: int) -> Iterator[dict[str, np.ndarray]]:
  """Process `process_index`'s slices of `num_batches` global batches that cover the split once,
  the last padded (mask False)."""
  num_examples = split.num_examples

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
