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

from configs.grpo import online_rl_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """PPO config; variants: `model=<size>` and one of `lora`, `qlora`, `prefix`."""
    config = online_rl_config("ppo", arg)
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
