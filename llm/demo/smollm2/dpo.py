"""Demo stage `dpo` on SmolLM2: LoRA DPO teaches a sign-off the imported model never writes.

The pairs (data.py) are one short reply with `SIGN_OFF` (chosen) and without it (rejected),
to 32 training questions; 32 other questions are held out. Two measurements:
`implicit_reward_accuracy`, how often β·log π/π_ref ranks a held-out pair's chosen reply over
its rejected one (π the trained LoRA model, π_ref the imported base), and `sign_off_rate`,
how many sampled replies to held-out questions carry the sign-off.
tests/test_real_model_dpo.py proves SETTINGS and STEPS.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

from llm.demo.context import Context
from llm.demo.smollm2 import data

NAME = "dpo"
DESCRIPTION = "LoRA DPO from the imported SmolLM2 on sign-off pairs (a sign-off it never writes)"
STEPS = 20
ROOT = pathlib.Path(__file__).resolve().parents[3]  # the checkout: scripts/, configs/
# Every pair is at most 59 tokens in SmolLM2's template (its default system prompt included),
# so seq_len 64 leaves none out; the reference log-probs are computed once before training.
# Measured 2026-12-07 (training seeds 0/1/2, 32 held-out questions): implicit-reward accuracy
# 1.0 / 1.0 / 1.0, sign-off rate 1.0 / 1.0 / 1.0 after 20 steps (0.91 / 0.91 / 0.88 at step
# 10). Every recipe tried ranks all held-out pairs right within 5 steps; writing the
# sign-off is slower: sigmoid at lr 2e-4 signs off 0 % after 24 steps, at 5e-4 50 % after
# 30; sigmoid + the SFT term at 5e-4 59 % after 20, at 1e-3 (batch 8) 100 % after 15; plain
# sigmoid at 1e-3 (batch 4) 16 % at step 10, 100 % at 20 (training seed 0).
SETTINGS = ["dpo.loss_type=sigmoid,sft", "dpo.beta=0.1", "dpo.precompute_ref_log_probs=true",
            "optim.lr=1e-3", "optim.warmup_steps=2", "batch_size=4", "seq_len=64",
            "data.split.validation=0", "eval.every_steps=0", "log.every_steps=5",
            "data.num_workers=0"]
SAMPLING = {"temperature": 0.7, "max_new_tokens": 48}  # the sampler's top_p 0.9 besides


def train_dpo(hf_dir: pathlib.Path, data_file: pathlib.Path, workdir: pathlib.Path,
              seed: int = 0, steps: int = STEPS) -> dict:
    """LoRA DPO from `hf:<hf_dir>` on `data_file` with SETTINGS; the last logged metrics.

    The run is `scripts/train.py` in a process of its own on one host device: a process
    that fakes 8 CPU devices (the tests') holds a replica of the weights on each, 10.5 GB
    against 3.5 GB, and steps no faster on the same cores."""
    import json
    import os
    import re
    import subprocess
    import sys

    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                       os.environ.get("XLA_FLAGS", "")).strip()
    overrides = [f"workdir={workdir}", f"init_from=hf:{hf_dir}", f"data.path={data_file}",
                 *SETTINGS, f"seed={seed}", f"total_steps={steps}",
                 f"checkpoint.every_steps={steps}"]
    subprocess.run([sys.executable, "scripts/train.py",
                    "--config=configs/dpo.py:lora,model=init_from",
                    *(f"--config.{o}" for o in overrides)],
                   cwd=ROOT, env={**os.environ, "XLA_FLAGS": xla_flags}, check=True)
    logged = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return json.loads(logged[-1])


def pair_batch(tokenizer, rows: Sequence[dict], seq_len: int) -> dict[str, np.ndarray]:
    """`chosen_*` / `rejected_*` rows of `rows` as the data pipeline renders and packs them."""
    from llm.data import chat, loaders

    batch = {}
    for stream in ("chosen", "rejected"):
        packed = []
        for row in rows:
            pair = chat.render_pair(tokenizer, row["prompt"], row[stream])
            if len(pair.ids) > seq_len:
                raise ValueError(f"{stream} of {row['prompt']!r}: {len(pair.ids)} tokens "
                                 f"exceed seq_len={seq_len}")
            packed.append(loaders.pack_row([(np.asarray(pair.ids), np.asarray(pair.mask))],
                                           seq_len, tokenizer.pad_id))
        batch.update({f"{stream}_{k}": np.stack([p[k] for p in packed]) for k in packed[0]})
    return batch


def implicit_rewards(workdir: pathlib.Path, hf_dir: pathlib.Path, rows: Sequence[dict]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(chosen_P, rejected_P) implicit rewards β·(log π(y|x) − log π_ref(y|x)) of `rows`:
    π the trained run in `workdir`, π_ref the imported base at `hf_dir`, log-probs summed over
    each reply's tokens by the DPO task's own `pair_logps`."""
    import jax
    from flax import nnx

    from llm import loading
    from llm.data.tokenizer import Tokenizer
    from llm.train.dpo import pair_logps

    policy = loading.load_model(str(workdir))
    reference = loading.load_model(f"hf:{hf_dir}")
    batch = pair_batch(Tokenizer.load(policy.tokenizer_dir), rows,
                       int(policy.config["seq_len"]))

    def logps(loaded):
        score = jax.jit(lambda params, b: pair_logps(nnx.merge(loaded.graphdef, params), b)[0])
        return np.asarray(score(loaded.params, batch))

    ratio_2P = logps(policy) - logps(reference)
    beta = float(policy.config["dpo"]["beta"])
    return beta * ratio_2P[:len(rows)], beta * ratio_2P[len(rows):]


def implicit_reward_accuracy(workdir: pathlib.Path, hf_dir: pathlib.Path,
                             held_out_rows: Sequence[dict]) -> float:
    """The fraction of `held_out_rows` (prompt/chosen/rejected) whose chosen reply earns the
    larger implicit reward."""
    chosen_P, rejected_P = implicit_rewards(workdir, hf_dir, held_out_rows)
    return float(np.mean(chosen_P > rejected_P))


def sampled_replies(init_from: str, questions: Sequence[tuple[str, str]], seed: int
                    ) -> list[str]:
    """One sampled reply (SAMPLING) per (question, reply) pair of data.py, through the
    model's own chat template, stopped at its end of turn."""
    from llm.sampling.sampler import complete_rows, load_sampler

    sampler, end_ids = load_sampler(str(init_from))
    rows = [{"messages": [{"role": "user", "content": q}]} for q, _ in questions]
    done = complete_rows(sampler, rows, batch_size=len(rows), stop_token_ids=end_ids,
                         seed=seed, **SAMPLING)
    return [row["completion"] for row in done]


def sign_off_rate(init_from: str, questions: Sequence[tuple[str, str]], seed: int) -> float:
    """The fraction of sampled replies to `questions` that carry the sign-off."""
    replies = sampled_replies(init_from, questions, seed)
    return sum(map(data.has_sign_off, replies)) / len(replies)


def run(ctx: Context) -> dict:
    """Train on the training pairs; held-out implicit-reward accuracy and sign-off rates."""
    import time

    from llm.demo.smollm2.model import hf_dir

    hf = hf_dir(ctx.workdir)
    files = data.write_all(ctx.workdir / "data")
    workdir = ctx.workdir / "dpo"
    start = time.perf_counter()
    final = train_dpo(hf, files["preferences"], workdir, steps=ctx.steps_of(STEPS))
    seconds = time.perf_counter() - start
    held_out = data.preference_rows(data.HELD_OUT_QUESTIONS)
    return {"step": final["step"], "train_seconds": seconds,
            "accuracy": implicit_reward_accuracy(workdir, hf, held_out),
            "base_rate": sign_off_rate(f"hf:{hf}", data.HELD_OUT_QUESTIONS, seed=0),
            "rate": sign_off_rate(str(workdir), data.HELD_OUT_QUESTIONS, seed=0)}


def headline(result: dict) -> str:
    """The table cell: held-out sign-off rate before and after, and the pair accuracy."""
    return (f"sign-off in {result['base_rate']:.0%} → {result['rate']:.0%} of sampled replies "
            f"to {len(data.HELD_OUT_QUESTIONS)} held-out questions; implicit reward ranks "
            f"{result['accuracy']:.0%} of held-out pairs right ({result['step']} steps)")
