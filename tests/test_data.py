"""The input pipeline: folder and tfds sources, labels, determinism, resume, eval padding, bad files."""
import logging
import pathlib
import socket

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import base
from mobilenet import errors
from tools import data_benchmark
from mobilenet.input import Dataset, DatasetInfo, check_config, decode, folder, splits, tfds_source
from tests.conftest import VARIED_IMAGES, varied_image, write_varied_image_folder

RESOLUTION = 32
# Each class has its own colour; grayscale files get the colour's luma.
CLASS_COLOURS = {"ant": (220, 40, 40), "bee": (40, 220, 40), "cat": (40, 40, 220)}
LABEL_NAMES = ("ant", "bee", "cat")  # sorted folder names, whatever order they were made in
# data.cache's three settings: the files' bytes in memory (the default), their decoded pixels,
# none (the files are read at every epoch).
CACHES = {"encoded": dict(cache=True), "decoded": dict(cache=True, cache_decoded=True),
          "none": dict(cache=False)}


def _luma(colour):
  r, g, b = colour
  return round(0.299 * r + 0.587 * g + 0.114 * b)


def _picture(colour, height, width, mode="RGB"):
  """A colour with a gentle diagonal ramp, so different crops have different pixels."""
  ramp = (np.arange(height)[:, None] + np.arange(width)[None, :]) * 40 // (height + width) - 20
  if mode == "L":
    return Image.fromarray(np.clip(_luma(colour) + ramp, 0, 255).astype(np.uint8), "L")
  pixels = np.clip(np.array(colour)[None, None, :] + ramp[..., None], 0, 255).astype(np.uint8)
  image = Image.fromarray(pixels, "RGB")
  if mode == "RGBA":
    alpha = Image.fromarray(np.full((height, width), 128, np.uint8), "L")
    image.putalpha(alpha)
  return image


