"""SFT: prompt tokens never count, a tiny model learns a toy instruction task, LoRA runs."""

import json
import random

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from llm.config import load_config
from llm.loading import load_model
from llm.model import ModelConfig, Transformer
from llm.train.loop import train
from llm.train.sft import SftTask

WORDS = "red blue green gold pink gray teal navy lime plum".split()


def write_copy_task(tmp_path, n_train=800, n_eval=100, seed=0):
    """'repeat: w1 w2 w3' → 'w1 w2 w3'; held-out prompts are combinations never trained on."""
    rng = random.Random(seed)
    combos = [tuple(rng.choice(WORDS) for _ in range(3)) for _ in range(4 * (n_train + n_eval))]
    combos = list(dict.fromkeys(combos))
    train_rows, eval_rows = combos[:n_train], combos[n_train: n_train + n_eval]
    chat = tmp_path / "copy.jsonl"
    chat.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": "repeat: " + " ".join(c)},
        {"role": "assistant", "content": " ".join(c)}]}) + "\n" for c in train_rows))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"prompt": "repeat: " + " ".join(c),
                                            "answer": " ".join(c)}) + "\n" for c in eval_rows))
    return chat, held_out


def sft_config(workdir, data, held_out, *extra):
    return load_config("configs/sft.py:model=tiny", [
        f"workdir={workdir}", f"data.path={data}", f"sft.eval_file={held_out}",
        "data.tokenizer.vocab_size=300", "data.split.validation=0.05", "batch_size=16",
        "seq_len=64", "total_steps=200", "optim.lr=3e-3", "optim.warmup_steps=10",
        "eval.every_steps=200", "eval.steps=2", "log.every_steps=25",
        "checkpoint.every_steps=200", "mesh.shape={'data': 8}", "sft.eval_examples=100",
        "sft.eval_max_new_tokens=12", *extra])


def test_prompt_token_labels_change_nothing():
    cfg = ModelConfig(vocab_size=200, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=24, d_ff=160, max_seq_len=64)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    tokens = np.random.default_rng(0).integers(0, 200, (2, 12)).astype(np.int32)
    mask = np.zeros((2, 12), np.float32)
    mask[:, 7:] = 1.0  # positions 0..6 are the prompt
    batch = {"tokens": tokens, "targets": np.roll(tokens, -1, 1), "loss_mask": mask,
             "positions": np.tile(np.arange(12, dtype=np.int32), (2, 1)),
             "segment_ids": np.ones((2, 12), np.int32)}
    edited = dict(batch, targets=batch["targets"].copy())
    edited["targets"][:, :7] = (edited["targets"][:, :7] + 5) % 200
    task = SftTask(load_config("configs/sft.py:model=tiny"))

    def loss(p, b):
        total, sums = task.loss(nnx.merge(graphdef, p), {}, b, None)
        return total / sums["weight"]

    (l1, g1), (l2, g2) = (jax.value_and_grad(loss)(params, b) for b in (batch, edited))
    assert float(l1) == float(l2)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_array_equal(a, b)
    edited["targets"][:, 9] = (edited["targets"][:, 9] + 5) % 200  # an assistant label
    assert float(loss(params, edited)) != float(l1)


@pytest.mark.slow
def test_tiny_model_learns_toy_instruction_task(tmp_path):
    data, held_out = write_copy_task(tmp_path)
    config = sft_config(tmp_path / "run", data, held_out)
    result = train(config)
    # 200 steps x 16 packed rows of 64 tokens, from scratch, on CPU.
    assert result["eval_answer_accuracy"] >= 0.9, result


@pytest.mark.slow
def test_lora_sft_from_a_base_keeps_it_and_saves_adapters_only(tmp_path):
    data, held_out = write_copy_task(tmp_path, n_train=200, n_eval=20)
    base = sft_config(tmp_path / "base", data, held_out, "total_steps=4",
                      "eval.every_steps=0")
    train(base)
    config = sft_config(tmp_path / "lora", data, held_out, f"init_from={tmp_path / 'base'}",
                        "peft.method=lora", "total_steps=6", "eval.every_steps=0",
                        "checkpoint.every_steps=6")
    train(config)
    # The LoRA run's checkpoint stores the adapters only: count the saved parameter values
    # (on a model this tiny, orbax's fixed per-array overhead dominates the bytes on disk).
    def saved_params(step_dir):
        restored = ocp.PyTreeCheckpointer().restore(step_dir / "state")
        return jax.tree_util.tree_flatten_with_path(restored["params"])[0]

    lora_saved = saved_params(tmp_path / "lora" / "checkpoints" / "6")
    base_saved = saved_params(tmp_path / "base" / "checkpoints" / "4")
    assert {path[-1].key for path, _ in lora_saved} == {"lora_a", "lora_b"}
    # Rank-8 adapters on this 64-wide model are 13% of its weights.
    assert sum(np.size(x) for _, x in lora_saved) < 0.15 * sum(np.size(x)
                                                               for _, x in base_saved)
    base_model = load_model(str(tmp_path / "base"))
    tuned = load_model(str(tmp_path / "lora"))
    tokens = np.arange(10, dtype=np.int32)[None]
    base_logits, _ = nnx.merge(base_model.graphdef, base_model.params)(tokens)
    tuned_logits, _ = nnx.merge(tuned.graphdef, tuned.params)(tokens)
    assert not np.allclose(base_logits, tuned_logits)  # adapters trained and applied
    # Export with the adapters merged: transformers gives the tuned model's logits.
    import torch
    from transformers import AutoModelForCausalLM

    from llm.hf import convert as hf
    from llm.peft import lora

    merged = lora.merge_params(tuned.graphdef, tuned.params)[1]
    hf.export_hf(tuned.model_cfg, merged, str(tmp_path / "hf"), dtype="float32")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = exported(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(theirs, np.asarray(tuned_logits)[..., :tuned.model_cfg.vocab_size],
                               atol=1e-4)
    flat_base = dict(nnx.to_flat_state(base_model.params))
    for path, variable in nnx.to_flat_state(tuned.params):
        if path[-1] == "kernel" and "base" in path:  # LoRA keeps the base kernel here
            plain = tuple(p for p in path if p != "base")
            np.testing.assert_array_equal(variable[...], flat_base[plain][...])
