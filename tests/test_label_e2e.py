"""From an SFT workdir to labelled preferences, through the script's modes, into the data
pipeline's preference records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from label_helpers import read_jsonl

from llm.config import load_config


@pytest.mark.slow
def test_sft_model_to_candidates_ai_and_verifier_labels_to_prepared_pairs(tmp_path):
    from test_sft import sft_config, write_copy_task

    from llm.data import loaders
    from llm.data.prepare import prepare
    from llm.label import modes
    from llm.train.loop import train

    data, held_out = write_copy_task(tmp_path, n_train=200, n_eval=20)
    run = tmp_path / "run"
    train(sft_config(run, data, held_out, "total_steps=2", "eval.every_steps=0",
                     "checkpoint.every_steps=2"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"repeat: {w}", "answer": w}) + "\n"
                               for w in ("red blue", "green red", "blue blue", "red red")))
    out = tmp_path / "labels"
    flags = [f"output_dir={out}", "max_new_tokens=6", "label.num_responses=3",
             "label.batch_size=2"]
    modes.run(load_config("configs/label.py", ["mode=sample", f"init_from={run}",
                                               f"prompts_file={prompts}", *flags]))
    cands = read_jsonl(out / "candidates.jsonl")
    assert [len(c["responses"]) for c in cands] == [3, 3, 3, 3]
    principles = tmp_path / "principles.txt"
    principles.write_text("choose the answer that repeats the words exactly\n")
    ai = modes.run(load_config("configs/label.py", [
        "mode=ai", f"label.judge={run}", f"label.principles={principles}",
        "label.min_confidence=0.0", *flags]))
    (judge,) = [j for j in ai["judges"] if j.startswith("ai:")]
    counts = ai["judges"][judge]
    # every pair of 3 answers of 4 prompts is decided or skipped (identical answers)
    assert counts["pairs"] + sum(counts["skips"].values()) == 4 * 3
    modes.run(load_config("configs/label.py", ["mode=verifier", "label.verifier=exact",
                                               *flags]))
    rows = modes.run(load_config("configs/label.py", ["mode=agreement", *flags]))
    assert all(r["judge_a"] == judge and r["judge_b"] == "verifier:exact" for r in rows)
    prefs = read_jsonl(out / "preferences.jsonl")
    assert {r["principle"] for r in prefs if r["judge"] == judge} == {
        "choose the answer that repeats the words exactly"}
    paired = [r for r in prefs if "chosen" in r]
    unpaired = [r for r in prefs if "outcome" in r]

    # The data pipeline reads the file as written: pairs become records, the rest are counted.
    data_cfg = load_config("configs/data.py", [
        f"inputs={out / 'preferences.jsonl'}", f"output_dir={tmp_path / 'prepared'}",
        f"tokenizer.path={run / 'tokenizer'}", "num_workers=0", "split.validation=0.0",
        "dedup.exact=False", "dedup.near=False", "clean.enabled=False"])
    prepared = prepare(data_cfg)
    report = json.loads((prepared / "report.json").read_text())
    assert report["splits"]["train"]["chosen"]["documents"] == len(paired)
    skips = sum(r["outcome"] == "skip" for r in unpaired)
    assert report["bad_records"].get("preference_skip", 0) == skips
    batch = next(iter(loaders.preference_loader(prepared, "train", 64, 2, 0, 1)))
    assert batch["chosen_tokens"].shape[0] == 2


@pytest.mark.slow
def test_script_reports_bad_input_in_one_line(tmp_path):
    empty = tmp_path / "principles.txt"
    empty.write_text("")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "candidates.jsonl").write_text(
        '{"id": "a", "prompt": "q", "responses": ["x", "y"]}\n')
    proc = subprocess.run(
        [sys.executable, "scripts/label.py", "--config=configs/label.py", "--config.mode=ai",
         f"--config.output_dir={tmp_path / 'labels'}", f"--config.label.principles={empty}",
         "--config.label.judge=/nowhere"], capture_output=True, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {empty}: holds no principles (expected one per line)"]
