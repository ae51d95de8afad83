"""Shared pytest fixtures."""
import os
import pathlib
import tempfile

import pytest

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent

# The tests start many short train.py / eval.py processes that compile the same small
# programs: a persistent compilation cache shared by the session makes each one cheap.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mobilenet-jax-cache-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def imagenette_path() -> pathlib.Path:
  """Where the shared Imagenette2 folder is: $MOBILENET_IMAGENETTE_DIR or ../shared/data/imagenette2-224."""
  return pathlib.Path(os.environ.get(
      "MOBILENET_IMAGENETTE_DIR",
      PROJECT_ROOT.parent / "shared" / "data" / "imagenette2-224"))


@pytest.fixture
def imagenette_dir() -> pathlib.Path:
  path = imagenette_path()
  if not (path / "train").is_dir():
    pytest.skip(f"real Imagenette folder not found at {path} "
                "(set MOBILENET_IMAGENETTE_DIR to run this test)")
  return path


def write_image_folder(root: pathlib.Path, *, classes=("ant", "bee", "cat"), train_per_class=6,
                       val_per_class=3, size=40, seed=0) -> pathlib.Path:
  """A tiny image folder in the Imagenette layout whose classes differ by colour (learnable)."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(seed)
  for split, count in (("train", train_per_class), ("val", val_per_class)):
    for index, name in enumerate(classes):
      folder = root / split / name
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(count):
        base = np.zeros((size, size, 3))
        base[..., index % 3] = 200
        pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}_{i}.JPEG", format="JPEG")
  return root


@pytest.fixture
def tiny_image_folder(tmp_path) -> pathlib.Path:
  return write_image_folder(tmp_path / "images")


# (height, width, PIL mode, format) of the images write_varied_image_folder makes, in file
# order: the first is tiny (a cache sized from it must still hold the rest), some are large,
# some extreme in aspect ratio, and every channel layout a photo folder may hold is there.
VARIED_IMAGES = (
    (9, 12, "RGB", "JPEG"), (1200, 1600, "RGB", "JPEG"), (4000, 10, "RGB", "JPEG"),
    (10, 4000, "L", "PNG"), (300, 200, "RGBA", "PNG"), (480, 640, "CMYK", "JPEG"),
    (90, 70, "I;16", "PNG"), (33, 1000, "P", "PNG"),
)


def varied_image(height: int, width: int, mode: str, colour, rng):
  """A noisy picture of one colour in the given PIL mode."""
  import numpy as np
  from PIL import Image
  pixels = np.clip(np.asarray(colour)[None, None, :] + rng.normal(0, 30, (height, width, 3)),
                   0, 255).astype(np.uint8)
  image = Image.fromarray(pixels, "RGB")
  if mode == "I;16":
    return Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
  if mode == "P":
    return image.convert("P")
  return image.convert(mode)


def write_varied_image_folder(root: pathlib.Path, *, classes=("ant", "bee", "cat"),
                              val_per_class=2, seed=0) -> pathlib.Path:
  """An image folder like a user's photographs: sizes from 9x12 to 4000x10 and 1200x1600."""
  import numpy as np
  rng = np.random.default_rng(seed)
  colours = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]
  for split in ("train", "val"):
    for index, name in enumerate(classes):
      folder = root / split / name
      folder.mkdir(parents=True, exist_ok=True)
      shapes = VARIED_IMAGES if split == "train" else VARIED_IMAGES[:val_per_class]
      for i, (height, width, mode, fmt) in enumerate(shapes):
        suffix = "jpg" if fmt == "JPEG" else "png"
        varied_image(height, width, mode, colours[index % 3], rng).save(
            folder / f"{name}_{i}.{suffix}", format=fmt)
  return root
