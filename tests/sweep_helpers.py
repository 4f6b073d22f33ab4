"""A small prepared corpus and sweep configs over it, for the sweep tests."""

import numpy as np

from configs.data import data_section
from configs.sweeps.base import sweep_config

WORDS = ("the quick brown fox jumps over a lazy dog while seven red birds sing softly "
         "near old stone walls").split()


def prepared_corpus(root):
    """Forty short random-word documents, prepared with a small tokenizer."""
    from llm.data import prepare as prepare_lib

    raw = root / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        (raw / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS, 400)) + ".\n")
    data = data_section()
    data.inputs, data.output_dir = str(raw), str(root / "prepared")
    data.num_workers, data.tokenizer.vocab_size, data.split.validation = 0, 300, 0.1
    data.dedup.near = False  # random-word documents are not near duplicates of each other
    return prepare_lib.prepare(data)


def tiny_sweep(folder, data_path, runs, **fixed):
    """A sweep of tiny 6-step pretraining runs on `data_path`, into `folder`."""
    sweep = sweep_config("configs/pretrain.py:model=tiny", runs=runs, fixed={
        "data.path": str(data_path), "batch_size": 8, "seq_len": 32, "total_steps": 6,
        "optim.warmup_steps": 2, "eval.every_steps": 6, "eval.steps": 1,
        "checkpoint.every_steps": 3, "log.every_steps": 1, "checkpoint.async_save": False,
        **fixed})
    sweep.folder = str(folder)
    return sweep
