"""GRPO's loss against TRL's `GRPOTrainer._compute_loss` on the same batch and weights.

A tiny model of ours is exported to Hugging Face (float32); both sides get the same
prompts, completions, advantages, old and reference log-probs. The old log-probs are the
current ones perturbed, so ratios leave [1 - eps, 1 + eps] and both clipped branches run.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

from llm.config import load_config  # noqa: E402 - after the importorskip guards
from llm.hf import convert as hf  # noqa: E402
from llm.model import ModelConfig, Transformer  # noqa: E402
from llm.rl import sequences  # noqa: E402
from llm.train.grpo import GrpoTask  # noqa: E402

R, P, N, VOCAB, TEMPERATURE = 4, 6, 5, 200, 0.7


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(our model, the Hugging Face copy of it, a tokenizer for TRL)."""
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    cfg = dataclasses.replace(ModelConfig(), vocab_size=VOCAB, d_model=64, n_layers=2,
                              n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96, max_seq_len=64)
    model = Transformer(cfg, nnx.Rngs(0))
    out = tmp_path_factory.mktemp("grpo_trl") / "hf"
    hf.export_hf(cfg, nnx.split(model)[1], str(out), dtype="float32")
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(tok_models.WordLevel(vocab, unk_token="t0")),
        pad_token="t0", eos_token="t1")
    return model, AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32), tokenizer


def batch(model, seed=0):
    """Same-length prompts (HF positions ignore the attention mask), ragged completions."""
    rng = np.random.default_rng(seed)
    prompt_RP = rng.integers(2, VOCAB, (R, P)).astype(np.int32)
    completion_RN = rng.integers(2, VOCAB, (R, N)).astype(np.int32)
    lengths_R = np.array([5, 3, 4, 1], np.int32)
    rows = sequences.training_rows(prompt_RP, np.full(R, P, np.int32), completion_RN, lengths_R)
    mask_RN = sequences.completion_mask(lengths_R, N)
    logp_RN, _ = sequences.completion_logprobs(model, {k: jnp.asarray(v) for k, v in
                                                       rows.items()}, TEMPERATURE, N)
    logp_RN = np.asarray(logp_RN)
    old_RN = logp_RN + rng.normal(0, 0.4, (R, N)).astype(np.float32)  # ratios ~ e^(+-0.4)
    ref_RN = logp_RN + rng.normal(0, 0.3, (R, N)).astype(np.float32)
    advantages_R = np.array([1.2, -0.7, 0.4, -1.5], np.float32)
    ours = {**rows, "completion_mask": mask_RN, "completion_tokens": mask_RN,
            "advantages": advantages_R, "old_logprobs": old_RN, "ref_logprobs": ref_RN,
            "dapo_weight": np.full(R, mask_RN.sum() / R, np.float32)}
    completion_ids = np.where(mask_RN > 0, completion_RN, 0)
    theirs = {"prompt_ids": torch.tensor(prompt_RP, dtype=torch.long),
              "prompt_mask": torch.ones(R, P, dtype=torch.long),
              "completion_ids": torch.tensor(completion_ids, dtype=torch.long),
              "completion_mask": torch.tensor(mask_RN, dtype=torch.long),
              "advantages": torch.tensor(advantages_R),
              "old_per_token_logps": torch.tensor(old_RN),
              "ref_per_token_logps": torch.tensor(ref_RN),
              "num_items_in_batch": torch.tensor(float(mask_RN.sum()))}
    return ours, theirs


@pytest.fixture(scope="module")
def trainer(models, tmp_path_factory):
    """One TRL trainer; each case sets the attributes `_compute_loss` reads."""
    from datasets import Dataset

    _, hf_model, tokenizer = models
    args = trl.GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=R,
        num_generations=2, max_completion_length=N, temperature=TEMPERATURE, use_cpu=True,
        report_to=[], gradient_accumulation_steps=1, beta=0.04,
        bf16=False)  # TRL's default autocasts to bf16, on CPU too
    trainer = trl.GRPOTrainer(model=hf_model, reward_funcs=lambda completions, **kw: [0.0] *
                              len(completions), args=args,
                              train_dataset=Dataset.from_dict({"prompt": ["a"] * R}),
                              processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


def trl_loss(trainer, theirs, loss_type, importance_sampling_level, beta, epsilon,
             epsilon_high) -> float:
    trainer.loss_type, trainer.importance_sampling_level = loss_type, importance_sampling_level
    trainer.beta, trainer.epsilon_low, trainer.epsilon_high = beta, epsilon, epsilon_high
    with torch.no_grad():
        return float(trainer._compute_loss(trainer.model, theirs))


def our_loss(model, ours, tmp_path, **settings) -> float:
    overrides = [f"grpo.{k}={v}" for k, v in settings.items()]
    config = load_config("configs/grpo.py:model=tiny", [
        f"workdir={tmp_path}", f"rl.max_completion_length={N}",
        f"rl.temperature={TEMPERATURE}", *overrides])
    task = GrpoTask(config)
    loss_sum, sums = task.loss(model, {}, {k: jnp.asarray(v) for k, v in ours.items()}, None)
    return float(loss_sum / sums["weight"])


CASES = [dict(loss_type=t, importance_sampling_level=level)
         for t in ("grpo", "bnpo", "dr_grpo", "dapo") for level in ("token", "sequence")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c.values()))
def test_loss_matches_trl(models, trainer, tmp_path, case):
    model = models[0]
    ours, theirs = batch(model)
    for beta in (0.04, 0.0):  # with the KL term, and the surrogate alone
        settings = dict(case, beta=beta, epsilon=0.2, epsilon_high=0.28)
        expected = trl_loss(trainer, theirs, **settings)
        got = our_loss(model, ours, tmp_path / str(beta), **settings)
        assert abs(got - expected) < 1e-5, (beta, got, expected)
