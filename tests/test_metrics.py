"""Training time adds up over the sessions of a resumed run."""
import json

import pytest

from mobilenet import metrics


def test_training_seconds_count_redone_steps_once_and_skip_evaluation(tmp_path):
  records = [
      {"step": 20, "kind": "train", "step_time_s": 1.0, "steps": 20},
      {"step": 40, "kind": "train", "step_time_s": 1.0, "steps": 20},
      {"step": 40, "kind": "eval", "top1": 0.5},
      {"step": 60, "kind": "train", "step_time_s": 2.0, "steps": 20},  # killed after this
      # resumed from the checkpoint of step 40: steps 41-60 again, then on
      {"step": 60, "kind": "train", "step_time_s": 1.5, "steps": 20},
      {"step": 70, "kind": "train", "step_time_s": 1.0, "steps": 10},
  ]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  assert metrics.training_seconds(str(tmp_path)) == pytest.approx(20 + 20 + 30 + 10)


def test_training_seconds_of_records_without_step_counts_use_the_gap(tmp_path):
  records = [{"step": 10, "kind": "train", "step_time_s": 1.0},
             {"step": 30, "kind": "train", "step_time_s": 0.5}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  assert metrics.training_seconds(str(tmp_path)) == pytest.approx(10 + 10)
