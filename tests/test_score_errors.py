"""Bad input to the scorer: one clear error naming the file, line and key."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llm import scoring


def test_row_without_response_names_file_line_and_key(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n"
                    + json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl line 2: expected a string 'rejected'"):
        scoring.read_rows(str(path))


def test_init_from_without_score_head_is_one_error(tmp_path):
    step = tmp_path / "sft_run" / "checkpoints" / "5"
    (step / "state").mkdir(parents=True)
    (tmp_path / "sft_run" / "config.json").write_text(json.dumps({"task": "sft"}))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    proc = subprocess.run(
        [sys.executable, "scripts/score.py", "--config=configs/score.py",
         f"--config.init_from={tmp_path / 'sft_run'}", f"--config.input_file={rows}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "config.json is a 'sft' run with no score head" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hf_model_without_classification_head_is_one_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="no \\*ForSequenceClassification score head"):
        scoring.check_reward_model(f"hf:{tmp_path}")
