"""DPO and its relatives on preference pairs: sigmoid (cDPO with label smoothing), IPO,
hinge, robust, and the reference-free SimPO and ORPO; `dpo.loss_type` takes one name or a
comma-separated list weighted by `dpo.loss_weights`, as TRL's `loss_type` list does.

A batch holds `chosen_*` and `rejected_*` rows (llm/data/loaders.preference_loader); both
run in one forward pass (concatenated on the batch axis), and log-probs sum over completion
tokens only (the loss mask). The reference is the frozen starting model (REFERENCE: under
LoRA / QLoRA / prefix the same base with adapters off). Metrics carry TRL's names:
`rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies`,
`logps/chosen`, `logps/rejected`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm import losses
from llm.train.pretrain import PretrainTask
from llm.train.sft import answer_accuracy, base_tokenizer_dir, read_eval_rows
from llm.train.task import REFERENCE

REFERENCE_FREE = ("simpo", "orpo", "sft")
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", *REFERENCE_FREE)
UNPAIRED = ("kto",)  # trained on unpaired rows (llm/train/kto.py), never mixed with pairs


def parse_loss_types(dpo) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """(names, weights) from `dpo.loss_type` and `dpo.loss_weights`; errors name the key."""
    names = tuple(n.strip() for n in str(dpo.loss_type).split(",") if n.strip())
    bad = [n for n in names if n not in LOSS_TYPES + UNPAIRED]
    if not names or bad:
        raise ValueError(f"dpo.loss_type={dpo.loss_type!r}: expected one or more (comma-"
                         f"separated) of {', '.join(LOSS_TYPES)}, or kto alone")
    if set(names) & set(UNPAIRED) and len(names) > 1:
        raise ValueError(f"dpo.loss_type={dpo.loss_type!r}: kto learns from unpaired rows "
                         "(prompt/completion/label) and cannot be mixed with the paired losses "
                         f"({', '.join(LOSS_TYPES)}); use dpo.loss_type=kto alone")
    if not str(dpo.loss_weights).strip():
        return names, (1.0,) * len(names)
    try:
        weights = tuple(float(w) for w in str(dpo.loss_weights).split(","))
    except ValueError:
        raise ValueError(f"dpo.loss_weights={dpo.loss_weights!r}: expected comma-separated "
                         "numbers") from None
    if len(weights) != len(names):
        raise ValueError(f"dpo.loss_weights={dpo.loss_weights!r}: {len(weights)} weights for "
                         f"{len(names)} loss types ({dpo.loss_type!r})")
    return names, weights


def pair_loss(name: str, dpo, logps: dict) -> jax.Array:
    """Per-pair loss_P of one loss type from the pair's log-prob sums and counts."""
    delta_P = logps["chosen_ratio"] - logps["rejected_ratio"]
    avg_c_P = logps["chosen"] / jnp.maximum(logps["chosen_n"], 1.0)
    avg_r_P = logps["rejected"] / jnp.maximum(logps["rejected_n"], 1.0)
    if name == "sigmoid":
        return losses.dpo_sigmoid(delta_P, dpo.beta, dpo.label_smoothing)
    if name == "hinge":
        return losses.dpo_hinge(delta_P, dpo.beta)
    if name == "ipo":
        avg_delta_P = (logps["chosen_ratio"] / jnp.maximum(logps["chosen_n"], 1.0)
                       - logps["rejected_ratio"] / jnp.maximum(logps["rejected_n"], 1.0))
        return losses.dpo_ipo(avg_delta_P, dpo.beta)
    if name == "robust":
        return losses.dpo_robust(delta_P, dpo.beta, dpo.label_smoothing)
    if name == "simpo":
        return losses.simpo(avg_c_P - avg_r_P, dpo.beta, dpo.simpo_gamma, dpo.label_smoothing)
    if name == "sft":
        return chosen_nll(logps)
    if name == "orpo":  # + the SFT NLL on the chosen answers' tokens (their batch mean)
        return chosen_nll(logps) + losses.orpo_odds_ratio(avg_c_P, avg_r_P, dpo.beta)
    raise ValueError(f"dpo.loss_type: unknown {name!r}")


def chosen_nll(logps: dict) -> jax.Array:
    """The SFT term (TRL's `sft` loss type, ORPO's NLL): mean NLL over the chosen answers'
    tokens of the (micro-)batch."""
    return -jnp.sum(logps["chosen"]) / jnp.maximum(jnp.sum(logps["chosen_n"]), 1.0)


