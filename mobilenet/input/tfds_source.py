"""The tensorflow-datasets source: the prepared builder (downloaded on first use, with one
paragraph of advice when offline), its split names, and its examples kept encoded."""
import os
import socket
import urllib.parse

import numpy as np
import tensorflow as tf

from mobilenet import errors
from mobilenet.input import decode, splits


def _is_network_error(error: BaseException) -> bool:
  network_types = [ConnectionError, TimeoutError, socket.gaierror, socket.timeout]
  try:
    import requests  # pylint: disable=g-import-not-at-top
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


def check_download_hosts_reachable(data_config, builder) -> None:
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
      raise errors.DataSourceUnavailableError(
          _offline_message(data_config, builder, error)) from None


def prepared_builder(data_config):
  """The prepared tfds builder; prepares (downloads) it if needed, with a clear error offline."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow; tfds runs only)
  builder = tfds.builder(data_config.tfds_name, data_dir=data_config.data_dir or None)
  if builder.is_prepared():
    return builder
  check_download_hosts_reachable(data_config, builder)
  try:
    builder.download_and_prepare()
  except Exception as error:  # pylint: disable=broad-except
    if _is_network_error(error):
      raise errors.DataSourceUnavailableError(
          _offline_message(data_config, builder, error)) from None
    if isinstance(error, AssertionError) and "manual" in str(error).lower():
      raise errors.DataSourceUnavailableError(
          f"tfds dataset '{data_config.tfds_name}' needs a manual download: "
          f"{str(error).strip()} Or use --config.data.source=folder with a folder of JPEGs."
      ) from None
    raise
  return builder


def _split_name(builder, split: str) -> str:
  """Lets the folder-style 'val' name tfds' 'validation' split."""
  if split == "val" and "val" not in builder.info.splits:
    return "validation"
  return split


def label_names(data_config) -> tuple[str, ...]:
  return tuple(prepared_builder(data_config).info.features["label"].names)


def check_layout(data_config) -> None:
  """Both splits are among the prepared dataset's; nothing is read."""
  builder = prepared_builder(data_config)
  if not builder.info.splits:  # a builder without metadata (tfds' mock data) names none
    return
  for field in ("train_split", "eval_split"):
    name = _split_name(builder, data_config[field])
    try:
      builder.info.splits[name]
    except (KeyError, ValueError):
      raise errors.DataError(
          f"data.{field}={data_config[field]!r}: {data_config.tfds_name} has the "
          f"splits {', '.join(sorted(builder.info.splits))}") from None


def _examples(builder, split: str) -> tf.data.Dataset:
  """(encoded image, label) in the prepared files' fixed order; images stay undecoded."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset = builder.as_dataset(
      split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False))
  return dataset.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))


def count_examples(builder, split: str, examples: tf.data.Dataset) -> int:
  count = int(examples.cardinality())
  if count >= 0:
    return count
  return int(builder.info.splits[split].num_examples)


def has_random_access(builder) -> bool:
  """ArrayRecord files allow reading example i directly; TFRecords only in sequence."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def _split_bytes(builder, split: str):
  """The prepared split's size on disk (its encoded images and labels), where tfds knows it."""
  try:
    return int(builder.info.splits[split].num_bytes) or None
  except (KeyError, ValueError, TypeError, AttributeError):
    return None


def load_split(data_config, split: str) -> splits.Split:
  """The split in memory (data.cache: its encoded images, or decoded with data.cache_decoded),
  read by index (ArrayRecord), or streamed."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = prepared_builder(data_config)
  split = _split_name(builder, split)
  description = f"tfds {data_config.tfds_name} split {split}"
  examples = _examples(builder, split)
  num_examples = count_examples(builder, split, examples)
  indexed = examples.enumerate().map(lambda i, record: (i, record[0], record[1]))
  cache = splits.cache_kind(data_config)
  decoded = (decode.decode_all(indexed, description, splits.stream_instead)
             if cache == "decoded" else None)
  encoded = (decode.encode_all(indexed, description, splits.stream_instead,
                               expected_bytes=_split_bytes(builder, split))
             if cache == "encoded" else None)
  if decoded or encoded:
    missing = sorted(set(range(num_examples)) - set((decoded or encoded).kept.tolist()))
    skipped = [f"{description} record {i}" for i in missing]
    splits.report_skipped(description, skipped, lambda k: "the image does not decode",
                          data_config.on_corrupt)
    if decoded:
      return splits.from_decoded(description, decoded, skipped)
    return splits.from_encoded_in_memory(description, encoded, skipped)
  if has_random_access(builder):
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})

    def read(index):
      example = source[int(index)]
      return example["image"], np.int32(example["label"])

    def fetch(index):
      contents, label = tf.py_function(read, [index], [tf.string, tf.int32])
      contents.set_shape([])
      return contents, label
    return splits.from_encoded(description, fetch, len(source))

  def stream(seed):
    if seed is None:
      return examples
    return examples.shuffle(int(data_config.shuffle_buffer), seed=seed,
                            reshuffle_each_iteration=False)
  return splits.Split(description, num_examples, stream=stream)
