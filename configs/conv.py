"""Conv MobileNet (standard 3x3 convolutions) on Imagenette: configs/dws.py with the other variant."""
from configs import base


def get_config(arg=None):
  config = base.get_base_config()
  config.model.variant = "conv"
  return base.apply_argument(config, arg)
