"""TRL's trainers on a tiny transformers Llama, for parity tests: the same weights imported
into ours, the same token rows in TRL's layout, and the trainers' own loss computation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

VOCAB = 96
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, intermediate_size=48,
             max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
             pad_token_id=0, eos_token_id=1, bos_token_id=2)


def hf_llama(seed: int, path, classification: bool = False):
    """A random tiny Llama (saved to `path`), float32, in eval mode."""
    config = transformers.LlamaConfig(**SMALL, num_labels=1)
    torch.manual_seed(seed)
    cls = (transformers.LlamaForSequenceClassification if classification
           else transformers.LlamaForCausalLM)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def tokenizer():
    """A word-level tokenizer over 'w0'..'w95' (pad w0, eos w1): TRL needs one to start."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0",
                                                eos_token="w1", bos_token="w2",
                                                unk_token="w3")


def pair_rows(pairs: int, length: int, seed: int = 0) -> dict:
    """Our preference batch (chosen_* / rejected_*) of right-padded rows, prompts of varied
    length and completions of varied length, plus TRL's view of the same tokens."""
    rng = np.random.default_rng(seed)
    ours, ids, attention, completion = {}, [], [], []
    for name in ("chosen", "rejected"):
        rows = {k: np.zeros((pairs, length), np.int32)
                for k in ("tokens", "targets", "positions", "segment_ids")}
        rows["loss_mask"] = np.zeros((pairs, length), np.float32)
        for p in range(pairs):
            prompt, answer = int(rng.integers(2, 6)), int(rng.integers(2, length - 7))
            n = prompt + answer
            seq = rng.integers(4, VOCAB, n)
            seq[-1] = 1  # EOS
            rows["tokens"][p, :n] = seq
            rows["targets"][p, :n - 1] = seq[1:]
            rows["positions"][p, :n] = np.arange(n)
            rows["segment_ids"][p, :n] = 1
            rows["loss_mask"][p, prompt - 1:n - 1] = 1.0  # targets that are completion tokens
            mask = np.zeros(length, np.int64)
            mask[prompt:n] = 1
            ids.append(rows["tokens"][p].astype(np.int64))
            attention.append((rows["segment_ids"][p] > 0).astype(np.int64))
            completion.append(mask)
        ours.update({f"{name}_{k}": v for k, v in rows.items()})
    trl_inputs = {"input_ids": torch.tensor(np.stack(ids)),
                  "attention_mask": torch.tensor(np.stack(attention)),
                  "completion_mask": torch.tensor(np.stack(completion))}
    return {"ours": ours, "trl": trl_inputs}


def tiny_dataset():
    """A few string pairs (TRL tokenises its dataset at start-up; the test batch is ours)."""
    rows = [{"prompt": "w5 w6", "chosen": " w7 w8", "rejected": " w9"}] * 4
    return datasets.Dataset.from_list(rows)


def last_metrics(trainer) -> dict:
    """The metrics TRL logged for the last computed batch."""
    return {k: v[-1] for k, v in trainer._metrics["train"].items() if v}


def paired_labels(trl_inputs: dict, pairs: int) -> dict:
    """The same rows in the layout of TRL's CPO / ORPO trainers (`chosen_input_ids`, ...,
    labels -100 outside the completion)."""
    ids, attention, completion = (trl_inputs[k] for k in
                                  ("input_ids", "attention_mask", "completion_mask"))
    labels = ids.masked_fill(completion == 0, -100)
    out = {}
    for name, rows in (("chosen", slice(0, pairs)), ("rejected", slice(pairs, 2 * pairs))):
        out.update({f"{name}_input_ids": ids[rows], f"{name}_attention_mask": attention[rows],
                    f"{name}_labels": labels[rows]})
    return out
