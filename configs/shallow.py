"""Shallow MobileNet (Table 5: the five 14x14x512 blocks removed) on Imagenette."""
from configs import base


def get_config(arg=None):
  config = base.get_base_config()
  config.model.variant = "shallow"
  return base.apply_argument(config, arg)
