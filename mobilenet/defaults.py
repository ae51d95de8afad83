"""The config schema: every field a run reads, with its default.

The model, data pipeline, trainer and optimizer read these fields; a config file changes some of
them (`configs/` in the repository), flags change others (`--config.optimizer.learning_rate=0.1`).
"""
import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """Every field a run reads, at its default; configs/ change what they study."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict(dict(
      variant="dws",            # dws (MobileNet) | conv (Conv MobileNet) | shallow
      alpha=1.0,                # width multiplier
      num_classes=10,
      dropout_rate=0.2,
      dtype="float32",          # computation dtype: float32 | bfloat16; parameters stay float32
      depthwise_impl="auto",    # grouped (feature_group_count conv) | shifted | ffi | auto (CPU: ffi, else shifted)
      pointwise_impl="auto",    # conv | auto (matmul on CPU)
      standard_impl="auto",     # conv | auto (on CPU: kernel gradient as per-tap matmuls)
      bn_momentum=0.9,
      bn_epsilon=1e-3,
      activation="relu",        # relu (the paper) | relu6 (the released ImageNet weights)
  ))

  config.data = ml_collections.ConfigDict(dict(
      source="folder",          # folder | tfds
      folder="",                # root with <split>/<class>/<image> (source=folder)
      tfds_name="imagenette/160px-v2",  # source=tfds: imagenette/{160px,320px,full-size}-v2 | imagenet2012
      data_dir="",              # tfds data_dir; empty for tfds' default
      train_split="train",
      eval_split="val",         # a folder's subfolder name, or a tfds split such as "validation"
      resolution=128,           # the paper's resolution multiplier: 224, 192, 160, 128 at rho = 1..4/7
      min_area=0.5,             # Inception-style random crop; Inception itself uses 0.08
      max_area=1.0,
      min_aspect_ratio=3 / 4,
      max_aspect_ratio=4 / 3,
      crop_fraction=0.875,      # eval: central crop of this fraction, then resize
      cache=True,               # keep each split's encoded files in memory; crops decode as read
      cache_decoded=False,      # with cache: keep the decoded pixels instead (~10x the memory)
      image_dtype="float32",    # float32 | bfloat16
      shuffle_buffer=16384,
      on_corrupt="skip",        # skip (count and log) | error
      prefetch_batches=2,
  ))

  config.train = ml_collections.ConfigDict(dict(
      global_batch_size=32,     # across all devices and processes
      eval_batch_size=64,       # evaluation holds its activations at the peak: 64 keeps a run under 3 GB
      num_epochs=20.0,
      init_from="",             # a workdir (a run or an import) whose weights start this run
      log_every_steps=20,
      eval_every_steps=0,       # 0: once per epoch
      checkpoint_every_steps=0,  # 0: once per epoch
      keep_checkpoints=3,
      inference_benchmark_s=3.0,  # time spent measuring inference images/s for eval_results.json
      profile_steps=0,          # >0: a jax.profiler trace of this many steps into <workdir>/profile
  ))

  config.optimizer = ml_collections.ConfigDict(dict(
      name="sgd",               # sgd (Nesterov momentum) | rmsprop (TensorFlow's) | adamw
      learning_rate=0.8,        # peak, for a global batch of 256; scaled linearly with the batch
      scale_learning_rate_with_batch=True,
      schedule="flat_cosine",   # warmup_cosine | flat_cosine | exponential
      warmup_epochs=1.0,
      flat_fraction=0.5,        # flat_cosine: share of training at the peak before the cosine
      decay_rate=0.94,          # exponential: factor every decay_epochs (staircase)
      decay_epochs=2.0,
      momentum=0.9,
      nesterov=True,
      rmsprop_decay=0.9,
      epsilon=1.0,              # rmsprop: inside the square root, TensorFlow-style
      b1=0.9,
      b2=0.999,
      weight_decay=2e-4,
      weight_decay_on_depthwise=False,  # the paper: little or no decay on depthwise filters
      grad_clip_norm=0.0,       # 0: no clipping
      label_smoothing=0.0,
      ema_decay=0.0,            # 0: no parameter EMA; else evaluation uses the EMA weights
  ))

  config.distributed = ml_collections.ConfigDict(dict(
      initialize=False,         # call jax.distributed.initialize() (multi-host)
      coordinator_address="",   # empty: let JAX detect it (TPU, SLURM)
      num_processes=0,
      process_id=-1,
  ))
  return config


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """The config a run saved (config.json, a checkpoint's): the defaults, with the saved value of
  every field this code still has (a run saved before a field existed keeps its default)."""
  config = default_config()
  _update_known_fields(config, saved)
  return config


def _update_known_fields(config: ml_collections.ConfigDict, saved: dict) -> None:
  """Copies the saved values of the fields this code still has (older runs may lack some)."""
  for key, value in saved.items():
    if key not in config:
      continue
    if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
      _update_known_fields(config[key], value)
    elif value is not None:
      config[key] = type(config[key])(value) if isinstance(config[key], float) else value
