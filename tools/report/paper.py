"""The paper's ImageNet rows (configs/experiments.py) and which of them a run of ours stands for."""
import dataclasses
from typing import Optional

from configs import experiments


PAPER_BASE_RESOLUTION = 224

# The paper's resolution ladder is 224/192/160/128, steps of 32 px. A run's
# resolution, rescaled to 224, matches the nearest rung within half a step:
# this project's 128/112/96/80 ladder rescales to 224/196/168/140.
PAPER_RESOLUTIONS = (224, 192, 160, 128)
PAPER_RESOLUTION_TOLERANCE = 16


@dataclasses.dataclass(frozen=True)
class PaperRow:
  name: str
  top1_percent: float
  million_mult_adds: int
  million_params: float
  tables: str


# ImageNet rows of Howard et al. (2017), keyed by (variant, alpha, resolution).
PAPER_IMAGENET = {key: PaperRow(**row) for key, row in experiments.PAPER_IMAGENET.items()}


def paper_resolution(resolution: int, base_resolution: int) -> Optional[int]:
  """The rung of the paper's 224/192/160/128 ladder that a run's resolution stands for."""
  scaled = resolution * PAPER_BASE_RESOLUTION / base_resolution
  nearest = min(PAPER_RESOLUTIONS, key=lambda rung: abs(rung - scaled))
  return nearest if abs(nearest - scaled) <= PAPER_RESOLUTION_TOLERANCE else None


def paper_row(variant: str, alpha: float, resolution: int,
              base_resolution: int) -> Optional[PaperRow]:
  rung = paper_resolution(resolution, base_resolution)
  return PAPER_IMAGENET.get((variant, alpha, rung)) if rung else None
