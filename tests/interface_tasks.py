"""Test tasks, one per point of the Task interface the post-training algorithms rely on."""

from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from synthetic_task import SyntheticTask, packed_rows

from llm import losses
from llm.model import Dense
from llm.train.task import REFERENCE, DataSource


def lm_nll(model, batch):
    """(sum of masked CE, target count) of a causal LM on a packed batch."""
    logits, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    loss_sum, sums = losses.masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
    return loss_sum, sums["weight"]


class ReferenceTask(SyntheticTask):
    """CE on the policy; the frozen reference's CE is reported beside it (as DPO/PPO read
    reference log-probs), both in `prepare` (host code) and inside the loss."""

    def __init__(self, config):
        super().__init__(config)
        self.held_bytes: list[int] = []
        self.policy_bytes: list[int] = []
        self.trainable_bytes: list[int] = []
        self.prepare_ref_nll: list[float] = []

    def side_models(self):
        return {"reference": REFERENCE}

    def prepare(self, models, host_batch, rng):
        def nbytes(tree):
            return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

        self.held_bytes.append(models.held_bytes())
        self.policy_bytes.append(nbytes(models.params) + nbytes(models.frozen))
        self.trainable_bytes.append(nbytes(models.params))
        placed = {k: jnp.asarray(v) for k, v in host_batch.items()}
        loss_sum, weight = lm_nll(models.get("reference"), placed)
        self.prepare_ref_nll.append(float(loss_sum / weight))
        return host_batch

    def loss(self, model, side, batch, rng):
        loss_sum, sums = super().loss(model, side, batch, rng)
        ref_sum, _ = lm_nll(side["reference"], batch)
        return loss_sum, {**sums, "ref_nll": jax.lax.stop_gradient(ref_sum)}


HEAD_SEED = 1234


class HeadTask(SyntheticTask):
    """CE plus a scalar head (a value / reward head) regressed to 1 on every token; the head
    is new to the base, so it is declared fresh, and trains in its own optimiser group."""

    fresh = ("score_head",)

    def __init__(self, config, head_lr_multiplier: float = 0.0):
        super().__init__(config)
        self.head_lr_multiplier = head_lr_multiplier

    def build(self, model):
        cfg = model.cfg
        model.score_head = Dense(cfg.d_model, 1, ("embed", None), cfg,
                                 nnx.Rngs(params=HEAD_SEED), use_bias=True)
        return model

    def param_groups(self):
        return {"head": (lambda path: "score_head" in path, self.head_lr_multiplier)}

    def loss(self, model, side, batch, rng):
        h_BTD, _ = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
        logits_BTV = model.logits(h_BTD)
        loss_sum, sums = losses.masked_cross_entropy(logits_BTV, batch["targets"],
                                                     batch["loss_mask"])
        score_BT = model.score_head(h_BTD)[..., 0].astype(jnp.float32)
        mse_sum = jnp.sum(jnp.square(score_BT - 1.0) * batch["loss_mask"])
        return loss_sum + mse_sum, {**sums, "mse": mse_sum}


class MultiUpdateTask(SyntheticTask):
    """PPO-shaped: each prepared batch feeds EPOCHS x MINIBATCHES updates, its rows shuffled
    per epoch with `prepare`'s rng; a step is one update on one minibatch."""

    EPOCHS, MINIBATCHES = 2, 2

    def num_updates(self):
        return self.EPOCHS * self.MINIBATCHES

    def prepare(self, models, host_batch, rng):
        rows = len(host_batch["tokens"])
        order_BE = np.stack([np.asarray(jax.random.permutation(jax.random.fold_in(rng, e),
                                                               rows))
                             for e in range(self.EPOCHS)], axis=1).astype(np.int32)
        return {**host_batch, "order": order_BE}

    def minibatch(self, batch, index):
        rows = batch["tokens"].shape[0] // self.MINIBATCHES
        epoch, part = index // self.MINIBATCHES, index % self.MINIBATCHES
        take = jax.lax.dynamic_slice_in_dim(batch["order"][:, epoch], part * rows, rows)
        return {k: jnp.take(v, take, axis=0) for k, v in batch.items() if k != "order"}

    def count(self, batch):
        tokens = int(np.prod(batch["tokens"].shape)) * self.EPOCHS  # each row once an epoch
        return tokens, tokens * self.flops_per_token()


class StatefulTask(SyntheticTask):
    """Keeps a running loss average (as an adaptive KL controller keeps its coefficient) that
    scales the next batch's loss, checkpointed as task state."""

    def __init__(self, config):
        super().__init__(config)
        self.state = {"loss_ema": 0.0, "seen": 0}

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)

    def observe(self, step, metrics):
        decay = 0.0 if self.state["seen"] == 0 else 0.8
        self.state["loss_ema"] = decay * self.state["loss_ema"] + (1 - decay) * metrics["loss"]
        self.state["seen"] += 1

    def prepare(self, models, host_batch, rng):
        coef = np.full(len(host_batch["tokens"]), self.state["loss_ema"], np.float32)
        return {**host_batch, "coef": coef}

    def loss(self, model, side, batch, rng):
        loss_sum, sums = super().loss(model, side, batch, rng)
        return loss_sum * (1.0 + 0.1 * jnp.tanh(batch["coef"][0])), sums


class AnswerTask(SyntheticTask):
    """Rows carry a string `answer` (as RL prompts do); `prepare` turns it into a per-row
    weight the loss reads, so the string has to reach the task."""

    def datasets(self, config, mesh, workdir):
        count, index = jax.process_count(), jax.process_index()
        rows = packed_rows(32, config.seq_len, config.model.vocab_size, seed=1)
        for n, row in enumerate(rows):
            row["answer"] = "x" * (1 + n % 3)
        rows = rows[index::count]

        def iterator():
            ds = grain.MapDataset.source(rows).repeat()
            return iter(ds.batch(config.batch_size // count, drop_remainder=True))

        return DataSource(iterator, batches_per_epoch=32 // config.batch_size), None

    def prepare(self, models, host_batch, rng):
        lengths = np.array([len(a) for a in host_batch["answer"]], np.float32)
        return {**host_batch, "answer_len": lengths}

    def loss(self, model, side, batch, rng):
        loss_sum, sums = super().loss(model, side, batch, rng)
        rows = batch["answer_len"].shape[0]
        return loss_sum, {**sums, "answer_len": jnp.sum(batch["answer_len"]) / rows
                          * sums["weight"]}