def _write_tiny_folder(root: pathlib.Path) -> pathlib.Path:
  """3 classes; train has 9 readable images and 3 bad files, val 7 images. Returns the root."""
  # (file name, mode, format, height, width) per class, made in unsorted class order.
  train = {
      "cat": [("c0.jpg", "RGB", "JPEG", 40, 56), ("c1.JPEG", "RGB", "JPEG", 56, 40),
              ("c2.png", "L", "PNG", 48, 48)],
      "ant": [("a0.jpg", "RGB", "JPEG", 48, 64), ("a1.png", "RGB", "PNG", 40, 40),
              ("a2.jpg", "L", "JPEG", 64, 48)],
      "bee": [("b0.jpg", "RGB", "JPEG", 44, 60), ("b1.png", "RGBA", "PNG", 52, 52),
              ("b2.jpg", "RGB", "JPEG", 36, 50)],
  }
  val = {
      "bee": [("vb0.jpg", "RGB", "JPEG", 48, 48), ("vb1.png", "RGBA", "PNG", 40, 60)],
      "ant": [("va0.jpg", "RGB", "JPEG", 50, 40), ("va1.jpg", "L", "JPEG", 48, 48),
              ("va2.png", "RGB", "PNG", 40, 40)],
      "cat": [("vc0.jpg", "RGB", "JPEG", 60, 44), ("vc1.jpg", "RGB", "JPEG", 40, 40)],
  }
  for split, classes in (("train", train), ("val", val)):
    for name, files in classes.items():
      folder = root / split / name
      folder.mkdir(parents=True)
      for file_name, mode, fmt, height, width in files:
        _picture(CLASS_COLOURS[name], height, width, mode).save(folder / file_name, fmt)
  whole = (root / "train" / "ant" / "a0.jpg").read_bytes()
  (root / "train" / "ant" / "broken.jpg").write_bytes(whole[:len(whole) // 2])  # truncated
  (root / "train" / "bee" / "empty.jpg").write_bytes(b"")
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0")  # hidden files are not images
  return root


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> pathlib.Path:
  return _write_tiny_folder(tmp_path_factory.mktemp("tiny"))


def _config(folder, **overrides) -> ml_collections.ConfigDict:
  config = base.get_base_config().data
  config.folder = str(folder)
  config.resolution = RESOLUTION
  config.update(overrides)
  return config


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _class_of(image: np.ndarray) -> int:
  """The class whose colour (or that colour's grey) is nearest the image's mean colour."""
  mean = (image.astype(np.float32).reshape(-1, 3).mean(0) + 1) * 127.5
  colours = [np.array(CLASS_COLOURS[name]) for name in LABEL_NAMES]
  references = list(enumerate(colours)) + [(label, np.full(3, _luma(colour)))
                                           for label, colour in enumerate(colours)]
  return min(references, key=lambda ref: np.abs(ref[1] - mean).sum())[0]


# ----------------------------------------------------------------------------- folder source


def test_label_names_are_sorted_class_folders_and_bad_files_are_counted(tiny_folder, caplog):
  caplog.set_level(logging.WARNING)
  info = Dataset(_config(tiny_folder, cache=False)).info
  assert info == DatasetInfo(num_classes=3, label_names=LABEL_NAMES,
                             num_train_examples=9, num_eval_examples=7)
  skipped = folder.load_split(_config(tiny_folder, cache=False), "train").skipped
  assert sorted(pathlib.Path(p).name for p in skipped) == ["broken.jpg", "empty.jpg", "notes.txt"]
  assert "skipped 3 unreadable" in caplog.text and "broken.jpg" in caplog.text
  for cache in ("encoded", "decoded"):
    cached = folder.load_split(_config(tiny_folder, **CACHES[cache]), "train")
    assert (cached.num_examples, len(cached.skipped)) == (9, 3)
    assert sorted(pathlib.Path(p).name for p in cached.skipped) == sorted(
        pathlib.Path(p).name for p in skipped)


def test_folder_labels_match_tfds_imagenette(imagenette_dir):
  tfds = pytest.importorskip("tensorflow_datasets")
  names = tfds.builder("imagenette/160px-v2").info.features["label"].names
  assert folder.label_names(_config(imagenette_dir)) == tuple(names)


@pytest.mark.parametrize("cache", list(CACHES))
@pytest.mark.parametrize("image_dtype", ["float32", "bfloat16"])
def test_train_batches_shapes_dtypes_ranges_and_labels(tiny_folder, cache, image_dtype):
  dataset = Dataset(_config(tiny_folder, **CACHES[cache], image_dtype=image_dtype))
  batches = _take(dataset.train_batches(global_batch_size=6, seed=0), 4)
  for batch in batches:
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (6, RESOLUTION, RESOLUTION, 3)
    assert str(batch["image"].dtype) == image_dtype
    assert batch["label"].dtype == np.int32
    image = batch["image"].astype(np.float32)
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert [_class_of(im) for im in image] == batch["label"].tolist()
  # 24 examples over 9 images: every image of an epoch appears once before any repeats.
  labels = np.concatenate([b["label"] for b in batches])[:9]
  assert np.bincount(labels, minlength=3).tolist() == [3, 3, 3]


@pytest.mark.parametrize("cache", list(CACHES))
def test_train_batches_depend_only_on_seed_and_step(tiny_folder, cache):
  dataset = Dataset(_config(tiny_folder, **CACHES[cache]))
  uninterrupted = _take(dataset.train_batches(global_batch_size=4, seed=7), 6)
  resumed = _take(dataset.train_batches(global_batch_size=4, seed=7, start_step=3), 3)
  for a, b in zip(uninterrupted[3:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  other_seed = _take(dataset.train_batches(global_batch_size=4, seed=8), 1)[0]
  assert not np.array_equal(other_seed["image"], uninterrupted[0]["image"])
  # Successive epochs differ in order and in crops.
  assert not np.array_equal(uninterrupted[0]["image"], uninterrupted[5]["image"])


def test_resume_far_ahead_decodes_nothing_skipped(tiny_folder):
  """Step 10^12 would take forever if the skipped examples were read."""
  dataset = Dataset(_config(tiny_folder, cache=False))
  batch = next(dataset.train_batches(global_batch_size=4, seed=0, start_step=10**12))
  assert batch["image"].shape == (4, RESOLUTION, RESOLUTION, 3)


@pytest.mark.parametrize("cache", list(CACHES))
def test_process_slices_make_up_the_global_batch(tiny_folder, cache):
  config = _config(tiny_folder, **CACHES[cache])
  whole = _take(Dataset(config, process_index=0, process_count=1).train_batches(
      global_batch_size=6, seed=3, start_step=2), 3)
  halves = [_take(Dataset(config, process_index=p, process_count=2).train_batches(
      global_batch_size=6, seed=3, start_step=2), 3) for p in range(2)]
  for step, batch in enumerate(whole):
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          batch[key], np.concatenate([halves[0][step][key], halves[1][step][key]]))


def _eval_examples(config, global_batch_size, process_count):
  """Eval batches of every process, stitched back into global order; checks padding on the way."""
  datasets = [Dataset(config, process_index=p, process_count=process_count)
              for p in range(process_count)]
  per_process = [list(dataset.eval_batches(global_batch_size=global_batch_size))
                 for dataset in datasets]
  expected_batches = datasets[0].num_eval_batches(global_batch_size)
  assert [len(batches) for batches in per_process] == [expected_batches] * process_count
  images, labels = [], []
  for step in range(expected_batches):
    for batches in per_process:
      batch = batches[step]
      assert batch["mask"].dtype == bool
      assert batch["image"].shape[0] == global_batch_size // process_count
      assert not batch["image"][~batch["mask"]].any()  # padding is blank
      images += list(batch["image"][batch["mask"]])
      labels += list(batch["label"][batch["mask"]])
  return np.stack(images), np.array(labels)


@pytest.mark.parametrize("cache", list(CACHES))
def test_eval_sees_every_example_once_with_padding(tiny_folder, cache):
  config = _config(tiny_folder, **CACHES[cache])
  reference_images, reference_labels = _eval_examples(config, 1, 1)
  assert reference_labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
  assert [_class_of(im) for im in reference_images] == reference_labels.tolist()
  for global_batch_size, process_count in ((4, 1), (4, 2), (6, 2), (16, 2)):
    images, labels = _eval_examples(config, global_batch_size, process_count)
    np.testing.assert_array_equal(labels, reference_labels)
    np.testing.assert_array_equal(images, reference_images)


def test_eval_is_a_central_crop(tmp_path):
  """A 100x60 image whose centre square is white and the rest black: the crop shows mostly white."""
  pixels = np.zeros((100, 60, 3), np.uint8)
  pixels[20:80] = 255
  for split in ("train", "val"):
    (tmp_path / split / "only").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / split / "only" / "x.png")
  batch = next(Dataset(_config(tmp_path, crop_fraction=1.0)).eval_batches(global_batch_size=1))
  np.testing.assert_allclose(batch["image"], 1.0)


def test_corrupt_file_is_an_error_when_asked(tiny_folder):
  with pytest.raises(errors.DataError, match=r"unreadable image file .*broken\.jpg"):
    Dataset(_config(tiny_folder, on_corrupt="error")).info


def test_missing_split_and_empty_class_folder_name_the_path(tmp_path):
  for root in (tmp_path / "no_val", tmp_path / "empty_class"):
    (root / "train" / "ant").mkdir(parents=True)
    _picture((1, 2, 3), 8, 8).save(root / "train" / "ant" / "a.png")
  with pytest.raises(errors.DataError, match=f"no folder {tmp_path / 'no_val' / 'val'}"):
    Dataset(_config(tmp_path / "no_val")).info
  (tmp_path / "empty_class" / "train" / "bee").mkdir()
  empty = tmp_path / "empty_class" / "train" / "bee"
  with pytest.raises(errors.DataError, match=f"class folder {empty} is empty"):
    Dataset(_config(tmp_path / "empty_class")).info


def test_missing_eval_split_is_named_before_any_image_is_decoded(tmp_path, monkeypatch):
  root = write_varied_image_folder(tmp_path / "images")
  (root / "val").rename(root / "test")
  def no_decoding(*args, **kwargs):
    raise AssertionError("an image was decoded before the layout was checked")
  monkeypatch.setattr(decode, "decode_all", no_decoding)
  monkeypatch.setattr(decode, "check_all", no_decoding)
  for cache in (True, False):
    for check in (Dataset.check_layout, lambda dataset: dataset.info):
      with pytest.raises(errors.DataError) as error:
        check(Dataset(_config(root, cache=cache)))
      assert str(error.value) == (f"data.eval_split='val': no folder {root / 'val'} "
                                  f"({root} holds test, train)")


@pytest.fixture(scope="module")
def varied_folder(tmp_path_factory) -> pathlib.Path:
  return write_varied_image_folder(tmp_path_factory.mktemp("varied"))


@pytest.mark.parametrize("cache", list(CACHES))
def test_images_of_any_size_aspect_and_mode_feed_training_and_eval(varied_folder, cache):
  config = _config(varied_folder, **CACHES[cache], resolution=48)
  dataset = Dataset(config)
  info = dataset.info
  assert (info.num_train_examples, info.num_eval_examples) == (3 * len(VARIED_IMAGES), 6)
  for batch in _take(dataset.train_batches(global_batch_size=8, seed=0), 4):
    assert batch["image"].shape == (8, 48, 48, 3)
    assert np.isfinite(batch["image"]).all() and -1 <= batch["image"].min() <= 1
  images, labels = _eval_examples(config, 4, 1)
  assert images.shape == (6, 48, 48, 3) and sorted(labels) == [0, 0, 1, 1, 2, 2]
  assert [_class_of(image) for image in images] == list(labels)


def test_cached_images_are_the_decoded_files_whatever_their_sizes(varied_folder):
  split = folder.load_split(_config(varied_folder, **CACHES["decoded"]), "train")
  full = lambda height, width: (0, 0, height, width)
  first_of_each_size = [split.read_window(i, full)[0].numpy() for i in range(len(VARIED_IMAGES))]
  files = sorted((varied_folder / "train" / "ant").iterdir())
  for image, path in zip(first_of_each_size, files):
    expected = np.asarray(Image.open(path).convert("RGB")) if "I;16" not in Image.open(path).mode \
        else None
    height, width, _, _ = VARIED_IMAGES[files.index(path)]
    assert image.shape == (height, width, 3)
    if expected is not None and path.suffix == ".png":  # lossless: the very pixels
      np.testing.assert_array_equal(image, expected)


def test_cache_that_would_not_fit_in_memory_streams_instead_with_one_line(varied_folder,
                                                                          monkeypatch, caplog,
                                                                          capsys):
  monkeypatch.setattr(decode, "available_memory_bytes", lambda: 10 * 2**20)  # decoded: ~30 MiB
  caplog.set_level(logging.INFO)
  split = folder.load_split(_config(varied_folder, **CACHES["decoded"]), "train")
  assert split.num_examples == 3 * len(VARIED_IMAGES)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  total = sum(h * w * 3 for h, w, _, _ in VARIED_IMAGES) * 3
  assert f"decoding 24 images needs {total / 2**20:.1f} MiB, more than 50% of the 10.0 MiB of " \
         "memory available" in warnings[0]
  assert "reading the images from their files" in warnings[0]
  assert "decoded into" not in capsys.readouterr().out


def test_cache_states_its_memory_on_the_console_and_how_to_turn_it_off(varied_folder, capsys):
  folder.load_split(_config(varied_folder, **CACHES["decoded"]), "val")
  total = sum(h * w * 3 for h, w, _, _ in VARIED_IMAGES[:2]) * 3
  lines = [line for line in capsys.readouterr().out.splitlines() if "decoded into" in line]
  assert len(lines) == 1
  assert f"6 images decoded into {total / 2**20:.1f} MiB of memory" in lines[0]
  assert "--config.data.cache_decoded=False keeps their encoded files instead" in lines[0]
  assert lines[0].endswith("--config.data.cache=False reads them from their files instead)")


def test_encoded_cache_states_the_bytes_it_holds_on_the_console(varied_folder, capsys):
  folder.load_split(_config(varied_folder), "val")  # the default: data.cache=True
  files = sum(path.stat().st_size for path in (varied_folder / "val").rglob("*.*"))
  lines = [line for line in capsys.readouterr().out.splitlines() if "images kept" in line]
  assert len(lines) == 1
  assert lines[0].startswith(f"{varied_folder / 'val'}: 6 images kept in memory as their encoded "
                             f"files, {files / 2**20:.1f} MiB, read in ")
  assert "each image is decoded as it is read" in lines[0]
  assert "--config.data.cache_decoded=True holds their decoded pixels instead" in lines[0]
  assert lines[0].endswith("--config.data.cache=False reads them from their files)")


def test_encoded_cache_that_would_not_fit_in_memory_streams_instead_with_one_line(
    varied_folder, monkeypatch, caplog, capsys):
  monkeypatch.setattr(decode, "available_memory_bytes", lambda: 2**20)
  caplog.set_level(logging.INFO)
  split = folder.load_split(_config(varied_folder), "train")
  assert split.num_examples == 3 * len(VARIED_IMAGES)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "keeping the encoded images needs" in warnings[0]
  assert "more than 50% of the 1.0 MiB of memory available" in warnings[0]
  assert "images kept" not in capsys.readouterr().out


def _batches(config, *, seed, start_step, num_batches, global_batch_size=8):
  dataset = Dataset(config)
  train = _take(dataset.train_batches(global_batch_size=global_batch_size, seed=seed,
                                      start_step=start_step), num_batches)
  return train, list(dataset.eval_batches(global_batch_size=global_batch_size))


def _assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert set(a) == set(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
      assert a[key].dtype == b[key].dtype


@pytest.mark.parametrize("image_dtype", ["float32", "bfloat16"])
def test_encoded_cache_gives_the_decoded_caches_batches_bit_for_bit(varied_folder, image_dtype):
  """The default cache holds the files' bytes and decodes each image whole, then crops: the
  decoded cache's batches (what runs trained on before), bit for bit, for a fixed seed and step,
  on JPEGs and PNGs of every size and mode (crops at the 1200x1600 JPEG's chroma boundaries
  included, where decoding only the window differs by a few levels)."""
  settings = dict(resolution=48, image_dtype=image_dtype)
  encoded = _batches(_config(varied_folder, **CACHES["encoded"], **settings),
                     seed=5, start_step=7, num_batches=6)
  uncached = _batches(_config(varied_folder, **CACHES["decoded"], **settings),
                      seed=5, start_step=7, num_batches=6)
  for cached_batches, reference in zip(encoded, uncached):
    _assert_same_batches(cached_batches, reference)
  # Resumed at step 7 or reached from step 0: still the same batches.
  from_start = _batches(_config(varied_folder, **CACHES["encoded"], **settings),
                        seed=5, start_step=0, num_batches=13)[0][7:]
  _assert_same_batches(from_start, uncached[0])


def test_encoded_cache_reads_the_bytes_once_and_never_the_files_again(varied_folder, tmp_path):
  import shutil
  root = shutil.copytree(varied_folder, tmp_path / "copy")
  dataset = Dataset(_config(root, resolution=48))
  reference = _take(dataset.train_batches(global_batch_size=8, seed=0), 4)
  shutil.rmtree(root / "train")  # what the cache holds, it holds
  batches = _take(dataset.train_batches(global_batch_size=8, seed=0), 4)
  _assert_same_batches(batches, reference)


def test_config_saved_before_cache_decoded_existed_loads_with_the_encoded_cache():
  from mobilenet import defaults, protocol
  config = defaults.from_saved({"data": {"cache": True, "folder": "/x"}})
  assert config.data.cache is True and config.data.cache_decoded is False
  assert splits.cache_kind(config.data) == "encoded"
  assert splits.cache_kind(defaults.from_saved({"data": {"cache": False}}).data) is None
  assert splits.cache_kind(defaults.from_saved(
      {"data": {"cache": True, "cache_decoded": True}}).data) == "decoded"
  assert "data.cache_decoded" in protocol.BOOKKEEPING_FIELDS  # a run's results do not depend on it


def test_class_missing_from_eval_split_names_the_path(tmp_path):
  for split, name in (("train", "ant"), ("train", "bee"), ("val", "ant")):
    (tmp_path / split / name).mkdir(parents=True)
    _picture((1, 2, 3), 8, 8).save(tmp_path / split / name / "a.png")
  with pytest.raises(errors.DataError,
                     match=f"class folder {tmp_path / 'val' / 'bee'} is missing"):
    Dataset(_config(tmp_path)).info


@pytest.mark.parametrize("field, value", [
    ("source", "s3"), ("image_dtype", "float16"), ("on_corrupt", "ignore"),
    ("crop_fraction", 0.0), ("min_area", 2.0), ("max_aspect_ratio", 0.5), ("resolution", 0),
])
def test_bad_config_values_name_the_field(tiny_folder, field, value):
  with pytest.raises(errors.ConfigError, match=f"data.{field}"):
    Dataset(_config(tiny_folder, **{field: value}))


def test_missing_folder_is_named_before_anything_is_read():
  with pytest.raises(errors.ConfigError,
                     match="^config.data.folder: no such directory: /no/such/folder$"):
    Dataset(_config("/no/such/folder"))


def test_unknown_tfds_name_is_one_line():
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(errors.ConfigError) as raised:
    check_config(_tfds_config(tfds_name="no_such_dataset"))
  assert str(raised.value).startswith("config.data.tfds_name='no_such_dataset': ")
  assert "\n" not in str(raised.value)


def test_each_split_is_loaded_once_per_dataset(tiny_folder, monkeypatch):
  """.info, then the batches, decode each split once; another Dataset loads its own."""
  loaded = []
  load_split = folder.load_split
  def counted(data_config, split):
    loaded.append(split)
    return load_split(data_config, split)
  monkeypatch.setattr(folder, "load_split", counted)
  dataset = Dataset(_config(tiny_folder))
  assert dataset.info.num_train_examples == 9
  next(dataset.train_batches(global_batch_size=3, seed=0))
  next(dataset.eval_batches(global_batch_size=3))
  assert dataset.num_eval_batches(3) == 3
  assert loaded == ["train", "val"]
  Dataset(_config(tiny_folder)).num_eval_batches(3)
  assert loaded == ["train", "val", "val"]


def test_batch_must_divide_over_processes(tiny_folder):
  with pytest.raises(errors.ConfigError, match="global_batch_size=5 .* process_count=2"):
    Dataset(_config(tiny_folder), process_index=0, process_count=2).train_batches(
        global_batch_size=5, seed=0)
  with pytest.raises(ValueError, match="process_index=2"):
    Dataset(_config(tiny_folder), process_index=2, process_count=2).eval_batches(
        global_batch_size=4)


# ----------------------------------------------------------------------------- tfds source

NUM_MOCK_EXAMPLES = 10


@pytest.fixture
def mock_tfds(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  # mock_data fakes the download, so whether the real hosts answer is beside the point.
  monkeypatch.setattr(tfds_source, "check_download_hosts_reachable", lambda *args: None)
  with tfds.testing.mock_data(num_examples=NUM_MOCK_EXAMPLES):
    yield tfds


def _tfds_config(**overrides):
  settings = dict(source="tfds", tfds_name="imagenette/160px-v2", data_dir="/nonexistent",
                  shuffle_buffer=4)
  return _config("", **{**settings, **overrides})


def test_tfds_info_has_the_dataset_label_names(mock_tfds):
  info = Dataset(_tfds_config()).info
  assert info.num_classes == 10
  assert info.label_names[:2] == ("n01440764", "n02102040")
  assert (info.num_train_examples, info.num_eval_examples) == (NUM_MOCK_EXAMPLES, NUM_MOCK_EXAMPLES)


@pytest.mark.parametrize("access", ["cache", "decoded_cache", "stream", "random_access"])
def test_tfds_train_batches_are_resumable_and_split_over_processes(mock_tfds, monkeypatch, access):
  monkeypatch.setattr(tfds_source, "has_random_access", lambda builder: access == "random_access")
  config = _tfds_config(cache=access.endswith("cache"), cache_decoded=access == "decoded_cache")
  whole = _take(Dataset(config).train_batches(global_batch_size=4, seed=1), 6)
  for batch in whole:
    assert batch["image"].shape == (4, RESOLUTION, RESOLUTION, 3)
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert ((0 <= batch["label"]) & (batch["label"] < 10)).all()
  resumed = _take(Dataset(config, process_index=1, process_count=2).train_batches(
      global_batch_size=4, seed=1, start_step=4), 2)
  for a, b in zip(whole[4:], resumed):
    np.testing.assert_array_equal(a["image"][2:], b["image"])
    np.testing.assert_array_equal(a["label"][2:], b["label"])


@pytest.mark.parametrize("access", ["cache", "decoded_cache", "stream", "random_access"])
def test_tfds_eval_sees_every_example_once(mock_tfds, monkeypatch, access):
  monkeypatch.setattr(tfds_source, "has_random_access", lambda builder: access == "random_access")
  config = _tfds_config(cache=access.endswith("cache"), cache_decoded=access == "decoded_cache")
  reference_images, reference_labels = _eval_examples(config, 1, 1)
  assert len(reference_labels) == NUM_MOCK_EXAMPLES
  images, labels = _eval_examples(config, 4, 2)
  np.testing.assert_array_equal(labels, reference_labels)
  np.testing.assert_array_equal(images, reference_images)


@pytest.fixture
def offline(monkeypatch):
  """Name resolution fails, as on a machine without internet."""
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("importlib_resources", reason="tfds downloads need importlib_resources")

  def no_network(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
  monkeypatch.setattr(socket, "getaddrinfo", no_network)


def _encoded(image, fmt) -> bytes:
  import io
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.mark.parametrize("cache", list(CACHES))
def test_tfds_images_of_any_size_feed_training_and_eval(monkeypatch, cache):
  tfds = pytest.importorskip("tensorflow_datasets")
  import tensorflow as tf
  rng = np.random.default_rng(0)
  records = [(_encoded(varied_image(h, w, mode, (200, 30, 30), rng), fmt), i % 10)
             for i, (h, w, mode, fmt) in enumerate(VARIED_IMAGES)]

  def as_dataset(self, split, **kwargs):
    del self, split, kwargs
    images, labels = zip(*records)
    return tf.data.Dataset.from_tensor_slices({"image": list(images), "label": list(labels)})

  monkeypatch.setattr(tfds_source, "check_download_hosts_reachable", lambda *args: None)
  monkeypatch.setattr(tfds_source, "has_random_access", lambda builder: False)
  monkeypatch.setattr(tfds_source, "count_examples", lambda *args: len(records))
  with tfds.testing.mock_data(num_examples=len(records), as_dataset_fn=as_dataset):
    config = _tfds_config(**CACHES[cache])
    dataset = Dataset(config)
    assert dataset.info.num_train_examples == len(records)
    for batch in _take(dataset.train_batches(global_batch_size=4, seed=0), 3):
      assert batch["image"].shape == (4, RESOLUTION, RESOLUTION, 3)
      assert np.isfinite(batch["image"]).all()
    _, labels = _eval_examples(config, 4, 1)
    assert list(labels) == [label for _, label in records]


def _assert_offline_advice(config):
  with pytest.raises(errors.DataSourceUnavailableError) as raised:
    Dataset(config).info
  message = str(raised.value)
  assert "imagenette/160px-v2" in message and "network is unreachable" in message
  assert "--config.data.source=folder" in message and "--config.data.data_dir=" in message
  assert raised.value.__suppress_context__  # one paragraph, not a chain of tracebacks


def test_tfds_offline_fails_fast_with_advice(tmp_path, offline):
  _assert_offline_advice(_tfds_config(data_dir=str(tmp_path)))


def test_tfds_offline_download_failure_gets_the_same_advice(tmp_path, offline, monkeypatch):
  """Past the quick check (say DNS works but the download does not), tfds' own error is translated."""
  from tensorflow_datasets.core.download import downloader
  monkeypatch.setattr(tfds_source, "check_download_hosts_reachable", lambda *args: None)
  monkeypatch.setattr(downloader, "MAX_RETRIES", 0)  # tfds would back off for minutes
  _assert_offline_advice(_tfds_config(data_dir=str(tmp_path)))


def test_sliced_folder_splits_hold_out_a_disjoint_share_of_every_class(tmp_path):
  from tests.conftest import write_image_folder
  root = write_image_folder(tmp_path / "images", train_per_class=10)
  tuning = folder.load_split(_config(root, cache=False), "train[:80%]")
  held_out = folder.load_split(_config(root, cache=False), "train[80%:]")
  assert (tuning.num_examples, held_out.num_examples) == (24, 6)
  dataset = Dataset(_config(root, train_split="train[:80%]", eval_split="train[80%:]"))
  info = dataset.info
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (3, 24, 6)
  labels = np.concatenate([b["label"][b["mask"]] for b in dataset.eval_batches(
      global_batch_size=4)])
  assert np.bincount(labels).tolist() == [2, 2, 2]
  with pytest.raises(errors.ConfigError, match="train\\[90"):
    Dataset(_config(root, eval_split="train[90%:10%]"))


def test_pipeline_benchmark_reports_the_load_and_the_steady_state(tiny_folder):
  lines = []
  figures = data_benchmark.benchmark(_config(tiny_folder), global_batch_size=3, num_batches=2,
                                     warmup_batches=1, print_fn=lines.append)
  assert set(figures) == {"load_images_per_s", "images_per_s", "cpu_ms_per_image"}
  assert all(value > 0 for value in figures.values())
  assert lines[0].startswith("loaded 9 train images (kept encoded in memory) in ")
  assert lines[1].startswith(f"train pipeline, {RESOLUTION} px, batch 3, float32: ")


def test_pipeline_benchmark_compares_the_caches_in_alternating_rounds(tiny_folder):
  lines = []
  figures = data_benchmark.compare_caches(_config(tiny_folder), global_batch_size=3,
                                          num_batches=2, rounds=2, warmup_batches=1,
                                          print_fn=lines.append)
  assert set(figures) == {"encoded", "decoded", "none"} and len(lines) == 3
  assert figures["decoded"]["cpu_ratio_to_decoded"] == 1.0
  assert all(len(figure["cpu_ms_rounds"]) == 2 for figure in figures.values())
