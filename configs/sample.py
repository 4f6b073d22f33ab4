"""Sampling from a trained model: `scripts/sample.py --config=configs/sample.py[:chat]`."""

from __future__ import annotations

import ml_collections

from llm.sampling.filters import DEFAULTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Every sampling control as a key; `:chat` starts an interactive chat."""
    config = ml_collections.ConfigDict()
    config.init_from = ""  # a training workdir, checkpoints/<step>, or hf:DIR
    config.prompt = ""  # one prompt (text)
    config.prompts_file = ""  # JSONL: prompt | messages | prompt_ids per row
    config.output_file = ""  # JSONL out (default: print to stdout)
    config.chat = arg == "chat"  # interactive chat in the console (streams the reply)
    config.system = ""  # optional system message for chat
    # The sampler's own defaults (one source): temperature 0.7 (0 = greedy), top_k 0 (off),
    # top_p 0.9, min_p 0, repetition_penalty 1 (CTRL-style, multiplicative; 1 = off),
    # presence and frequency penalties 0, max_new_tokens 128, min_new_tokens 0, seed 0.
    for key, value in DEFAULTS.items():
        config[key] = value
    config.stop = ()  # stop strings, matched on the decoded text
    config.stop_token_ids = ()
    config.batch_size = 8
    config.beam_width = 1  # > 1: beam search (deterministic; sampling controls unused)
    config.max_len = 0  # cache length; 0 = the smallest multiple of 64 that fits
    # A prompt longer than the context leaves for max_new_tokens is an error naming its
    # line; 'left' keeps its last tokens instead.
    config.truncate_prompt = ""
    config.chunk_size = 16  # decode steps between host checks (stop strings, streaming)
    # 'training': the training sharding as it is (no copy). 'tensor': a copy of the weights
    # replicated over fsdp (per-device weights |params| / tensor instead of / (fsdp * tensor)).
    config.decode_sharding = "training"
    # Slice scan-stacked layer weights once per decode call (faster; one extra copy of the
    # layer weights while it runs); False slices them on every step instead.
    config.unstack_layers = True
    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.lock()
    return config