def both_rows(batch: dict, key: str, prefix: str = "") -> jax.Array:
    """`<prefix>chosen_<key>` then `<prefix>rejected_<key>` on one batch axis: [2P, ...]."""
    return jnp.concatenate([batch[f"{prefix}chosen_{key}"], batch[f"{prefix}rejected_{key}"]],
                           axis=0)


def pair_logps(model, batch: dict, rng=None) -> tuple[jax.Array, jax.Array]:
    """(log-prob sums logps_2P, completion-token counts n_2P): chosen rows first, then
    rejected, in one forward pass."""
    def both(key):
        return both_rows(batch, key)

    logits_2PTV, _ = model(both("tokens"), both("positions"), both("segment_ids"),
                           dropout_rng=rng)
    return losses.sequence_logps(logits_2PTV, both("targets"), both("loss_mask"))


def preference_metrics(chosen_rewards_P, rejected_rewards_P, chosen_logps_P,
                       rejected_logps_P) -> dict[str, jax.Array]:
    """TRL's `rewards/*` and `logps/*` metrics as sums over pairs (the loop takes means)."""
    chosen_rewards_P = jax.lax.stop_gradient(chosen_rewards_P)
    rejected_rewards_P = jax.lax.stop_gradient(rejected_rewards_P)
    return {"rewards/chosen": jnp.sum(chosen_rewards_P),
            "rewards/rejected": jnp.sum(rejected_rewards_P),
            "rewards/margins": jnp.sum(chosen_rewards_P - rejected_rewards_P),
            "rewards/accuracies": jnp.sum((chosen_rewards_P > rejected_rewards_P)
                                          .astype(jnp.float32)),
            "logps/chosen": jnp.sum(jax.lax.stop_gradient(chosen_logps_P)),
            "logps/rejected": jnp.sum(jax.lax.stop_gradient(rejected_logps_P))}


def report_long_pairs(prepared, workdir, seq_len: int, mode: str, key: str,
                      records=None) -> int:
    """Count, print and list (`workdir/removed_pairs.jsonl`, `removed_row` rows) the train
    and validation pairs longer than seq_len; returns the train split's count. `records`
    (prepared, split) -> (chosen, rejected or None) reads another row kind's records."""
    import json
    import pathlib

    from llm.data import DataError, loaders
    from llm.data.report import removed_row

    rows, counts = [], {}
    for split in ("train", "validation"):
        try:
            chosen, rejected = (records or loaders.preference_records)(prepared, split)
        except DataError:  # no such split
            continue
        long = loaders.long_pairs(chosen, rejected, seq_len)
        counts[split] = len(long)
        longest = chosen.lengths if rejected is None else np.maximum(chosen.lengths,
                                                                     rejected.lengths)
        rows += [removed_row(f"{prepared}/{split}", int(i), "load", f"too_long:{mode}",
                             value=int(longest[i]), threshold=seq_len) for i in long]
    if rows and jax.process_index() == 0:
        print(f"{key}={mode}: {counts} pairs longer than seq_len={seq_len} "
              f"{'left out' if mode == 'skip' else 'truncated (' + mode + ')'}; listed in "
              f"{pathlib.Path(workdir) / 'removed_pairs.jsonl'}", flush=True)
        target = pathlib.Path(workdir) / "removed_pairs.jsonl"
        tmp = target.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(target)
    return counts.get("train", 0)


