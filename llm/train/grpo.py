"""GRPO: G sampled completions per prompt, scored by verifiers, each pushed toward the
better answers of its group (group-relative advantages), staying near a reference.

Per rollout batch (`prepare`, host code): the jitted sampler runs on the policy's own
arrays (llm/rl/rollout.py), the reward functions score the decoded completions, advantages
come from each prompt's group, and (beta > 0) the reference scores the tokens. The batch
then feeds steps_per_generation x num_iterations optimiser updates against the log-probs
recorded at sampling, each on one minibatch of `batch_size` completions (TRL's scheme and
names: loss_type, epsilon / epsilon_high, scale_rewards, importance_sampling_level, ...).

Per-rollout host figures (reward statistics, lengths, the time split) travel in the batch as
per-row constants (`stat_*`) so the loop logs them with the update's own metrics, and a
resumed run logs them again exactly.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.config import ConfigError
from llm.rl import advantages as adv_lib
from llm.rl import kl as kl_lib
from llm.rl import objectives, sequences
from llm.rl import rewards as rewards_lib
from llm.rl import rollout as rollout_lib
from llm.rl import samples as samples_lib
from llm.train.pretrain import prepared_dataset
from llm.train.sft import base_tokenizer_dir
from llm.train.task import REFERENCE, DataSource, Task

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def aggregate(per_token_RN: jax.Array, mask_RN: jax.Array, loss_type: str, N: int,
              dapo_weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(loss sum, weight) of one minibatch, so that sum / weight over an update is TRL's
    loss: grpo a mean of per-sequence means; bnpo a mean over tokens; dr_grpo a sum over
    R * max_completion_length; dapo a sum over the rollout batch's tokens per update."""
    token_sum_R = jnp.sum(per_token_RN * mask_RN, -1)
    tokens_R = jnp.sum(mask_RN, -1)
    rows = jnp.asarray(per_token_RN.shape[0], jnp.float32)
    if loss_type == "grpo":
        return jnp.sum(token_sum_R / jnp.maximum(tokens_R, 1.0)), rows
    if loss_type == "bnpo":
        return jnp.sum(token_sum_R), jnp.sum(tokens_R)
    if loss_type == "dr_grpo":
        return jnp.sum(token_sum_R), rows * N
    if loss_type == "dapo":
        return jnp.sum(token_sum_R), dapo_weight
    raise ValueError(f"grpo.loss_type={loss_type!r}: expected one of {LOSS_TYPES}")


