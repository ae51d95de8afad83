"""Shared pytest fixtures and helpers: image folders, running the commands, reading states."""
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent

# The tests start many short train.py / eval.py processes that compile the same small
# programs: a persistent compilation cache shared by the session makes each one cheap.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mobilenet-jax-cache-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# The files that take longest, first: pytest-xdist hands each worker the next file as it frees
# up (pytest.ini), so the slow ones starting first lets the workers finish together.
SLOWEST_FILES = ("test_train.py", "test_faults.py", "test_ops.py", "test_pretrained.py",
                 "test_export.py", "test_benchmark.py")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)
  items.sort(key=rank)  # stable: each file keeps its own order


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


# ----------------------------------------------------------------------------- runs

TINY = "alpha=0.25,resolution=32,batch=8"  # a tiny MobileNet that trains in seconds


def run_script(script, *args, env=None, check=True):
  result = subprocess.run([sys.executable, script, *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
  return result


def train_flags(folder, workdir, epochs=2, **overrides):
  flags = [f"--config=configs/dws.py:{TINY},epochs={epochs}",
           f"--workdir={workdir}",
           f"--config.data.folder={folder}",
           "--config.model.num_classes=3",
           "--config.train.eval_batch_size=8",
           "--config.train.log_every_steps=1",
           "--config.train.inference_benchmark_s=0.1",
           "--config.optimizer.learning_rate=0.4"]
  return flags + [f"--config.{key}={value}" for key, value in overrides.items()]


def final_state(workdir):
  """(step, state as nested dicts of numpy arrays) of the workdir's latest checkpoint."""
  import jax
  import orbax.checkpoint as ocp
  steps = sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                 if p.name.isdigit())
  path = pathlib.Path(workdir) / "checkpoints" / str(steps[-1]) / "state"
  # The checkpoint may come from another device count: restore onto this process's one device.
  single_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  return steps[-1], checkpointer.restore(
      path.absolute(), args=ocp.args.StandardRestore(fallback_sharding=single_device))


def leaves(tree, prefix=""):
  """(path, numpy array) for each leaf of nested dicts, lists and tuples."""
  import numpy as np
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from leaves(value, f"{prefix}/{key}")
  elif isinstance(tree, (list, tuple)):
    for index, value in enumerate(tree):
      yield from leaves(value, f"{prefix}/{index}")
  elif tree is not None:  # optax keeps None for masked-out state
    yield prefix, np.asarray(tree)


def changes(tree, start) -> dict:
  import numpy as np
  """Each float leaf of `tree` minus the same leaf of `start` (zero where `start` lacks it)."""
  begin = dict(leaves(start))
  return {key: value - begin.get(key, 0) for key, value in leaves(tree)
          if np.issubdtype(value.dtype, np.floating)}


def relative_difference(a: dict, b: dict) -> float:
  import numpy as np
  """||a - b|| / ||b|| over all the leaves together, which a leaf whose true value is near zero
  (a BatchNorm scale just before another BatchNorm) cannot dominate with its rounding noise."""
  assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
  difference = sum(float(np.sum((a[key] - b[key]) ** 2)) for key in b)
  norm = sum(float(np.sum(b[key] ** 2)) for key in b)
  assert norm > 0, "nothing to compare: every leaf of the reference is zero"
  return (difference / norm) ** 0.5


def unpinned(command: list[str]) -> tuple[list[str], tuple[int, ...] | None]:
  """A command as tools.lanes.pinned() gave it: the command itself and its cores (None
  where it was not pinned)."""
  if command[1:3] != ["-m", "tools.lanes"]:
    return command, None
  cpus = tuple(int(cpu) for cpu in command[3].removeprefix("--cpus=").split(","))
  return command[5:], cpus