class PreferenceTask(PretrainTask):
    """Prepared preference pairs (`chosen_*` / `rejected_*` rows) as the training data.

    A pair longer than `seq_len` is never cut silently: `<task>.truncation_mode` is 'skip'
    (left out), 'keep_start' or 'keep_end' (TRL's names); either way each such pair is
    counted, printed and listed in `workdir/removed_pairs.jsonl`.
    """

    kind = "preference"

    def records(self, prepared, split: str):
        """(chosen, rejected) record sets of a split (rejected None for unpaired rows)."""
        from llm.data import loaders

        return loaders.preference_records(prepared, split)

    @property
    def truncation_mode(self) -> str:
        """How pairs longer than seq_len are handled (this task's section's key)."""
        return self.config[self.name].truncation_mode

    @property
    def pad_to_multiple_of(self) -> int:
        """Batch width rounding (llm/data/buckets.py); this task's section's key, checked."""
        from llm.data import buckets

        return buckets.check_multiple(self.config[self.name].pad_to_multiple_of,
                                      f"{self.name}.pad_to_multiple_of")

    def check_truncation(self) -> None:
        """`<task>.truncation_mode` is one the loader knows; `<task>.pad_to_multiple_of` is
        valid."""
        from llm.data.loaders import TRUNCATION_MODES

        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"{self.name}.truncation_mode={self.truncation_mode!r}: expected "
                             f"one of {', '.join(TRUNCATION_MODES)}")
        if self.pad_to_multiple_of > self.config.seq_len:  # checks the value, too
            print(f"{self.name}.pad_to_multiple_of={self.pad_to_multiple_of} exceeds seq_len="
                  f"{self.config.seq_len}: every batch keeps seq_len columns", flush=True)

    def trim(self, host_batch: dict) -> dict:
        """The host batch cut to its length bucket instead of `seq_len` columns."""
        from llm.data import buckets

        return buckets.trim_batch(host_batch, self.config.seq_len, self.pad_to_multiple_of)

    def prepare(self, models, host_batch, rng):
        return self.trim(host_batch)

    def prepare_eval(self, models, host_batch):
        return self.trim(host_batch)

    def loader(self):
        import functools

        from llm.data import loaders

        return functools.partial(loaders.preference_loader,
                                 truncation_mode=self.truncation_mode)

    def datasets(self, config, mesh, workdir):
        train, held_out = super().datasets(config, mesh, workdir)
        long = report_long_pairs(self.prepared_dir, workdir, config.seq_len,
                                 self.truncation_mode, f"{self.name}.truncation_mode",
                                 self.records)
        if self.truncation_mode == "skip" and train.batches_per_epoch:
            pairs = len(self.records(self.prepared_dir, "train")[0])
            train.batches_per_epoch = (pairs - long) // config.batch_size
        return train, held_out

    def base_tokenizer(self) -> str:
        """Pairs are tokenised with the starting model's vocabulary."""
        tokenizer_dir = base_tokenizer_dir(self.config.init_from)
        return str(tokenizer_dir) if tokenizer_dir is not None else ""

    def count(self, batch):
        rows, length = batch["chosen_tokens"].shape
        tokens = 2 * int(rows) * int(length)  # a chosen and a rejected row per pair
        return tokens, tokens * self.flops_per_token()


