"""GRPO with verifiable rewards (TRL's names), from an SFT model, on RL prompt JSONL.

python scripts/train.py --config=configs/grpo.py:model=tiny --config.init_from=SFT_DIR \
    --config.data.path=rl.jsonl --config.workdir=DIR --config.rl.reward_funcs=arithmetic

`batch_size` counts completions per optimiser update (a multiple of num_generations); one
rollout batch holds batch_size * steps_per_generation completions and feeds
steps_per_generation * num_iterations updates.
"""

from __future__ import annotations

import ml_collections

from configs import base


def rl_section() -> ml_collections.ConfigDict:
    """What every online RL task shares: rewards, sampling, rollout logs (llm/rl/)."""
    return ml_collections.ConfigDict(dict(
        reward_funcs="arithmetic",  # comma-separated names: registry or reward_modules
        reward_weights="",  # comma-separated floats, one per function ('' = all 1)
        reward_modules="",  # comma-separated importable modules with user reward functions
        format_pattern=r".*answer is -?\d+\.?",  # the `format` reward's full-match regex
        max_prompt_length=64,  # prompts padded (longer ones cut from the left) to this
        max_completion_length=32,  # new tokens per completion (TRL's name)
        temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
        log_samples_every=10,  # write workdir/rollouts/<step>.jsonl every N steps (0: never)
        unstack_layers=True,  # faster CPU decode; holds one extra copy of the layer weights
                              # while a rollout runs (False: none)
    ))


def online_rl_config(task: str, arg: str | None) -> ml_collections.ConfigDict:
    """What GRPO and PPO share: variants, optimiser defaults, prompt data and `rl.*`."""
    args = base.parse_arg(arg)
    config = base.base_config(task, model=str(args.pop("model", "tiny")))
    chosen = [m for m in ("lora", "qlora", "prefix") if args.pop(m, False)]
    if len(chosen) > 1 or args:
        raise ValueError(f"configs/{task}.py: variants {sorted(args) + chosen}: expected "
                         "model=<size> and at most one of lora, qlora, prefix")
    if chosen:
        config.peft.method = chosen[0]
    config.total_steps = 100
    config.batch_size = 32
    config.optim.lr = 1e-5 if config.peft.method == "none" else 1e-4
    config.optim.warmup_steps = 0
    config.optim.weight_decay = 0.0
    # transformers' AdamW default (what TRL trains with): pretraining's 0.95 tracks the noise
    # of policy gradients; on the arithmetic outcome run 0.999 learned faster (docs/benchmarks.md)
    config.optim.b2 = 0.999
    config.optim.schedule = "constant"
    config.checkpoint.every_steps = 50
    config.eval.every_steps = 0
    config.data.split.validation = 0.0
    config.data.clean.enabled = False
    config.data.decontaminate.enabled = False
    config.rl = rl_section()
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """GRPO config; variants: `model=<size>` and one of `lora`, `qlora`, `prefix`."""
    config = online_rl_config("grpo", arg)
    config.grpo = ml_collections.ConfigDict(dict(
        num_generations=8,  # G completions per prompt
        steps_per_generation=1,  # updates over one rollout batch's disjoint minibatches
        num_iterations=1,  # passes over each rollout batch (mu)
        scale_rewards="group",  # group | batch | none (Dr. GRPO)
        loss_type="dapo",  # grpo | bnpo | dr_grpo | dapo (TRL's default)
        epsilon=0.2, epsilon_high=0.0,  # clip range; epsilon_high 0 = epsilon (DAPO: 0.28)
        beta=0.0,  # KL coefficient; 0 loads no reference model
        kl_estimator="k3",  # k1 | k2 | k3
        use_bias_correction_kl=True,  # weigh the KL by pi_theta / pi_old (TRL's default)
        importance_sampling_level="token",  # token | sequence (GSPO)
        mask_truncated_completions=False,
        mask_zero_std_groups=True,  # groups with equal rewards leave the loss (DAPO)
        importance_sampling_correction=True,  # when top-k/top-p/min-p/penalties are on
        importance_sampling_mode="sequence_mask",  # token|sequence _truncate|_mask
        importance_sampling_clip_max=3.0,
        eval_file="",  # prompt/answer JSONL scored with greedy decoding at each eval
        eval_examples=100, eval_verifier="arithmetic",
    ))
    return config
