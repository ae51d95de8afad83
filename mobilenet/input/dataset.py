"""The one object that training, evaluation and the tools read config.data's source through."""
import dataclasses
import functools
import math
from typing import Iterator, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from mobilenet.input import checks, folder, pipeline, splits, tfds_source


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  label_names: tuple[str, ...]
  num_train_examples: int
  num_eval_examples: int


@functools.cache
def _leave_accelerators_to_jax() -> None:
  """tf.data runs on the host: hides the GPUs from TF, once a process, before TF first uses them.

  (TF_CPP_MIN_LOG_LEVEL, which hides TF's C++ warnings about skipped files, is read when TF is
  imported, so train.py, eval.py and the tools set it before they import anything.)
  """
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF was already initialised elsewhere; its device choice stands
    pass


class Dataset:
  """config.data's source: its classes, example counts and batches.

  The config is checked when the Dataset is made; each split is listed, checked and (with
  data.cache) read into memory on first use, once for the Dataset's lifetime.
  """

  def __init__(self, data_config: ml_collections.ConfigDict, *,
               process_index: Optional[int] = None, process_count: Optional[int] = None):
    """process_index and process_count default to JAX's; tests pretend to be one of several."""
    _leave_accelerators_to_jax()
    checks.check_config(data_config)
    self.config = ml_collections.FrozenConfigDict(data_config)  # what was loaded stays true
    self._source = folder if data_config.source == "folder" else tfds_source
    self._process_index = process_index
    self._process_count = process_count
    self._loaded_splits: dict[str, splits.Split] = {}

  def check_layout(self) -> None:
    """Both splits exist (and a folder's hold the same classes): found before anything decodes."""
    self._source.check_layout(self.config)

  @functools.cached_property
  def label_names(self) -> tuple[str, ...]:
    """The class names in label order (a folder's class folders), without loading a split."""
    self.check_layout()
    return tuple(self._source.label_names(self.config))

  @functools.cached_property
  def info(self) -> DatasetInfo:
    """Class names and example counts (readable images only): both splits are loaded."""
    label_names = self.label_names
    return DatasetInfo(
        num_classes=len(label_names),
        label_names=label_names,
        num_train_examples=self._split(self.config.train_split).num_examples,
        num_eval_examples=self._split(self.config.eval_split).num_examples)

  def train_batches(self, *, global_batch_size: int, seed: int,
                    start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of global batches start_step, start_step + 1, ... forever.

    {'image': [local_batch, R, R, 3] float32 (or bfloat16) in [-1, 1], 'label': int32 [local_batch]}
    """
    local_batch, process_index = pipeline.local_batch_size(
        global_batch_size, self._process_index, self._process_count)
    if start_step < 0:
      raise ValueError(f"start_step={start_step}: expected 0 or more")
    return pipeline.train_batches(
        self._split(self.config.train_split), self.config, global_batch_size=global_batch_size,
        local_batch=local_batch, process_index=process_index, seed=seed, start_step=start_step)

  def eval_batches(self, *, global_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the eval split; every example once, padding masked, same batch count everywhere.

    {'image', 'label', 'mask': bool [local_batch], False on padding}
    """
    local_batch, process_index = pipeline.local_batch_size(
        global_batch_size, self._process_index, self._process_count)
    return pipeline.eval_batches(
        self._split(self.config.eval_split), self.config, global_batch_size=global_batch_size,
        local_batch=local_batch, process_index=process_index,
        num_batches=self.num_eval_batches(global_batch_size))

  def num_eval_batches(self, global_batch_size: int) -> int:
    """ceil(eval examples / global batch): the last batch is padded, never dropped."""
    pipeline.check_global_batch_size(global_batch_size)
    return math.ceil(self._split(self.config.eval_split).num_examples / global_batch_size)

  def _split(self, split: str) -> splits.Split:
    if split not in self._loaded_splits:
      self._loaded_splits[split] = self._source.load_split(self.config, split)
    return self._loaded_splits[split]
