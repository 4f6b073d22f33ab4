"""KTO (Kahneman-Tversky optimisation) on unpaired rows: `prompt`, `completion` and a
`label` saying whether the completion is desirable; selected as `dpo.loss_type=kto`.

Each row's implied reward is r = log π(y|x) - log π_ref(y|x). The reference point z is
TRL's batch-level KL estimate: every (micro-)batch is paired against itself shifted by one
(row i's prompt with row i-1's completion, TRL's cycled `KL_completion_ids`), and
z = max(0, mean(log π - log π_ref)) over those mismatched rows, held without gradient.
The loss per row is `desirable_weight·(1 - σ(β(r - z)))` for a desirable completion,
`undesirable_weight·(1 - σ(β(z - r)))` otherwise (llm/losses.kto), averaged over rows.

The matched and the mismatched rows run in one forward pass per model. Metrics carry TRL's
names: `rewards/chosen` and `logps/chosen` are means over the desirable rows,
`rewards/rejected` and `logps/rejected` over the undesirable ones, `rewards/margins` their
difference and `kl` the reference point. They are per micro-batch means (reported as sums
scaled by the row count, which the loop divides back out): under `optim.grad_accum` > 1 the
logged figure is the mean of the micro-batches' means, and a micro-batch without a desirable
(undesirable) row counts 0 for the chosen (rejected) means.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llm import losses
from llm.train.dpo import DpoTask


def mismatched_rows(batch: dict) -> dict:
    """TRL's KL rows: row i = row i's prompt followed by row i-1's completion (cyclic),
    right-padded to the same length, with the same keys as the matched rows (traced)."""
    tokens_BT = batch["tokens"]
    length = tokens_BT.shape[1]
    prompt_B = batch["prompt_lengths"].astype(jnp.int32)
    completion_B = jnp.sum(batch["segment_ids"] > 0, axis=1).astype(jnp.int32) - prompt_B
    donor_tokens_BT = jnp.roll(tokens_BT, 1, axis=0)
    donor_prompt_B, donor_completion_B = jnp.roll(prompt_B, 1), jnp.roll(completion_B, 1)
    t_T = jnp.arange(length)
    # position t >= prompt_B reads the donor's completion token t - prompt_B
    source_BT = jnp.clip(t_T[None] - prompt_B[:, None] + donor_prompt_B[:, None], 0, length - 1)
    donated_BT = jnp.take_along_axis(donor_tokens_BT, source_BT, axis=1)
    end_B = jnp.minimum(prompt_B + donor_completion_B, length)
    valid_BT = t_T[None] < end_B[:, None]
    new_BT = jnp.where(t_T[None] < prompt_B[:, None], tokens_BT,
                       jnp.where(valid_BT, donated_BT, 0))
    has_target_BT = t_T[None] + 1 < end_B[:, None]
    targets_BT = jnp.where(has_target_BT, jnp.roll(new_BT, -1, axis=1), 0)
    loss_BT = has_target_BT & (t_T[None] + 1 >= prompt_B[:, None])
    return {"tokens": new_BT.astype(tokens_BT.dtype), "targets": targets_BT.astype(jnp.int32),
            "positions": jnp.where(valid_BT, t_T[None], 0).astype(jnp.int32),
            "segment_ids": valid_BT.astype(jnp.int32),
            "loss_mask": loss_BT.astype(jnp.float32)}


def row_logps(model, batch: dict, rng=None) -> tuple[jax.Array, jax.Array]:
    """(logps_B of the matched rows, kl_logps_B of the mismatched rows): one forward pass."""
    kl = mismatched_rows(batch)

    def both(key):
        return jnp.concatenate([batch[key], kl[key]], axis=0)

    logits_2BTV, _ = model(both("tokens"), both("positions"), both("segment_ids"),
                           dropout_rng=rng)
    logps_2B, _ = losses.sequence_logps(logits_2BTV, both("targets"), both("loss_mask"))
    rows = batch["tokens"].shape[0]
    return logps_2B[:rows], logps_2B[rows:]


def group_mean_sum(values_B: jax.Array, in_group_B: jax.Array) -> jax.Array:
    """The mean of `values_B` over the rows in the group (0 when none), times the row count:
    the sum the loop divides by the row count to report that mean."""
    in_group_B = in_group_B.astype(jnp.float32)
    mean = jnp.sum(values_B * in_group_B) / jnp.maximum(jnp.sum(in_group_B), 1.0)
    return jax.lax.stop_gradient(mean) * values_B.shape[0]


class KtoTask(DpoTask):
    """KTO on prepared unpaired rows (`DpoTask` with `dpo.loss_type=kto`)."""

    kind = "unpaired"
    unpaired = True

    def records(self, prepared, split: str):
        """The unpaired record set of a split (no rejected stream)."""
        from llm.data import loaders

        return loaders.unpaired_records(prepared, split), None

    def loader(self):
        from llm.data import loaders

        return functools.partial(loaders.unpaired_loader, truncation_mode=self.truncation_mode)

    def check(self) -> None:
        """The `dpo.*` keys KTO reads, and a micro-batch big enough to estimate the KL."""
        super().check()
        dpo = self.config.dpo
        if self.precompute:
            raise ValueError("dpo.precompute_ref_log_probs=True with dpo.loss_type=kto: KTO's "
                             "reference point scores each row's prompt with another row's "
                             "completion of the same batch, known only at the step; leave it "
                             "False")
        for key in ("desirable_weight", "undesirable_weight"):
            if dpo[key] <= 0:
                raise ValueError(f"dpo.{key}={dpo[key]}: expected > 0")
        micro = self.config.batch_size // max(self.config.optim.grad_accum, 1)
        if micro < 2:
            raise ValueError(f"batch_size={self.config.batch_size} with optim.grad_accum="
                             f"{self.config.optim.grad_accum}: KTO needs at least 2 rows per "
                             "micro-batch (with one, the KL estimate is the row's own reward)")

    def trim(self, host_batch: dict) -> dict:
        """Cut to a bucket that also holds every mismatched row (any row's prompt followed
        by any row's completion), so the KL rows are never cut shorter than at seq_len."""
        from llm.data import buckets

        real_B = (host_batch["segment_ids"] > 0).sum(axis=1)
        prompt_B = host_batch["prompt_lengths"]
        longest = max(buckets.agreed_longest(int(real_B.max())),
                      buckets.agreed_longest(int(prompt_B.max()))
                      + buckets.agreed_longest(int((real_B - prompt_B).max())))
        return buckets.trim_batch(host_batch, self.config.seq_len, self.pad_to_multiple_of,
                                  longest)

    def flops_per_token(self) -> float:
        """Policy forward + backward on the rows, forwards on the mismatched rows and the
        reference's forward on both: twice a plain training step's FLOPs."""
        from llm import metrics

        return 2 * metrics.train_flops_per_token(self.model_cfg, self.config.seq_len)

    def count(self, batch):
        tokens = int(batch["tokens"].shape[0]) * int(batch["tokens"].shape[1])
        return tokens, tokens * self.flops_per_token()

    def loss(self, model, side, batch, rng):
        logps_B, kl_logps_B = row_logps(model, batch, rng)
        ref_B, ref_kl_B = jax.lax.stop_gradient(row_logps(side["reference"], batch))
        kl = losses.kto_reference_point(jax.lax.stop_gradient(kl_logps_B), ref_kl_B)
        dpo = self.config.dpo
        logratio_B = logps_B - ref_B
        desirable_B = batch["label"] > 0
        loss_B = losses.kto(logratio_B, desirable_B, kl, dpo.beta, dpo.desirable_weight,
                            dpo.undesirable_weight)
        rewards_B = dpo.beta * logratio_B
        rows = logps_B.shape[0]
        chosen = group_mean_sum(rewards_B, desirable_B)
        rejected = group_mean_sum(rewards_B, ~desirable_B)
        return jnp.sum(loss_B), {
            "rewards/chosen": chosen, "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "logps/chosen": group_mean_sum(logps_B, desirable_B),
            "logps/rejected": group_mean_sum(logps_B, ~desirable_B),
            "kl": kl * rows, "weight": jnp.asarray(rows, jnp.float32)}
