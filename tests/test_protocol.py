"""The one rule of which configs are the same run: resume, stale check and report all use it."""
import json

from configs import dws
from mobilenet import cli, protocol


def _saved(config) -> dict:
  return json.loads(config.to_json_best_effort())  # as config.json and checkpoints store it


def test_run_identity_names_the_dataset_and_leaves_out_where_it_lies():
  first, moved, other = dws.get_config(), dws.get_config(), dws.get_config()
  moved.data.folder = "/elsewhere/imagenette2-224/"
  other.data.folder = "/data/dogs-320"
  assert protocol.run_identity(_saved(first)) == protocol.run_identity(_saved(moved))
  assert protocol.differing_fields(protocol.run_identity(_saved(first)),
                                   protocol.run_identity(_saved(other))) == ["dataset"]
  tfds = dws.get_config()
  tfds.data.source, tfds.data.tfds_name = "tfds", "imagenette/160px-v2"
  assert protocol.run_identity(_saved(tfds))["dataset"] == "imagenette"


def test_recipe_length_and_seed_differ_but_bookkeeping_and_new_fields_do_not():
  base = _saved(dws.get_config())
  changed = _saved(dws.get_config("lr=0.4,epochs=40,seed=1"))
  changed["model"]["depthwise_impl"] = "grouped"
  changed["train"]["log_every_steps"] = 1
  changed["model"]["added_later"] = "x"  # a field older runs lack is not a difference
  assert protocol.differing_fields(protocol.run_identity(base), protocol.run_identity(changed)) == [
      "seed", "train.num_epochs", "optimizer.learning_rate"]
  assert "seed" not in protocol.settings(base, ignoring=(protocol.SEED_FIELD,))


def test_default_workdir_names_the_dataset_so_two_datasets_never_share_one():
  imagenette, dogs = dws.get_config(), dws.get_config()
  imagenette.data.folder = "../shared/data/imagenette2-224"
  dogs.data.folder = "/data/dogs-320"
  assert cli.default_workdir(imagenette) == "runs/imagenette2-224/dws_a1_r128_s0"
  assert cli.default_workdir(dogs) == "runs/dogs-320/dws_a1_r128_s0"
