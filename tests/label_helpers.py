"""Small pieces the labelling tests share: a byte tokenizer, a tiny model, candidates."""

from __future__ import annotations

import json
import pathlib

from flax import nnx

from llm.model import ModelConfig, Transformer


class ByteTokenizer:
    """Latin-1 bytes as tokens, plus BOS / EOS / PAD."""

    bos_id, eos_id, pad_id, vocab_size = 256, 257, 258, 259

    @property
    def eos_ids(self):
        return (self.eos_id,)

    def encode(self, text, add_bos=False, add_eos=False):
        return [256] * add_bos + list(text.encode("latin-1", "replace")) + [257] * add_eos

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("latin-1")


def tiny_model(seed: int = 0):
    """(graphdef, params) of a random one-layer byte-level Transformer."""
    cfg = ModelConfig(vocab_size=259, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                      head_dim=16, d_ff=64, max_seq_len=512, init_std=0.3)
    return nnx.split(Transformer(cfg, nnx.Rngs(seed)))


def write_candidates(out: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    """candidates.jsonl from {"id", "prompt", "responses"} rows."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "candidates.jsonl"
    path.write_text("".join(json.dumps({"row": {}, **r}) + "\n" for r in rows))
    return path


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """Every JSON line of a file."""
    return [json.loads(line) for line in open(path) if line.strip()]
