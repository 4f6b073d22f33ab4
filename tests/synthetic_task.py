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
    """Next-token CE on `packed_rows`, batched by grain with a checkpointable iterator.

    As in `llm/data/loaders.py`, process p reads batches p, p + count, ... of one global
    stream, so the global batches and the iterator state do not depend on the process
    count (`fixed_shards=True`: each process shuffles its own rows instead, a stream that
    cannot be resharded).
    """

    name = "synthetic"

    def __init__(self, config, fixed_shards: bool = False):
        super().__init__(config)
        self.fixed_shards = fixed_shards

    def datasets(self, config, mesh, workdir):
        import jax

        count, index = jax.process_count(), jax.process_index()

        def make(seed: int, n_rows: int):
            rows = packed_rows(n_rows, config.seq_len, config.model.vocab_size, seed)

            def iterator():
                if self.fixed_shards:
                    ds = grain.MapDataset.source(rows[index::count]).shuffle(seed=config.seed)
                    return iter(ds.repeat().batch(config.batch_size // count))
                ds = grain.MapDataset.source(rows).shuffle(seed=config.seed).repeat()
                return iter(ds.batch(config.batch_size // count)[index::count])

            return iterator

        return (DataSource(make(1, 64), batches_per_epoch=64 // config.batch_size,
                           reshardable=not self.fixed_shards), DataSource(make(2, 16)))

    def loss(self, model, side, batch, rng):
        logits, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"],
                          dropout_rng=rng)
        return losses.masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
