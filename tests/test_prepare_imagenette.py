"""tools.prepare_imagenette: the protocol's folder from tfds' download (faked by mock_data)."""
import numpy as np
import pytest
from PIL import Image

from mobilenet import cli, errors
from mobilenet.input import tfds_source
from tools import prepare_imagenette

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def mock_download(monkeypatch):
  monkeypatch.setattr(tfds_source, "check_download_hosts_reachable", lambda *args: None)
  with tfds.testing.mock_data(num_examples=5):
    yield


def test_makes_the_split_class_layout_with_every_image_squashed_to_the_size(mock_download,
                                                                             tmp_path):
  out = tmp_path / "imagenette2-224"
  counts = prepare_imagenette.prepare(out, data_dir=str(tmp_path / "tfds"), size=32)
  assert counts == {"train": 5, "val": 5}
  assert sorted(path.name for path in out.iterdir()) == ["train", "val"]
  synsets = sorted(path.name for path in (out / "train").iterdir())
  assert len(synsets) == 10 and all(name.startswith("n") and len(name) == 9 for name in synsets)
  images = sorted((out / "val").rglob("*.JPEG"))
  assert len(images) == 5
  for path in images:
    with Image.open(path) as image:
      assert image.size == (32, 32) and image.format == "JPEG"
  assert not list(tmp_path.glob(".imagenette2-224.partial-*"))


def test_an_existing_folder_is_refused_and_left_alone(mock_download, tmp_path):
  out = tmp_path / "imagenette2-224"
  (out / "train").mkdir(parents=True)
  with pytest.raises(errors.ConfigError, match="--out: .* already exists"):
    prepare_imagenette.prepare(out, data_dir=str(tmp_path / "tfds"))
  assert [path.name for path in out.iterdir()] == ["train"]


def test_squashing_stretches_rather_than_crops():
  wide = np.zeros((10, 40, 3), np.uint8)
  wide[:, 30:] = 255  # the right quarter white: stretched, it stays the right quarter
  square = np.asarray(prepare_imagenette.squashed(wide, 20))
  assert square.shape == (20, 20, 3)
  assert square[:, :4].max() < 20 and square[:, -4:].min() > 235


def test_a_missing_protocol_folder_names_the_command_that_makes_it(tmp_path):
  from configs import base, dws
  config = dws.get_config()
  config.data.folder = str(tmp_path / "shared" / "data" / "imagenette2-224")
  with pytest.raises(errors.ConfigError) as error:
    cli.check_config(config, check_first=base.check_protocol_folder)
  assert str(error.value).startswith(f"config.data.folder: no such directory: "
                                     f"{config.data.folder}; make it with `python -m "
                                     f"tools.prepare_imagenette --out={config.data.folder}`")
  config.data.folder = str(tmp_path / "dogs")  # any other folder: the plain message
  with pytest.raises(errors.ConfigError, match=r"no such directory: \S+dogs$"):
    cli.check_config(config, check_first=base.check_protocol_folder)
