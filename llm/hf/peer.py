"""What an outside peer (transformers, TRL, lm-eval) loads to run on our weights and token
ids, for benchmarks that time it beside us: an fp32 export with a word-level tokenizer whose
word `w{i}` is id i, and a callback timing the peer trainer's optimiser steps."""

from __future__ import annotations

import time
from typing import Any


def export_for_peer(cfg: Any, params: Any, out_dir: str, *, pad: int = 0, eos: int = 1,
                    bos: int | None = 2, unk: int = 3) -> None:
    """fp32 transformers export of (cfg, params) plus a tokenizer mapping word `w{i}` to id
    i; the special tokens are the words of the ids given."""
    import tokenizers
    import transformers

    from llm.hf import convert

    convert.export_hf(cfg, params, out_dir, dtype="float32")
    vocab = {f"w{i}": i for i in range(cfg.vocab_size)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=f"w{unk}"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    specials = {"pad_token": f"w{pad}", "eos_token": f"w{eos}", "unk_token": f"w{unk}"}
    if bos is not None:
        specials["bos_token"] = f"w{bos}"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok,
                                         **specials).save_pretrained(out_dir)


def words(ids: Any) -> str:
    """Token ids as the text `export_for_peer`'s tokenizer encodes back to them."""
    return " ".join(f"w{int(t)}" for t in ids)


def step_timer() -> Any:
    """A transformers TrainerCallback whose `seconds` lists each optimiser step's wall time."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()
