"""Real-model demo stage `grpo`: LoRA GRPO teaches a word limit, rewarded by a module of the
user's own (`word_limit.at_most_words`, loaded through `rl.reward_modules` as a user's is).

Measured on the 32 held-out questions (never a training prompt): one sampled reply each,
through the model's own chat template up to its end of turn, scored by the same reward, with
the mean words, so a model that learns to say (almost) nothing shows.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from llm.demo.context import Context

NAME = "grpo"
DESCRIPTION = "LoRA GRPO on 32 prompts with a reward module of the user's own: replies ≤ 8 words"
# The recipe tests/test_real_model_grpo.py proves: 4 prompts x G = 4 per update, lr 1e-3,
# 4 updates. Held-out reward (seeds 0/1/2): base -0.148 / -0.422 / -0.156 (threshold mean +
# 2 x spread = 0.305); after training seeds 0/1/2 means 0.93 / 0.80 / 0.94 at 5.9-6.4 words
# (3 updates: 0.87 / 0.59 / 0.81, half the margin for one step less; 6 updates: 1.00 at 5.2
# words). At lr 3e-4 the training reward took 13 updates to pass 0.75. Most base rollouts
# stop at the 24-token cap (75%), each scored on its cut text: ~18 words, past the reward's
# floor (16 words), so the cap changes no reward much.
STEPS = 4
SETTINGS = ["batch_size=16", "grpo.num_generations=4", "rl.max_prompt_length=48",
            "rl.max_completion_length=24", "optim.lr=1e-3", "log.every_steps=1",
            "rl.reward_modules=llm.demo.smollm2.word_limit", "rl.reward_funcs=at_most_words"]
TEMPERATURE = 0.7  # held-out replies: the sampler's default (top-p 0.9 too), as the eval stage
MAX_NEW_TOKENS = 48  # room past the reward's floor (16 words): a long reply counts as long
ROOT = pathlib.Path(__file__).resolve().parents[3]


def train_grpo(hf_dir: pathlib.Path, prompts_file: pathlib.Path, workdir: pathlib.Path,
               seed: int = 0, steps: int = STEPS) -> dict:
    """The LoRA GRPO run from the imported model (the training loop, in this process);
    the loop's final metrics."""
    from llm.config import load_config
    from llm.train.loop import train

    return train(load_config(str(ROOT / "configs" / "grpo.py") + ":lora,model=init_from", [
        f"workdir={workdir}", f"init_from=hf:{hf_dir}", f"data.path={prompts_file}",
        *SETTINGS, f"seed={seed}", f"total_steps={steps}", f"checkpoint.every_steps={steps}"]))


def held_out_rewards(init_from: str, questions: Sequence[str], seeds: Sequence[int]
                     ) -> list[tuple[float, float]]:
    """`held_out_reward` at each seed, the model loaded once."""
    from llm.demo.smollm2.word_limit import at_most_words
    from llm.sampling.sampler import load_sampler

    sampler, end_ids = load_sampler(init_from)
    prompts = [sampler.chat_template([{"role": "user", "content": q}]) for q in questions]
    out = []
    for seed in seeds:  # rows get seeds of their own: no two seeds share a row's draws
        done = sampler.complete(prompts, stop_token_ids=end_ids, temperature=TEMPERATURE,
                                max_new_tokens=MAX_NEW_TOKENS,
                                seed=[seed * len(prompts) + i for i in range(len(prompts))])
        replies = [c.text.strip() for c in done]
        rewards = at_most_words(questions, replies)
        out.append((sum(rewards) / len(rewards),
                    sum(len(r.split()) for r in replies) / len(replies)))
    return out


def held_out_reward(init_from: str, questions: Sequence[str], seed: int
                    ) -> tuple[float, float]:
    """(mean reward, mean words) of one sampled reply per question through the model's chat
    template (temperature TEMPERATURE), ending at its end of turn."""
    return held_out_rewards(init_from, questions, [seed])[0]


def run(ctx: Context) -> dict:
    """Train from the imported model; held-out reward and words before and after (seed 0)."""
    from llm.demo.measure import metric_rows
    from llm.demo.smollm2 import data
    from llm.demo.smollm2.model import hf_dir

    files = data.write_all(ctx.workdir / "data")
    workdir, base = ctx.workdir / "grpo", hf_dir(ctx.workdir)
    final = train_grpo(base, files["prompts"], workdir, steps=ctx.steps_of(STEPS))
    questions = [q for q, _ in data.HELD_OUT_QUESTIONS]
    before = held_out_reward(f"hf:{base}", questions, seed=0)
    after = held_out_reward(str(workdir), questions, seed=0)
    rewards = [row["reward"] for row in metric_rows(workdir, "reward")]
    return {"step": final["step"], "reward_first": rewards[0] if rewards else None,
            "reward_last": rewards[-1] if rewards else None, "held_out_before": before[0],
            "words_before": before[1], "held_out_after": after[0], "words_after": after[1]}


def headline(result: dict) -> str:
    """The table cell: the held-out word-limit reward and words before and after."""
    return (f"held-out word-limit reward {result['held_out_before']:.2f} → "
            f"{result['held_out_after']:.2f} ({result['words_before']:.1f} → "
            f"{result['words_after']:.1f} words a reply) after {result['step']} steps")
