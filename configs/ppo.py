"""PPO with a reward model (TRL's names), from an SFT model, on RL prompt JSONL.

python scripts/train.py --config=configs/ppo.py:model=tiny --config.init_from=SFT_DIR \
    --config.ppo.reward_model_path=REWARD_DIR --config.data.path=rl.jsonl \
    --config.workdir=DIR

One completion per prompt. `batch_size` counts completions per optimiser update (one
minibatch); a rollout batch holds batch_size * num_mini_batches completions and feeds
num_ppo_epochs * num_mini_batches updates.
"""

from __future__ import annotations

import ml_collections

from configs import base
from configs.grpo import rl_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """PPO config; variants: `model=<size>` and one of `lora`, `qlora`, `prefix`."""
    args = base.parse_arg(arg)
    config = base.base_config("ppo", model=str(args.pop("model", "tiny")))
    chosen = [m for m in ("lora", "qlora", "prefix") if args.pop(m, False)]
    if len(chosen) > 1 or args:
        raise ValueError(f"configs/ppo.py: variants {sorted(args) + chosen}: expected "
                         "model=<size> and at most one of lora, qlora, prefix")
    if chosen:
        config.peft.method = chosen[0]
    config.total_steps = 100
    config.batch_size = 32
    config.optim.lr = 1e-5 if config.peft.method == "none" else 1e-4
    config.optim.warmup_steps = 0
    config.optim.weight_decay = 0.0
    config.optim.schedule = "constant"
    config.checkpoint.every_steps = 50
    config.eval.every_steps = 0
    config.data.split.validation = 0.0
    config.data.clean.enabled = False
    config.data.decontaminate.enabled = False
    config.rl = rl_section()
    config.rl.reward_funcs = ""  # verifiers added to the reward model's score ('' = none)
    config.ppo = ml_collections.ConfigDict(dict(
        reward_model_path="",  # a reward run's workdir or checkpoints/<step> (required)
        value_model="shared",  # shared: a value head on the policy's trunk | separate: its
                               # own model, initialised from the reward model
        value_model_path="",  # separate only: a reward-model checkpoint ('' = the reward's)
        num_ppo_epochs=4, num_mini_batches=1,
        cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
        entropy_coef=0.0,  # entropy bonus: - entropy_coef * H per token
        gamma=1.0, lam=0.95,
        whiten_advantages=True,
        beta=0.05,  # KL coefficient (TRL's kl_coef); the controller's starting value
        target_kl=0.0,  # > 0: adapt beta toward this per-sequence KL (Ziegler et al.)
        kl_horizon=10000,  # completions over which the controller closes the gap
        kl_estimator="k1",  # k1 | k2 | k3 per-token KL in the reward
        missing_eos_penalty=0.0,  # subtracted from the score of completions without EOS
        value_lr=0.0,  # the value head's / model's learning rate (0 = optim.lr)
        eval_file="",  # prompt/answer JSONL: mean reward-model score and verifier accuracy
        eval_examples=100, eval_verifier="arithmetic",
    ))
    return config
