"""eval_results.json: what its writers keep of each other's keys, and what its readers refuse."""
import json

import pytest

from mobilenet import results


def _record(**changes) -> dict:
  return {"top1": 0.7, "top5": 0.95, "params": 2_000_000, "mult_adds": 100_000_000,
          "variant": "dws", "alpha": 1.0, "resolution": 128, "dataset": "imagenette", "step": 10,
          "infer_images_per_s": 100.0, "device": "cpu", **changes}


def test_merge_keeps_every_key_and_refuses_a_broken_file(tmp_path):
  path = tmp_path / "eval_results.json"
  path.write_text(json.dumps({"top1": 0.5, "litert_fp32_ms": 9.0}))
  merged = results.merge(str(path), {"litert_fp32_ms": 1.5})
  assert merged == json.loads(path.read_text()) == {"top1": 0.5, "litert_fp32_ms": 1.5}
  path.write_text("{broken")
  with pytest.raises(results.ResultsError, match="is not valid JSON|not valid JSON"):
    results.merge(str(path), {"litert_fp32_ms": 1.5})


@pytest.mark.parametrize("changes, message", [
    ({"top1": 1.5}, "key 'top1' must be a fraction in [0, 1]"),
    ({"variant": "resnet"}, "key 'variant' must be one of dws, conv, shallow"),
    ({"step": True}, "key 'step' has the wrong type"),
    ({"mult_adds": 0}, "key 'mult_adds' must be > 0"),
])
def test_read_refuses_a_record_off_the_schema_naming_the_key(tmp_path, changes, message):
  path = tmp_path / "eval_results.json"
  path.write_text(json.dumps(_record(**changes)))
  with pytest.raises(results.ResultsError) as error:
    results.read(path)
  assert message in str(error.value) and str(error.value).startswith(str(path))


def test_a_missing_key_is_named(tmp_path):
  path = tmp_path / "eval_results.json"
  record = _record()
  del record["device"]
  path.write_text(json.dumps(record))
  with pytest.raises(results.ResultsError, match="missing key 'device'"):
    results.read(path)


def test_only_results_of_the_final_checkpoint_make_a_run_finished(tmp_path):
  """A run killed in its final evaluation has no eval_results.json, and eval.py --step=N of an
  earlier checkpoint writes one for that step: both must still be evaluated when rerun."""
  assert results.finished_run(str(tmp_path), 6, total_steps=6) is None
  (tmp_path / "eval_results.json").write_text(json.dumps({"step": 4, "top1": 0.5}))
  assert results.finished_run(str(tmp_path), 6, total_steps=6) is None
  assert results.finished_run(str(tmp_path), 4, total_steps=6) is None  # unfinished
  (tmp_path / "eval_results.json").write_text(json.dumps({"step": 6, "top1": 0.5}))
  assert results.finished_run(str(tmp_path), 6, total_steps=6)["top1"] == 0.5
  assert results.finished_run(str(tmp_path), None, total_steps=6) is None
