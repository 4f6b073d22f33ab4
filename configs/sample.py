"""Sampling from a trained model: `scripts/sample.py --config=configs/sample.py[:chat]`."""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Every sampling control as a key; `:chat` starts an interactive chat."""
    config = ml_collections.ConfigDict()
    config.init_from = ""  # a training workdir, checkpoints/<step>, or hf:DIR
    config.prompt = ""  # one prompt (text)
    config.prompts_file = ""  # JSONL: prompt | messages | prompt_ids per row
    config.output_file = ""  # JSONL out (default: print to stdout)
    config.chat = arg == "chat"  # interactive chat in the console (streams the reply)
    config.system = ""  # optional system message for chat
    config.temperature = 0.7  # 0 = greedy
    config.top_k = 0  # 0 = off
    config.top_p = 0.9
    config.min_p = 0.0
    config.repetition_penalty = 1.0  # CTRL-style, multiplicative; 1 = off
    config.presence_penalty = 0.0
    config.frequency_penalty = 0.0
    config.max_new_tokens = 256
    config.min_new_tokens = 0
    config.stop = ()  # stop strings, matched on the decoded text
    config.stop_token_ids = ()
    config.seed = 0
    config.batch_size = 8
    config.beam_width = 1  # > 1: beam search (deterministic; sampling controls unused)
    config.max_len = 0  # cache length; 0 = the smallest multiple of 64 that fits
    config.chunk_size = 16  # decode steps between host checks (stop strings, streaming)
    config.decode_sharding = "training"  # or 'tensor': weights replicated over fsdp
    # Slice scan-stacked layer weights once per decode call (faster; one extra copy of the
    # layer weights while it runs); False slices them on every step instead.
    config.unstack_layers = True
    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.lock()
    return config
