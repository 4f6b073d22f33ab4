"""A pretraining task over a small in-memory corpus, for loop tests without the data stack."""

from __future__ import annotations

import grain
import numpy as np

from llm import losses
from llm.train.task import DataSource, Task


def packed_rows(n_rows: int, seq_len: int, vocab: int, seed: int) -> list[dict]:
    """Rows of two packed 'documents' each: a repeating pattern the model can learn."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_rows):
        cut = int(rng.integers(seq_len // 4, 3 * seq_len // 4))
        start = int(rng.integers(0, vocab - 8))
        tokens = (start + np.arange(seq_len + 1) % 7) % vocab
        segments = np.where(np.arange(seq_len) < cut, 1, 2).astype(np.int32)
        positions = np.where(segments == 1, np.arange(seq_len), np.arange(seq_len) - cut)
        mask = np.ones(seq_len, np.float32)
        mask[cut - 1] = 0.0  # the last token of document 1 does not predict document 2
        rows.append({"tokens": tokens[:-1].astype(np.int32),
                     "targets": tokens[1:].astype(np.int32),
                     "positions": positions.astype(np.int32), "segment_ids": segments,
                     "loss_mask": mask})
    return rows


class SyntheticTask(Task):
    """Next-token CE on `packed_rows`, batched by grain with a checkpointable iterator."""

    name = "synthetic"

    def datasets(self, config, mesh, workdir):
        import jax

        count, index = jax.process_count(), jax.process_index()

        def make(seed: int, n_rows: int):
            rows = packed_rows(n_rows, config.seq_len, config.model.vocab_size, seed)
            rows = rows[index::count]  # each process reads its own shard

            def iterator():
                ds = grain.MapDataset.source(rows).shuffle(seed=config.seed).repeat()
                return iter(ds.batch(config.batch_size // count, drop_remainder=True))

            return iterator

        return (DataSource(make(1, 64), batches_per_epoch=64 // config.batch_size),
                DataSource(make(2, 16)))

    def loss(self, model, side, batch, rng):
        logits, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"],
                          dropout_rng=rng)
        return losses.masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