class DpoTask(PreferenceTask):
    """Direct preference optimisation and its relatives on prepared preference pairs
    (`get_task('dpo')` gives `llm.train.kto.KtoTask` for `dpo.loss_type=kto`)."""

    name = "dpo"
    unpaired = False  # whether the task trains on unpaired rows (KtoTask)

    def __init__(self, config):
        super().__init__(config)
        self.loss_types, self.loss_weights = parse_loss_types(config.dpo)
        self.ref_tables: dict[str, np.ndarray] | None = None  # precomputed, by split
        if (self.loss_types == UNPAIRED) != self.unpaired:
            raise ValueError(f"dpo.loss_type={config.dpo.loss_type!r} is not a loss of "
                             f"{type(self).__name__}; build the task with "
                             "llm.train.get_task('dpo')(config)")

    def check(self) -> None:
        """The `dpo.*` keys, before any data is prepared."""
        self.check_truncation()
        dpo = self.config.dpo
        if dpo.beta <= 0:
            raise ValueError(f"dpo.beta={dpo.beta}: expected > 0")
        limit = 0.5 if "robust" in self.loss_types else 1.0
        if not 0 <= dpo.label_smoothing < limit:
            raise ValueError(f"dpo.label_smoothing={dpo.label_smoothing}: expected in "
                             f"[0, {limit})")
        if dpo.eval_file:
            read_eval_rows(dpo.eval_file)
        if self.precompute and not self.needs_reference:
            raise ValueError(f"dpo.precompute_ref_log_probs=True: dpo.loss_type="
                             f"{dpo.loss_type!r} uses no reference model, so there is nothing "
                             "to precompute; leave it False")

    @property
    def needs_reference(self) -> bool:
        """Whether any loss type compares against the reference model."""
        return any(name not in REFERENCE_FREE for name in self.loss_types)

    @property
    def precompute(self) -> bool:
        """Whether reference log-probs come from a table computed before training."""
        return bool(self.config.dpo.precompute_ref_log_probs)

    def side_models(self):
        return {"reference": REFERENCE} if self.needs_reference and not self.precompute else {}

    def initialise(self, model, mesh, rules):
        """With `dpo.precompute_ref_log_probs`, read or compute the reference log-prob table
        from the starting model (the reference: adapters off under PEFT)."""
        if not self.precompute:
            return
        from llm.peft import lora
        from llm.train.ref_cache import load_or_compute, reference_view

        reference = reference_view(model, self.config.peft.method)
        self.ref_tables = load_or_compute(
            reference, pair_logps, lora.base_hash(nnx.state(reference)), self.prepared_dir,
            self.config.workdir, mesh, int(self.config.batch_size), int(self.config.seq_len),
            self.truncation_mode, self.pad_to_multiple_of)

    def with_reference(self, batch: dict, split: str) -> dict:
        """`batch` plus its pairs' precomputed reference log-probs (when they are on)."""
        if self.ref_tables is None:
            return batch
        from llm.train.ref_cache import CACHE_DIR, lookup

        where = f"{self.config.workdir}/{CACHE_DIR} ({split} split)"
        return {**batch, **lookup(self.ref_tables[split], batch["record_index"], where)}

    def prepare(self, models, host_batch, rng):
        return self.with_reference(self.trim(host_batch), "train")

    def prepare_eval(self, models, host_batch):
        return self.with_reference(self.trim(host_batch), "validation")

    def flops_per_token(self) -> float:
        """Policy forward + backward, plus the reference's forward when it runs in the step."""
        from llm import metrics

        train = metrics.train_flops_per_token(self.model_cfg, self.config.seq_len)
        return train * (4 / 3 if self.needs_reference and not self.precompute else 1.0)

    def loss(self, model, side, batch, rng):
        logps_2P, n_2P = pair_logps(model, batch, rng)
        pairs = batch["chosen_tokens"].shape[0]
        logps = {"chosen": logps_2P[:pairs], "rejected": logps_2P[pairs:],
                 "chosen_n": n_2P[:pairs], "rejected_n": n_2P[pairs:]}
        if self.needs_reference:
            if "ref_chosen_logps" in batch:  # precomputed (dpo.precompute_ref_log_probs)
                ref_2P = both_rows(batch, "logps", prefix="ref_")
            else:
                ref_2P, _ = pair_logps(side["reference"], batch)
            ref_2P = jax.lax.stop_gradient(ref_2P)
            logps["chosen_ratio"] = logps["chosen"] - ref_2P[:pairs]
            logps["rejected_ratio"] = logps["rejected"] - ref_2P[pairs:]
            rewards = (logps["chosen_ratio"], logps["rejected_ratio"])
            shown = (logps["chosen"], logps["rejected"])
        else:  # SimPO / ORPO work on (and, as TRL's CPO and ORPO, report) mean token log-probs
            logps["chosen_ratio"] = logps["rejected_ratio"] = jnp.zeros_like(logps["chosen"])
            rewards = shown = (logps["chosen"] / jnp.maximum(logps["chosen_n"], 1.0),
                               logps["rejected"] / jnp.maximum(logps["rejected_n"], 1.0))
        dpo = self.config.dpo
        loss_P = sum(weight * pair_loss(name, dpo, logps)
                     for name, weight in zip(self.loss_types, self.loss_weights, strict=True))
        metrics = preference_metrics(dpo.beta * rewards[0], dpo.beta * rewards[1], *shown)
        if {"orpo", "sft"} & set(self.loss_types):
            metrics["nll_loss"] = jax.lax.stop_gradient(chosen_nll(logps)) * pairs
        return jnp.sum(loss_P), {**metrics, "weight": jnp.asarray(pairs, jnp.float32)}

    def evaluate(self, models, step):
        """Answer accuracy of greedy completions on `dpo.eval_file` (prompt/answer JSONL)."""
        dpo = self.config.dpo
        if not dpo.eval_file:
            return {}
        import pathlib

        from llm.data.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(pathlib.Path(self.config.workdir) / "tokenizer")
        rows = read_eval_rows(dpo.eval_file)[: dpo.eval_examples]
        return {"eval_answer_accuracy": answer_accuracy(
            models.policy(), tokenizer, rows, dpo.eval_verifier, dpo.eval_max_new_tokens)}
