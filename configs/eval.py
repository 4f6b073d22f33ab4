"""Evaluation: `scripts/eval.py --config=configs/eval.py --config.init_from=DIR|hf:DIR
--config.tasks=arithmetic_mc,stdlib_bpb [--config.compare=DIR1,DIR2]`."""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Which model(s), which tasks, where the results go."""
    if arg:
        raise ValueError(f"configs/eval.py: no variants, got {arg!r}")
    config = ml_collections.ConfigDict()
    config.init_from = ""  # a training workdir, checkpoints/<step>, or hf:DIR
    config.compare = ""  # several models, comma-separated: one table, models by tasks
    config.tasks = "arithmetic_mc,stdlib_bpb"  # names (llm/eval/tasks, task_dirs) or paths
    config.task_dirs = ""  # more directories of task files, comma-separated
    config.output_file = ""  # results JSON (compare: also .md and .csv beside it)
    config.batch_size = 32  # continuations (or prompts) per call
    config.max_len = 0  # scored window in tokens; 0 = the model's max_seq_len
    config.add_bos = True  # prepend BOS, as the project's models are trained
    config.prefill_chunk = 64  # context tokens per compiled prefill call (a power of two)
    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.lock()
    return config
