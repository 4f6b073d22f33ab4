"""Supervised fine-tuning: masked CE on assistant tokens of packed chat examples.

Full, LoRA, QLoRA or prefix training comes from the shared `peft.*` section; the base comes
from `init_from` (a pretraining workdir, a checkpoint or `hf:DIR`), whose tokenizer the
data is prepared with. Evaluation adds exact-match accuracy on held-out prompts.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from llm import losses
from llm.train.pretrain import PretrainTask


def base_tokenizer_dir(init_from: str) -> pathlib.Path | None:
    """The tokenizer directory that comes with `init_from` (a workdir, step dir or hf:DIR)."""
    if not init_from:
        return None
    path = pathlib.Path(init_from[3:] if init_from.startswith("hf:") else init_from)
    for candidate in (path / "tokenizer", path.parent.parent / "tokenizer", path):
        if (candidate / "tokenizer.model").exists() or (candidate / "tokenizer.json").exists():
            return candidate
    return None


class SftTask(PretrainTask):
    """Masked next-token CE where only assistant tokens are targets."""

    name = "sft"
    kind = "sft"

    def loader(self):
        from llm.data import loaders

        return loaders.sft_loader

    def datasets(self, config, mesh, workdir):
        tokenizer_dir = base_tokenizer_dir(config.init_from)
        if tokenizer_dir is not None and not config.data.tokenizer.path:
            config.data.tokenizer.path = str(tokenizer_dir)  # the base model's vocabulary
        return super().datasets(config, mesh, workdir)

    def loss(self, model, batch, rng):
        logits_BTV, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"],
                              dropout_rng=rng)
        return losses.masked_cross_entropy(logits_BTV, batch["targets"], batch["loss_mask"])

    def evaluate(self, model, step):
        """Exact-match accuracy of greedy answers on `sft.eval_file` (prompt/answer JSONL)."""
        if not self.config.sft.eval_file:
            return {}
        return {"eval_exact_match": exact_match(model, self.config, self._tokenizer())}

    def _tokenizer(self):
        from llm.data.tokenizer import Tokenizer

        return Tokenizer.load(pathlib.Path(self.config.workdir) / "tokenizer")


def exact_match(model, config, tokenizer) -> float:
    """Fraction of held-out prompts whose greedy completion is exactly the answer.

    Greedy decoding reproduces the answer exactly iff, fed the answer (teacher forcing),
    the argmax at every answer position is the answer's next token: one batched forward
    pass scores every example without a decode loop.
    """
    from llm.data import chat

    rows = [json.loads(line) for line in pathlib.Path(config.sft.eval_file).read_text()
            .splitlines() if line.strip()][: config.sft.eval_examples]
    sequences, masks = [], []
    for row in rows:
        messages = [{"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": str(row["answer"])}]
        ids, mask = chat.render_messages(tokenizer, messages)
        sequences.append(ids)
        masks.append(mask)
    T = max(len(s) for s in sequences)
    tokens = np.zeros((len(rows), T), np.int32)
    target_mask = np.zeros((len(rows), T), bool)
    for i, (ids, mask) in enumerate(zip(sequences, masks, strict=True)):
        tokens[i, : len(ids)] = ids
        target_mask[i, : len(ids) - 1] = np.asarray(mask[1:], bool)
    logits_BTV, _ = jax.jit(lambda t: model(t))(jnp.asarray(tokens))
    predicted = np.asarray(jnp.argmax(logits_BTV, axis=-1))
    correct = (predicted[:, :-1] == tokens[:, 1:]) | ~target_mask[:, :-1]
    return float(np.mean(np.all(correct, axis=1)))