class GrpoTask(Task):
    """Group relative policy optimisation on prompt/answer rows with verifiable rewards."""

    name = "grpo"
    kind = "prompt"

    def __init__(self, config):
        super().__init__(config)
        self.generations = 0  # rollout batches prepared so far (checkpointed)
        self.reward_funcs: rewards_lib.RewardFunctions | None = None
        self.tokenizer = None

    # ------------------------------------------------------------------ config
    def check(self) -> None:
        """Every grpo.* / rl.* key, the reward functions and modules, before any rollout."""
        g, rl = self.config.grpo, self.config.rl
        for key, value in (("grpo.num_generations", g.num_generations),
                           ("grpo.steps_per_generation", g.steps_per_generation),
                           ("grpo.num_iterations", g.num_iterations),
                           ("rl.max_prompt_length", rl.max_prompt_length),
                           ("rl.max_completion_length", rl.max_completion_length)):
            if int(value) < 1:
                raise ConfigError(f"{key}={value}: expected >= 1")
        if g.num_generations < 2:
            raise ConfigError(f"grpo.num_generations={g.num_generations}: a group needs at "
                              "least 2 completions to compare")
        if self.config.batch_size % g.num_generations:
            raise ConfigError(f"batch_size={self.config.batch_size}: expected a multiple of "
                              f"grpo.num_generations={g.num_generations} (it counts "
                              "completions per update)")
        if self.prompts_per_rollout() % jax.process_count():
            raise ConfigError(f"{self.prompts_per_rollout()} prompts per rollout batch do not "
                              f"split over {jax.process_count()} processes")
        choices = {"loss_type": LOSS_TYPES, "scale_rewards": adv_lib.SCALES,
                   "kl_estimator": kl_lib.ESTIMATORS,
                   "importance_sampling_level": objectives.LEVELS,
                   "importance_sampling_mode": objectives.IS_MODES}
        for key, allowed in choices.items():
            if g[key] not in allowed:
                raise ConfigError(f"grpo.{key}={g[key]!r}: expected one of {allowed}")
        for key in ("epsilon", "epsilon_high", "beta"):
            if g[key] < 0:
                raise ConfigError(f"grpo.{key}={g[key]}: expected >= 0")
        if g.importance_sampling_clip_max <= 0:
            raise ConfigError(f"grpo.importance_sampling_clip_max="
                              f"{g.importance_sampling_clip_max}: expected > 0")
        if rl.temperature <= 0:
            raise ConfigError(f"rl.temperature={rl.temperature}: expected > 0 (RL samples)")
        if rollout_lib.uses_filters(self.sampling_controls()) and not (
                g.importance_sampling_correction):
            raise ConfigError("rl.top_k/top_p/min_p/repetition_penalty change the sampled "
                              "distribution away from softmax(logits / temperature): set "
                              "grpo.importance_sampling_correction=True to correct for it, or "
                              "turn them off")
        context = rl.max_prompt_length + rl.max_completion_length
        if context > self.config.model.max_seq_len:
            raise ConfigError(f"rl.max_prompt_length + rl.max_completion_length = {context} "
                              f"exceeds model.max_seq_len={self.config.model.max_seq_len}")
        if g.eval_file and g.eval_verifier not in rewards_lib.registry.names():
            raise ConfigError(f"grpo.eval_verifier={g.eval_verifier!r}: expected one of "
                              f"{rewards_lib.registry.names()}")
        self.reward_funcs = rewards_lib.load(rl.reward_funcs, rl.reward_weights,
                                             rl.reward_modules)

    def sampling_controls(self) -> dict[str, float]:
        """The rl.* sampling controls as SamplingParams fields."""
        return {key: self.config.rl[key] for key in SAMPLING_KEYS}

    def prompts_per_rollout(self) -> int:
        """Prompts in one rollout batch (all processes)."""
        g = self.config.grpo
        return self.config.batch_size * g.steps_per_generation // g.num_generations

    def side_models(self):
        """The frozen reference, only when the KL term is on (beta > 0)."""
        return {"reference": REFERENCE} if self.config.grpo.beta > 0 else {}

    def num_updates(self) -> int:
        """steps_per_generation minibatches x num_iterations passes per rollout batch."""
        return int(self.config.grpo.steps_per_generation * self.config.grpo.num_iterations)

    # ------------------------------------------------------------------ data
    def datasets(self, config, mesh, workdir):
        """RL prompt rows (prompt/answer JSONL or a prepared directory), in rollout batches."""
        from llm.data import DataError, loaders
        from llm.data.tokenizer import Tokenizer

        base = base_tokenizer_dir(config.init_from)
        prepared = prepared_dataset(config, workdir, str(base) if base else "")
        try:
            count = loaders.num_examples(prepared, "train", "prompt", 0)
        except DataError as error:
            raise ConfigError(f"--config.data.path={config.data.path}: no RL prompts "
                              f"({error}); expected JSONL rows with 'prompt' (and 'answer')"
                              ) from None
        per_rollout = self.prompts_per_rollout()
        if count < per_rollout:
            raise ConfigError(f"--config.data.path={config.data.path}: {count} prompts, fewer "
                              f"than one rollout batch ({per_rollout} = batch_size * "
                              "steps_per_generation / num_generations)")
        self.tokenizer = Tokenizer.load(prepared / "tokenizer")
        processes = jax.process_count()

        def iterator():
            return iter(loaders.prompt_loader(
                prepared, "train", self.config.rl.max_prompt_length, per_rollout // processes,
                config.seed, config.num_epochs or None, shard_index=jax.process_index(),
                shard_count=processes))

        return DataSource(iterator, batches_per_epoch=count // per_rollout,
                          tokenizer_dir=prepared / "tokenizer",
                          vocab_size=self.tokenizer.vocab_size, reshardable=True), None

    def eos_ids(self) -> list[int]:
        """Ids that end a completion: EOS and the chat template's end-of-turn marker."""
        return list(self.tokenizer.stop_ids)

    # ------------------------------------------------------------------ rollout batch
    def prepare(self, models, host_batch, rng):
        """Rollouts, rewards, advantages and (beta > 0) reference log-probs of one batch."""
        g, rl = self.config.grpo, self.config.rl
        G, N = int(g.num_generations), int(rl.max_completion_length)
        ro = rollout_lib.rollout(
            models.graphdef, nnx.merge_state(models.params, models.frozen),
            host_batch["prompt_tokens"], host_batch["prompt_lengths"], num_generations=G,
            max_new_tokens=N, rng=jax.random.fold_in(rng, 0), eos_ids=self.eos_ids(),
            mesh=models.mesh, unstack_layers=bool(rl.unstack_layers),
            **self.sampling_controls())
        rollout_mem = _peak_memory()
        hidden = set(self.eos_ids()) | set(getattr(self.tokenizer, "role_ids", {}).values())
        prompts = [self.tokenizer.decode([int(t) for t in ro.prompt_tokens_RP[r, :n]
                                          if int(t) not in hidden])
                   for r, n in enumerate(ro.prompt_lengths_R)]
        completions = rollout_lib.completion_texts(self.tokenizer, ro, self.eos_ids())
        R = len(completions)
        row_fields = {"answer": [str(a) for a in np.repeat(host_batch["answer"], G)],
                      "completion_ids": [ro.completions_RN[r, :n].tolist()
                                         for r, n in enumerate(ro.lengths_R)],
                      "format_pattern": [rl.format_pattern] * R,
                      "max_completion_length": [N] * R}
        rewards_R, per_func_RF, reward_s = rewards_lib.score(self.reward_funcs, prompts,
                                                             completions, row_fields)
        advantages_R, zero_std_R = adv_lib.group_advantages(rewards_R, G, g.scale_rewards)
        mask_RN = sequences.completion_mask(ro.lengths_R, N)
        if g.mask_truncated_completions:
            mask_RN *= ~ro.truncated_R[:, None]
        if g.mask_zero_std_groups:
            mask_RN *= ~zero_std_R[:, None]
        rows = sequences.training_rows(ro.prompt_tokens_RP, ro.prompt_lengths_R,
                                       ro.completions_RN, ro.lengths_R)
        batch = {**rows, "completion_mask": mask_RN, "advantages": advantages_R,
                 "completion_tokens": sequences.completion_mask(ro.lengths_R, N),
                 "old_logprobs": ro.logprobs_RN.astype(np.float32)}
        start = time.perf_counter()
        if g.beta > 0:
            batch["ref_logprobs"] = np.asarray(sequences.reference_logprobs(
                models.side_graphdefs["reference"], models.side["reference"], rows,
                temperature=float(rl.temperature), N=N))
        reference_s = time.perf_counter() - start
        if rollout_lib.uses_filters(self.sampling_controls()):
            batch["is_ratio"] = np.asarray(jnp.broadcast_to(objectives.sampling_correction(
                batch["old_logprobs"], ro.sampling_logprobs_RN, mask_RN,
                g.importance_sampling_mode, g.importance_sampling_clip_max), (R, N)))
        dapo_weight = float(mask_RN.sum()) / g.steps_per_generation / self.config.batch_size
        batch["dapo_weight"] = np.full(R, dapo_weight, np.float32)
        first_step = self.generations * self.num_updates()
        self._log_samples(first_step, prompts, completions, per_func_RF, advantages_R, ro)
        self.generations += 1
        stats = self._stats(ro, rewards_R, per_func_RF, zero_std_R, row_fields)
        stats.update(time_rollout_s=ro.seconds, time_reward_s=reward_s,
                     time_reference_s=reference_s,
                     rollout_tokens_per_s=float(ro.lengths_R.sum()) / max(ro.seconds, 1e-9))
        if rollout_mem is not None:
            stats["peak_bytes_rollout"] = rollout_mem
        batch.update({f"stat_{k}": np.full(R, v, np.float32) for k, v in stats.items()})
        order = np.asarray(jax.random.permutation(jax.random.fold_in(rng, 1), R))
        return {k: v[order] for k, v in batch.items()}

    def _stats(self, ro, rewards_R, per_func_RF, zero_std_R, row_fields) -> dict[str, float]:
        """Host figures of one rollout batch (reward per function, accuracy, lengths)."""
        stats = {"reward": float(rewards_R.mean()), "reward_std": float(rewards_R.std()),
                 "frac_reward_zero_std": float(zero_std_R.mean()),
                 "completion_length": float(ro.lengths_R.mean()),
                 "completion_length_max": float(ro.lengths_R.max()),
                 "clipped_ratio": float(ro.truncated_R.mean())}
        for i, name in enumerate(self.reward_funcs.names):
            stats[f"rewards/{name}"] = float(per_func_RF[:, i].mean())
            stats[f"rewards/{name}_std"] = float(per_func_RF[:, i].std())
        verifiers = [n for n in self.reward_funcs.names if n in ("arithmetic", "exact")]
        if verifiers:
            i = self.reward_funcs.names.index(verifiers[0])
            stats["accuracy"] = float((per_func_RF[:, i] > 0).mean())
        return stats

    def _log_samples(self, first_step, prompts, completions, per_func_RF, advantages_R, ro):
        every = int(self.config.rl.log_samples_every)
        last_step = first_step + self.num_updates()
        if every <= 0 or jax.process_index() != 0:
            return
        if first_step == 0 or first_step // every != last_step // every:
            samples_lib.write_samples(self.config.workdir, first_step + 1, prompts,
                                      completions, self.reward_funcs.names, per_func_RF,
                                      advantages_R, ro.finish_reason)

    def minibatch(self, batch, index):
        """Rows [part * batch_size, (part + 1) * batch_size) of the shuffled rollout batch."""
        part = index % self.config.grpo.steps_per_generation
        rows = self.config.batch_size
        return {k: jax.lax.dynamic_slice_in_dim(v, part * rows, rows) for k, v in batch.items()}

    # ------------------------------------------------------------------ loss
    def loss(self, model, side, batch, rng):
        """The clipped surrogate (+ beta x KL) aggregated as `grpo.loss_type`."""
        g, N = self.config.grpo, int(self.config.rl.max_completion_length)
        logp_RN, entropy_RN = sequences.completion_logprobs(
            model, batch, float(self.config.rl.temperature), N)
        mask_RN = batch["completion_mask"]
        log_w = objectives.log_importance_weights(logp_RN, batch["old_logprobs"], mask_RN,
                                                  g.importance_sampling_level)
        epsilon_high = g.epsilon_high if g.epsilon_high > 0 else g.epsilon
        per_token_RN, low, high = objectives.clipped_surrogate(
            log_w, batch["advantages"], g.epsilon, epsilon_high)
        if "is_ratio" in batch:
            per_token_RN = per_token_RN * batch["is_ratio"]
        kl_RN = jnp.zeros_like(logp_RN)
        if g.beta > 0:
            kl_RN = kl_lib.per_token_kl(logp_RN, batch["ref_logprobs"], g.kl_estimator)
            if g.use_bias_correction_kl:  # the samples came from pi_old, not pi_theta
                kl_RN = kl_RN * jnp.exp(log_w)
            per_token_RN = per_token_RN + g.beta * kl_RN
        per_token_RN = jnp.broadcast_to(per_token_RN, mask_RN.shape)
        loss_sum, weight = aggregate(per_token_RN, mask_RN, g.loss_type, N,
                                     jnp.sum(batch["dapo_weight"]))
        # All rows masked (every group's rewards equal): weight 1 keeps the per-rollout
        # figures below readable; the loss sum is 0 then.
        weight = jax.lax.stop_gradient(jnp.where(weight > 0, weight, 1.0))
        valid_RN = batch["completion_tokens"]  # every sampled token, masked or not
        tokens = jnp.maximum(jnp.sum(valid_RN), 1.0)

        def token_mean(x):
            return jax.lax.stop_gradient(jnp.sum(jnp.broadcast_to(x, valid_RN.shape) * valid_RN)
                                         / tokens * weight)

        sums = {"weight": weight, "kl": token_mean(kl_RN), "entropy": token_mean(entropy_RN),
                "clip_ratio/low_mean": token_mean(low), "clip_ratio/high_mean": token_mean(high),
                "clip_ratio/region_mean": token_mean(low + high)}
        for key, value_R in batch.items():
            if key.startswith("stat_"):
                sums[key[5:]] = jnp.mean(value_R) * weight
        return loss_sum, sums

    def count(self, batch):
        """(tokens, FLOPs) the updates of one rollout batch train on (each row per pass)."""
        tokens = int(jnp.sum(batch["segment_ids"])) * int(self.config.grpo.num_iterations)
        return tokens, tokens * self.flops_per_token()

    # ------------------------------------------------------------------ state, eval
    def state_dict(self):
        """Rollout batches prepared so far (names the rollout log files on resume)."""
        return {"generations": self.generations}

    def load_state_dict(self, state):
        """Restore `state_dict`."""
        self.generations = int(state.get("generations", 0))

    def evaluate(self, models, step):
        """Greedy answer accuracy on grpo.eval_file (prompt/answer JSONL), if set."""
        g = self.config.grpo
        if not g.eval_file:
            return {}
        from llm.train.sft import answer_accuracy, read_eval_rows

        rows = read_eval_rows(g.eval_file)[: g.eval_examples]
        return {"eval_answer_accuracy": answer_accuracy(
            models.policy(), self.tokenizer, rows, g.eval_verifier,
            int(self.config.rl.max_completion_length))}


def _peak_memory() -> float | None:
    """Peak device bytes in use so far (accelerators; None on CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    return float(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
