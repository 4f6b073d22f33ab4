"""Reward model: learns a rule from pairs, scores rows through the Python scorer and
scripts/score.py, and loads back (full and LoRA) with its score head."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from llm.config import load_config
from llm.train.loop import train

WARM = "red orange gold amber coral rose peach ruby crimson copper".split()
COLD = "blue teal navy cyan azure slate ice indigo cobalt mint".split()


def write_rule_pairs(path, n=600, seed=0):
    """Chosen answers use warm colour words, rejected ones cold: a rule a scorer can learn."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            words = rng.sample(WARM, 3), rng.sample(COLD, 3)
            f.write(json.dumps({"prompt": f"name three colours ({i})",
                                "chosen": " ".join(words[0]),
                                "rejected": " ".join(words[1])}) + "\n")
    return path


def reward_config(workdir, data, *extra):
    return load_config("configs/reward.py:model=tiny", [
        f"workdir={workdir}", f"data.path={data}", "data.tokenizer.vocab_size=300",
        "data.split.validation=0.1", "data.num_workers=0", "batch_size=16", "seq_len=64",
        "total_steps=120", "optim.lr=1e-3", "optim.warmup_steps=10", "eval.every_steps=120",
        "eval.steps=4", "log.every_steps=40", "checkpoint.every_steps=120",
        "mesh.shape={'data': 8}", *extra])


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward")
    data = write_rule_pairs(root / "pairs.jsonl")
    return root / "run", train(reward_config(root / "run", data)), data


@pytest.mark.slow
def test_reward_model_learns_a_rule(reward_run):
    _, result, _ = reward_run
    # 120 steps x 16 pairs from scratch: held-out pairs (the validation split) ranked right.
    assert result["eval_accuracy"] >= 0.9, result
    assert result["eval_margin"] > 0


@pytest.mark.slow
def test_scorer_ranks_held_out_rows(reward_run):
    from llm.scoring import Scorer

    workdir, _, _ = reward_run
    scorer = Scorer.load(str(workdir), seq_len=64, batch_size=8)
    rng = random.Random(7)
    warm = [" ".join(rng.sample(WARM, 3)) for _ in range(10)]
    cold = [" ".join(rng.sample(COLD, 3)) for _ in range(10)]
    prompts = [f"name three colours ({1000 + i})" for i in range(10)]
    good, bad = scorer.score(prompts, warm), scorer.score(prompts, cold)
    assert np.mean(np.greater(good, bad)) >= 0.9


@pytest.mark.slow
def test_score_script_writes_scores_and_refuses_overwrite(reward_run, tmp_path):
    import subprocess
    import sys

    workdir, _, _ = reward_run
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "name three colours (9000)",
                                "response": "red gold ruby"}) + "\n"
                    + json.dumps({"prompt": "name three colours (9001)",
                                  "chosen": "coral rose peach", "rejected": "ice mint navy"})
                    + "\n")
    out = tmp_path / "scored.jsonl"
    command = [sys.executable, "scripts/score.py", "--config=configs/score.py",
               f"--config.init_from={workdir}", f"--config.input_file={rows}",
               f"--config.output_file={out}", "--config.seq_len=64", "--config.batch_size=8"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert isinstance(scored[0]["score"], float)
    assert scored[1]["chosen_score"] > scored[1]["rejected_score"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "never overwritten" in again.stderr


@pytest.mark.slow
def test_lora_reward_model_loads_with_its_trained_head(tmp_path):
    """load_model of a LoRA-trained reward run restores the adapters and the trained score
    head (the base comes from the run's init_from), so the scorer ranks as training did."""
    from llm.scoring import Scorer

    data = write_rule_pairs(tmp_path / "pairs.jsonl")
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": row["prompt"]},
        {"role": "assistant", "content": row["chosen"]}]}) + "\n"
        for row in map(json.loads, data.read_text().splitlines())))
    base = tmp_path / "base"
    train(load_config("configs/sft.py:model=tiny", [
        f"workdir={base}", f"data.path={chat}", "data.tokenizer.vocab_size=300",
        "data.num_workers=0", "batch_size=16", "seq_len=64", "total_steps=2",
        "eval.every_steps=0", "checkpoint.every_steps=2", "mesh.shape={'data': 8}"]))
    run = tmp_path / "lora"
    config = reward_config(run, data, f"init_from={base}", "total_steps=80",
                           "optim.lr=3e-3", "eval.every_steps=80", "checkpoint.every_steps=80")
    config.peft.method = "lora"
    result = train(config)
    scorer = Scorer.load(str(run), seq_len=64, batch_size=8)
    rng = random.Random(3)
    prompts = [f"name three colours ({2000 + i})" for i in range(10)]
    good = scorer.score(prompts, [" ".join(rng.sample(WARM, 3)) for _ in range(10)])
    bad = scorer.score(prompts, [" ".join(rng.sample(COLD, 3)) for _ in range(10)])
    # A fresh (untrained) head would score near zero margin; the loaded one ranks as the
    # run's held-out evaluation measured.
    assert result["eval_accuracy"] >= 0.8, result
    assert np.mean(np.subtract(good, bad)) > 0.5 * result["eval_margin"] > 0
    assert np.mean(np.greater(good, bad)) >= 0.8


@pytest.mark.slow
def test_export_as_sequence_classifier_scores_as_transformers(reward_run, tmp_path):
    import subprocess
    import sys

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from llm.scoring import Scorer

    workdir, _, _ = reward_run
    out = tmp_path / "hf_rm"
    proc = subprocess.run([sys.executable, "scripts/convert_hf.py", "--mode=export",
                           f"--checkpoint={workdir}", f"--hf_dir={out}", "--dtype=float32"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["num_labels"] == 1 and config["pad_token_id"] != config["eos_token_id"]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    scorer = Scorer.load(str(workdir), seq_len=64, batch_size=8)
    rows = [scorer.encode(f"name three colours ({i})", " ".join(WARM[i:i + 3]))
            for i in range(4)]
    ids = np.full((4, max(map(len, rows))), config["pad_token_id"], np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(ids),
                       attention_mask=torch.tensor(ids != config["pad_token_id"])).logits
    np.testing.assert_allclose(scorer.score_ids(rows), theirs[:, 0].numpy(), atol=1e-4)
    # and back: the export imports as a reward model that scores the same
    again = Scorer.load(f"hf:{out}", seq_len=64, batch_size=8)
    np.testing.assert_allclose(again.score_ids(rows), scorer.score_ids(rows), atol=1e-5)
