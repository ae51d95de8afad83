"""MobileNet (depthwise-separable) on Imagenette. `--config=configs/dws.py:alpha=0.5,resolution=96`."""
from configs import base


def get_config(arg=None):
  config = base.get_base_config()
  config.model.variant = "dws"
  return base.apply_argument(config, arg)
