"""PPO with a reward model: the policy samples one completion per prompt, the reward model
scores it (plus weighted verifiers), a per-token KL penalty to the reference shapes the
reward, a value model turns rewards into GAE advantages, and the clipped policy and value
losses train policy and value together (Ziegler et al. 2019; TRL's names).

Per rollout batch (`prepare`, host code): rollouts on the policy's own arrays
(llm/rl/rollout.py), reward-model scores on the same token rows, reference log-probs,
value estimates, GAE and whitening (llm/rl/ppo.py), then the KL controller moves beta. The
batch feeds num_ppo_epochs x num_mini_batches optimiser updates, each epoch in its own
shuffled order. The value is a head on the policy's trunk (`ppo.value_model=shared`) or a
model of its own started from the reward model (`separate`, score head included), with its
own learning rate (`ppo.value_lr`). Per-rollout host figures travel as per-row `stat_*`
constants, so a resumed run logs them again exactly; beta is checkpointed task state.
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm import scoring
from llm.model import Dense
from llm.rl import kl as kl_lib
from llm.rl import objectives, sequences
from llm.rl import ppo as ppo_lib
from llm.rl import rewards as rewards_lib
from llm.rl import rollout as rollout_lib
from llm.rl import samples as samples_lib
from llm.train.grpo import GrpoTask
from llm.train.ppo_checks import check_config, check_models, check_tokenizers, value_path
from llm.train.task import REFERENCE, SideModel

VALUE_HEAD = "value_head"  # shared: a [D, 1] head on the policy's trunk
VALUE_MODEL = "value_model"  # separate: a Transformer with the reward model's score head


def completion_values(model, h_RTD: jax.Array | None, batch: dict, N: int) -> jax.Array:
    """values_RN: the value of the state that emits each completion token (float32)."""
    if hasattr(model, VALUE_HEAD):
        return getattr(model, VALUE_HEAD)(sequences.completion_hidden(h_RTD, batch, N))[
            ..., 0].astype(jnp.float32)
    value_model = getattr(model, VALUE_MODEL)
    v_RTD, _ = value_model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
    return getattr(value_model, scoring.HEAD)(sequences.completion_hidden(v_RTD, batch, N))[
        ..., 0].astype(jnp.float32)


@partial(jax.jit, static_argnames=("graphdef", "N"))
def _values(graphdef: nnx.GraphDef, params, frozen, rows: dict, *, N: int) -> jax.Array:
    model = nnx.merge(graphdef, params, frozen)
    h_RTD = None
    if hasattr(model, VALUE_HEAD):
        h_RTD, _ = model.hidden(rows["tokens"], rows["positions"], rows["segment_ids"])
    return completion_values(model, h_RTD, rows, N)


@partial(jax.jit, static_argnames=("graphdef",))
def _scores(graphdef: nnx.GraphDef, states: tuple, rows: dict) -> jax.Array:
    model = nnx.merge(graphdef, *states)
    return scoring.sequence_scores(model, rows["tokens"], rows["positions"],
                                   rows["segment_ids"])


class PpoTask(GrpoTask):
    """PPO on RL prompt rows; shares GRPO's prompt data, sampling controls and EOS ids."""

    name = "ppo"

    def __init__(self, config):
        super().__init__(config)
        p = config.ppo
        self.fresh = (VALUE_HEAD,) if p.value_model == "shared" else (VALUE_MODEL,)
        self.kl_ctl = ppo_lib.KLController(float(p.beta), float(p.target_kl),
                                           float(p.kl_horizon))
        self.value_cfg = None  # separate: the value model's ModelConfig (from its checkpoint)

    # ------------------------------------------------------------------ config, models
    def check(self) -> None:
        """Every ppo.* / rl.* key, the reward (and value) checkpoints, before any rollout."""
        check_config(self.config, self.sampling_controls())
        self.value_cfg = check_models(self.config)
        names = rewards_lib.split_names(self.config.rl.reward_funcs)
        self.reward_funcs = rewards_lib.load(
            self.config.rl.reward_funcs, self.config.rl.reward_weights,
            self.config.rl.reward_modules) if names else None

    def prompts_per_rollout(self) -> int:
        """Prompts (= completions) in one rollout batch (all processes)."""
        return self.config.batch_size * int(self.config.ppo.num_mini_batches)

    def num_updates(self) -> int:
        """num_ppo_epochs passes x num_mini_batches minibatches per rollout batch."""
        return int(self.config.ppo.num_ppo_epochs * self.config.ppo.num_mini_batches)

    def datasets(self, config, mesh, workdir):
        """GRPO's prompt stream; then the reward and value models must read its tokens."""
        train, evaluation = super().datasets(config, mesh, workdir)
        check_tokenizers(self.config, train.tokenizer_dir, self.tokenizer)
        return train, evaluation

    def build(self, model):
        """The policy with its value: a fresh head (shared) or a value model (separate)."""
        cfg = model.cfg
        if self.config.ppo.value_model == "shared":
            setattr(model, VALUE_HEAD, Dense(cfg.d_model, 1, ("embed", None), cfg,
                                             nnx.Rngs(params=scoring.HEAD_SEED),
                                             std=1.0 / cfg.d_model))
            return model
        from llm.model import Transformer

        setattr(model, VALUE_MODEL, scoring.add_score_head(
            Transformer(self.value_cfg, nnx.Rngs(params=scoring.HEAD_SEED))))
        return model

    def initialise(self, model, mesh, rules) -> None:
        """separate: the value model starts as the reward model, score head included."""
        if self.config.ppo.value_model != "separate":
            return
        from llm.loading import load_model

        loaded = load_model(value_path(self.config), mesh, rules,
                            build=scoring.add_score_head)
        nnx.update(getattr(model, VALUE_MODEL), loaded.params)

    def param_groups(self):
        """The value head / model at `ppo.value_lr` (when set)."""
        lr = float(self.config.ppo.value_lr)
        if lr <= 0:
            return {}
        name = self.fresh[0]
        return {"value": (lambda path: path.split("/")[0] == name,
                          lr / float(self.config.optim.lr))}

    def side_models(self):
        """The reward model, and the reference whenever the KL penalty can be non-zero."""
        models = {"reward": SideModel(self.config.ppo.reward_model_path,
                                      build=scoring.add_score_head)}
        if self.kl_ctl.beta > 0:
            models["reference"] = REFERENCE
        return models

    # ------------------------------------------------------------------ rollout batch
    def prepare(self, models, host_batch, rng):
        """Rollouts, scores, reference log-probs, values, GAE; then beta moves."""
        p, rl = self.config.ppo, self.config.rl
        N = int(rl.max_completion_length)
        ro = rollout_lib.rollout(
            models.graphdef, nnx.merge_state(models.params, models.frozen),
            host_batch["prompt_tokens"], host_batch["prompt_lengths"], num_generations=1,
            max_new_tokens=N, rng=jax.random.fold_in(rng, 0), eos_ids=self.eos_ids(),
            mesh=models.mesh, unstack_layers=bool(rl.unstack_layers),
            **self.sampling_controls())
        rows = sequences.training_rows(ro.prompt_tokens_RP, ro.prompt_lengths_R,
                                       ro.completions_RN, ro.lengths_R)
        R, mask_RN = len(ro.lengths_R), sequences.completion_mask(ro.lengths_R, N)
        start = time.perf_counter()
        scores_R = np.asarray(_scores(models.side_graphdefs["reward"], models.side["reward"],
                                      rows), np.float64)
        prompts, completions, per_func_RF = self._verifier_rewards(ro, host_batch)
        reward_s = time.perf_counter() - start
        start = time.perf_counter()
        ref_RN = ro.logprobs_RN
        if "reference" in models.side:
            ref_RN = np.asarray(sequences.reference_logprobs(
                models.side_graphdefs["reference"], models.side["reference"], rows,
                temperature=float(rl.temperature), N=N))
        reference_s, start = time.perf_counter() - start, time.perf_counter()
        values_RN = np.asarray(_values(models.graphdef, models.params, models.frozen, rows,
                                       N=N), np.float64) * mask_RN
        value_s = time.perf_counter() - start
        kl_RN = np.asarray(kl_lib.per_token_kl(jnp.asarray(ro.logprobs_RN), jnp.asarray(ref_RN),
                                               p.kl_estimator)) * mask_RN
        total_R = ppo_lib.missing_eos_scores(scores_R, ro.truncated_R, p.missing_eos_penalty)
        if per_func_RF is not None:
            total_R = total_R + per_func_RF @ self.reward_funcs.weights
        beta = self.kl_ctl.beta
        rewards_RN = ppo_lib.token_rewards(total_R, kl_RN, mask_RN, beta)
        adv_RN, returns_RN = ppo_lib.gae(rewards_RN, values_RN, mask_RN, p.gamma, p.lam)
        if p.whiten_advantages:
            adv_RN = ppo_lib.whiten(adv_RN, mask_RN)
        kl_R = kl_RN.sum(-1)
        self.kl_ctl.update(float(kl_R.mean()), R * jax.process_count())
        first_step = self.generations * self.num_updates()
        self._log_rollout(first_step, prompts, completions, scores_R, per_func_RF,
                          adv_RN.sum(-1) / np.maximum(mask_RN.sum(-1), 1), ro.finish_reason)
        self.generations += 1
        stats = {"objective/scores": scores_R.mean(), "objective/kl": kl_R.mean(),
                 "objective/non_score_reward": -beta * kl_R.mean(),
                 "objective/rlhf_reward": total_R.mean() - beta * kl_R.mean(),
                 "objective/beta": beta, "val/num_eos_tokens": float((~ro.truncated_R).sum()),
                 "val/explained_variance": ppo_lib.explained_variance(values_RN, returns_RN,
                                                                      mask_RN),
                 "completion_length": ro.lengths_R.mean(), "time_rollout_s": ro.seconds,
                 "time_reward_s": reward_s, "time_reference_s": reference_s,
                 "time_value_s": value_s}
        stats.update(self._verifier_stats(per_func_RF))
        batch = {**rows, "completion_mask": mask_RN, "advantages": adv_RN.astype(np.float32),
                 "returns": returns_RN.astype(np.float32),
                 "old_values": values_RN.astype(np.float32),
                 "old_logprobs": ro.logprobs_RN.astype(np.float32),
                 "shuffle": np.asarray(jax.random.uniform(
                     jax.random.fold_in(rng, 1), (R, int(p.num_ppo_epochs))), np.float32)}
        batch.update({f"stat_{k}": np.full(R, v, np.float32) for k, v in stats.items()})
        return batch

    def _verifier_rewards(self, ro, host_batch):
        """(prompts, completions, rewards per verifier [R, F] or None) of one rollout."""
        hidden = set(self.eos_ids()) | set(getattr(self.tokenizer, "role_ids", {}).values())
        prompts = [self.tokenizer.decode([int(t) for t in ro.prompt_tokens_RP[r, :n]
                                          if int(t) not in hidden])
                   for r, n in enumerate(ro.prompt_lengths_R)]
        completions = rollout_lib.completion_texts(self.tokenizer, ro, self.eos_ids())
        if self.reward_funcs is None:
            return prompts, completions, None
        R, N = len(completions), int(self.config.rl.max_completion_length)
        row_fields = {"answer": [str(a) for a in host_batch["answer"]],
                      "completion_ids": [ro.completions_RN[r, :n].tolist()
                                         for r, n in enumerate(ro.lengths_R)],
                      "format_pattern": [self.config.rl.format_pattern] * R,
                      "max_completion_length": [N] * R}
        _, per_func_RF, _ = rewards_lib.score(self.reward_funcs, prompts, completions,
                                              row_fields)
        return prompts, completions, per_func_RF

    def _verifier_stats(self, per_func_RF) -> dict[str, float]:
        if per_func_RF is None:
            return {}
        names = self.reward_funcs.names
        stats = {f"rewards/{n}": float(per_func_RF[:, i].mean()) for i, n in enumerate(names)}
        verifiers = [n for n in names if n in ("arithmetic", "exact")]
        if verifiers:
            stats["accuracy"] = float((per_func_RF[:, names.index(verifiers[0])] > 0).mean())
        return stats

    def _log_rollout(self, first_step, prompts, completions, scores_R, per_func_RF,
                     advantages_R, finish_reason):
        every = int(self.config.rl.log_samples_every)
        last_step = first_step + self.num_updates()
        if every <= 0 or jax.process_index() != 0:
            return
        if first_step == 0 or first_step // every != last_step // every:
            names = ["reward_model", *(self.reward_funcs.names if per_func_RF is not None
                                       else [])]
            columns_RF = scores_R[:, None] if per_func_RF is None else np.concatenate(
                [scores_R[:, None], per_func_RF], 1)
            samples_lib.write_samples(self.config.workdir, first_step + 1, prompts,
                                      completions, names, columns_RF, advantages_R,
                                      finish_reason)

    def minibatch(self, batch, index):
        """Minibatch `index % M` of epoch `index // M`'s own shuffled order of the rows."""
        M, rows = int(self.config.ppo.num_mini_batches), self.config.batch_size
        order_R = jnp.argsort(jnp.take(batch["shuffle"], index // M, axis=1))
        pick = jax.lax.dynamic_slice_in_dim(order_R, (index % M) * rows, rows)
        return {k: jnp.take(v, pick, axis=0) for k, v in batch.items()}

    # ------------------------------------------------------------------ loss
    def loss(self, model, side, batch, rng):
        """Clipped policy loss + vf_coef x clipped value loss - entropy_coef x entropy,
        summed over completion tokens (weight = their count)."""
        p, N = self.config.ppo, int(self.config.rl.max_completion_length)
        h_RTD, _ = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
        logp_RN, entropy_RN = sequences.token_logprobs(
            model, h_RTD, batch, float(self.config.rl.temperature), N)
        values_RN = completion_values(model, h_RTD, batch, N)
        mask_RN = batch["completion_mask"]
        log_ratio_RN = logp_RN - batch["old_logprobs"]
        pg_RN, low_RN, high_RN = objectives.clipped_surrogate(
            log_ratio_RN, batch["advantages"], p.cliprange, p.cliprange)
        vf_RN, vf_clipped_RN = ppo_lib.clipped_value_loss(
            values_RN, batch["old_values"], batch["returns"], p.cliprange_value)
        per_token_RN = pg_RN + p.vf_coef * vf_RN - p.entropy_coef * entropy_RN
        weight = jnp.maximum(jnp.sum(mask_RN), 1.0)

        def total(x_RN):
            return jax.lax.stop_gradient(jnp.sum(x_RN * mask_RN))

        sums = {"weight": weight, "loss/policy_avg": total(pg_RN),
                "loss/value_avg": total(vf_RN), "policy/entropy_avg": total(entropy_RN),
                "policy/clipfrac_avg": total(low_RN + high_RN),
                "val/clipfrac_avg": total(vf_clipped_RN),
                "policy/approxkl_avg": total(0.5 * jnp.square(log_ratio_RN)),
                "val/ratio": total(jnp.exp(log_ratio_RN))}
        for key, value_R in batch.items():
            if key.startswith("stat_"):
                sums[key[5:]] = jnp.mean(value_R) * weight
        return jnp.sum(per_token_RN * mask_RN), sums

    def count(self, batch):
        """(tokens, FLOPs) the updates of one rollout batch train on (each row per epoch)."""
        tokens = int(jnp.sum(batch["segment_ids"])) * int(self.config.ppo.num_ppo_epochs)
        return tokens, tokens * self.flops_per_token()

    # ------------------------------------------------------------------ state, eval
    def state_dict(self):
        """Rollout batches so far and the KL controller's beta."""
        return {"generations": self.generations, "beta": self.kl_ctl.beta}

    def load_state_dict(self, state):
        """Restore `state_dict`."""
        self.generations = int(state.get("generations", 0))
        self.kl_ctl.beta = float(state.get("beta", self.config.ppo.beta))

    def evaluate(self, models, step):
        """Mean reward-model score and verifier accuracy on ppo.eval_file, if set."""
        p = self.config.ppo
        if not p.eval_file:
            return {}
        from llm.train.ppo_eval import heldout_scores
        from llm.train.sft import read_eval_rows

        scorer = scoring.Scorer(models.side_graphdefs["reward"],
                                models.side["reward"][0], self.tokenizer,
                                self.config.rl.max_prompt_length
                                + self.config.rl.max_completion_length)
        score, accuracy = heldout_scores(models.policy(), self.tokenizer, scorer,
                                         read_eval_rows(p.eval_file)[: p.eval_examples],
                                         p.eval_verifier, int(self.config.rl.max_completion_length))
        return {"eval_score": score, "eval_answer_accuracy": accuracy}
