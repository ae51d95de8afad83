"""Shared pytest fixtures."""
import os
import pathlib

import pytest

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent


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
