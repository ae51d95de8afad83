"""ImageNet's 1000 classes in their standard order, and the columns of a 1000-class (or TF-slim's
1001-class) model that a folder of ImageNet synsets (Imagenette, say) is scored on."""
import functools
import importlib.util
import os

import numpy as np

from mobilenet import errors

NUM_CLASSES = 1000
# TF-slim's classifiers put a "background" class first, before the 1000.
WITH_BACKGROUND = 1001


@functools.cache
def synsets() -> tuple[str, ...]:
  """The synset ids (n01440764, ...) in the order of the classifier's outputs: the list that
  tensorflow-datasets ships for imagenet2012, found without importing the package."""
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None or not spec.submodule_search_locations:
    raise errors.DataSourceUnavailableError(
        "tensorflow-datasets is not installed: it holds ImageNet's class list")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "imagenet2012",
                      "labels.txt")
  with open(path, encoding="utf-8") as labels:
    names = tuple(line.strip() for line in labels if line.strip())
  if len(names) != NUM_CLASSES:
    raise errors.DataSourceUnavailableError(f"{path} lists {len(names)} classes, not 1000")
  return names


def class_columns(label_names, num_classes: int) -> np.ndarray:
  """For each class of a dataset (its folder names, in its order), the output of an ImageNet
  classifier with `num_classes` (1000, or 1001 with background) that stands for it.

  Raises ConfigError when the model is not an ImageNet classifier or a class is no synset."""
  if num_classes not in (NUM_CLASSES, WITH_BACKGROUND):
    raise errors.ConfigError(
        f"model.num_classes is {num_classes} but the dataset has {len(label_names)} classes; "
        f"set --config.model.num_classes={len(label_names)}")
  index = {name: column for column, name in enumerate(synsets(), start=num_classes - NUM_CLASSES)}
  unknown = [name for name in label_names if name not in index]
  if unknown:
    raise errors.ConfigError(
        f"the dataset's class {unknown[0]!r} is no ImageNet synset (like n01440764): a "
        f"{num_classes}-class ImageNet model can only be scored on ImageNet's classes; fine-tune "
        f"it instead (--config.train.init_from)")
  return np.array([index[name] for name in label_names], np.int32)
