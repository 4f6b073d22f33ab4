"""Reward modelling: the Transformer with a scalar score head trained on preference pairs
with the Bradley-Terry loss -log σ(r_chosen - r_rejected - margin), plus TRL's optional
centring term `center_rewards_coefficient · (r_chosen + r_rejected)²`.

The score is read at each sequence's last real token (llm/scoring.py); the head is fresh
(left initialised when `init_from` is an SFT or pretraining run) and trains under PEFT too.
Metrics, on train and held-out pairs: `accuracy` (pair accuracy), `rewards/chosen`,
`rewards/rejected`, `margin` (TRL's RewardTrainer names `accuracy` and `margin`).
"""

from __future__ import annotations

import jax.numpy as jnp

from llm import losses, scoring
from llm.train.dpo import PreferenceTask, both_rows


def pair_scores(model, batch: dict, rng=None):
    """(chosen scores_P, rejected scores_P) from one forward pass over both rows."""
    scores_2P = scoring.sequence_scores(model, both_rows(batch, "tokens"),
                                        both_rows(batch, "positions"),
                                        both_rows(batch, "segment_ids"), dropout_rng=rng)
    pairs = batch["chosen_tokens"].shape[0]
    return scores_2P[:pairs], scores_2P[pairs:]


class RewardTask(PreferenceTask):
    """Bradley-Terry reward model on prepared preference pairs."""

    name = "reward"
    fresh = (scoring.HEAD,)

    def check(self) -> None:
        """The `reward.*` keys."""
        self.check_truncation()
        if self.config.reward.center_rewards_coefficient < 0:
            raise ValueError(f"reward.center_rewards_coefficient="
                             f"{self.config.reward.center_rewards_coefficient}: expected >= 0")

    def build(self, model):
        return scoring.add_score_head(model)

    def loss(self, model, side, batch, rng):
        chosen_P, rejected_P = pair_scores(model, batch, rng)
        margin_P = batch.get("margin")
        loss_P = losses.bradley_terry(chosen_P, rejected_P, margin_P,
                                      self.config.reward.center_rewards_coefficient)
        diff_P = chosen_P - rejected_P
        return jnp.sum(loss_P), {
            "accuracy": jnp.sum((diff_P > 0).astype(jnp.float32)),
            "rewards/chosen": jnp.sum(chosen_P), "rewards/rejected": jnp.sum(rejected_P),
            "margin": jnp.sum(diff_P),
            "weight": jnp.asarray(chosen_P.shape[0], jnp.float32)}
