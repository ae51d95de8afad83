"""Input pipeline: Imagenette or ImageNet from a folder of images or from tensorflow-datasets.

Every source feeds the same tf.data preprocessing (Inception-style crops for training, a central
crop for evaluation) and yields numpy batches for JAX, through one `Dataset`. Its modules:

  checks       check_config: every check of config.data, and the values it allows
  folder       the folder source: class folders, per-class percent slices (train[:90%])
  tfds_source  the tensorflow-datasets source: builder, split names, offline advice
  decode       crop windows of encoded images, header sizes, a split's files or pixels in memory
  splits       a loaded split as the pipeline reads it; unreadable files; a cache too large
  pipeline     the tf.data graphs of the train and eval batches of each process
  dataset      Dataset and DatasetInfo
"""
from mobilenet.input.checks import IMAGE_DTYPES, ON_CORRUPT, SOURCES, check_config
from mobilenet.input.dataset import Dataset, DatasetInfo

__all__ = ["Dataset", "DatasetInfo", "check_config", "IMAGE_DTYPES", "ON_CORRUPT", "SOURCES"]
