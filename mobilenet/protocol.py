"""Which config fields change what a run measures: the one rule by which train.py resumes a run,
the sweep calls a result stale, and the report merges seeds into a row.

Configs are compared as flattened dicts ({"train.num_epochs": 40, ...}), as config.json stores
them, so that a run's saved config and a new one compare alike.
"""
import os
from typing import Mapping, Sequence

# Fields that decide the shapes of the parameters: a checkpoint restores only into a model that
# agrees on them (the optimizer state's shapes are checked against the checkpoint's own tree).
MODEL_FIELDS = ("model.variant", "model.alpha", "model.num_classes")
# Fields that also decide what evaluating a checkpoint computes: eval.py takes them from the
# checkpoint and refuses a flag or config file that says otherwise.
EVALUATION_FIELDS = MODEL_FIELDS + ("model.bn_epsilon", "model.activation", "data.resolution")
# Where the data and runs live, how often to log, evaluate or save, and which implementation
# computes the same function: runs that differ only in these fields measure the same thing.
# Every other field changes what a run measures; the dataset itself is told by dataset_name.
BOOKKEEPING_FIELDS = ("data.folder", "data.data_dir", "data.cache", "data.cache_decoded",
                      "data.prefetch_batches",
                      "data.on_corrupt", "model.depthwise_impl", "model.pointwise_impl",
                      "model.standard_impl", "train.eval_batch_size", "train.log_every_steps",
                      "train.eval_every_steps", "train.checkpoint_every_steps",
                      "train.keep_checkpoints", "train.inference_benchmark_s", "train.profile_steps",
                      "distributed")
SEED_FIELD = "seed"
DATASET_FIELD = "dataset"  # a pseudo-field: dataset_name of the data section


def dataset_name(data: Mapping) -> str:
  """What a run's results call its dataset: the folder's name, or the tfds name's first part
  ("imagenette2-224", "imagenet2012"); the same data moved to another place keeps its name."""
  if data["source"] == "tfds":
    return data["tfds_name"].split("/")[0]
  return os.path.basename(os.path.normpath(data["folder"]))


def flatten(tree: Mapping, prefix: str = "") -> dict:
  """{"train": {"num_epochs": 10}} -> {"train.num_epochs": 10}: the names flags use."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def settings(config: Mapping, ignoring: Sequence[str] = ()) -> dict:
  """The flattened fields of a config (a dict as config.json holds it) that change what a run
  measures: all but BOOKKEEPING_FIELDS and `ignoring` (a field, or a section with its fields)."""
  ignored = (*BOOKKEEPING_FIELDS, *ignoring)
  return {field: value for field, value in flatten(config).items()
          if not any(field == name or field.startswith(name + ".") for name in ignored)}


def differing_fields(first: dict, second: dict) -> list[str]:
  """The fields of two `settings` that both set to different values, in `second`'s order. A
  field only one of them has (added to the configs later) is not a difference."""
  return [field for field in second if field in first and first[field] != second[field]]


def run_identity(config: Mapping) -> dict:
  """Everything that makes two configs the same run: the settings, the seed and the dataset."""
  identity = settings(config)
  data = config.get("data")
  if isinstance(data, Mapping) and "source" in data:
    identity = {DATASET_FIELD: dataset_name(data), **identity}
  return identity
