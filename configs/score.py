"""Scoring rows with a reward model: `scripts/score.py --config=configs/score.py`."""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Reward-model scoring of prompt/response (or prompt/chosen/rejected) JSONL rows."""
    if arg:
        raise ValueError(f"configs/score.py: unknown variants {arg!r}; it takes none")
    config = ml_collections.ConfigDict()
    config.init_from = ""  # a reward-model workdir, checkpoints/<step>, or hf:DIR
    config.input_file = ""  # JSONL: prompt + response, or prompt + chosen + rejected
    config.output_file = ""  # JSONL out (never overwritten); "" prints to stdout
    config.seq_len = 512  # longest row in tokens (longer rows are an error, never cut)
    config.batch_size = 16  # rows per forward pass (a multiple of the mesh's data axis)
    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.lock()
    return config
