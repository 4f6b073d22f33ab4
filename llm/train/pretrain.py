"""Pretraining task: next-token cross-entropy on packed windows with segment ids."""

from __future__ import annotations

import pathlib

import jax
import ml_collections

from llm import losses
from llm.model import Transformer
from llm.train.task import DataSource, Task


def prepared_dataset(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                     tokenizer_path: str = "") -> pathlib.Path:
    """`data.path` as a prepared directory: used as is, or raw inputs prepared into workdir
    (with the tokenizer at `tokenizer_path` when `data.tokenizer.path` names none)."""
    from llm.data import prepare as prepare_lib

    path = config.data.path
    if not path:
        raise ValueError("--config.data.path: required (raw text/JSONL/Parquet inputs or a "
                         "prepared dataset directory)")
    missing = [p for p in path.split(",") if p.strip() and not pathlib.Path(p.strip()).exists()]
    if missing:  # several raw inputs may be given, comma-separated, as data.inputs takes them
        raise ValueError(f"--config.data.path={path}: no such file or directory: "
                         f"{', '.join(missing)}")
    if prepare_lib.is_prepared(path):
        prepare_lib.check_unchanged(path)
        return pathlib.Path(path)
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.inputs = path
    data.output_dir = str(workdir / "data")
    if tokenizer_path and not data.tokenizer.path:
        data.tokenizer.path = tokenizer_path
    return prepare_lib.prepare(data)


def validation_batches(prepared: pathlib.Path, kind: str, config) -> int:
    """Full global validation batches (0 when the split is missing or too small)."""
    from llm.data import DataError, loaders

    try:
        return loaders.num_batches(prepared, "validation", kind, config.seq_len,
                                   config.batch_size)
    except DataError:  # no records for the split at all
        return 0


class PretrainTask(Task):
    """Causal LM on packed token windows."""

    name = "pretrain"
    kind = "pretrain"  # which prepared records and loader (llm/data/loaders.py)

    def loader(self):
        from llm.data import loaders

        return loaders.pretrain_loader

    def base_tokenizer(self) -> str:
        """The tokenizer raw inputs are prepared with when data.tokenizer.path is unset."""
        return ""

    def datasets(self, config, mesh, workdir):
        from llm.data import loaders
        from llm.data.tokenizer import Tokenizer

        prepared = prepared_dataset(config, workdir, self.base_tokenizer())
        self.prepared_dir = prepared  # for tasks that report on the records they load
        tokenizer = Tokenizer.load(prepared / "tokenizer")
        loader = self.loader()

        def make(split: str, shuffle: bool, epochs):
            return lambda: iter(loader(
                prepared, split, seq_len=config.seq_len,
                batch_size=config.batch_size // jax.process_count(), seed=config.seed,
                num_epochs=epochs, shard_index=jax.process_index(),
                shard_count=jax.process_count(), shuffle=shuffle))

        epochs = config.num_epochs or None
        train = DataSource(make("train", True, epochs), tokenizer_dir=prepared / "tokenizer",
                           vocab_size=tokenizer.vocab_size, reshardable=True,
                           batches_per_epoch=loaders.num_batches(
                               prepared, "train", self.kind, config.seq_len,
                               config.batch_size))
        if train.batches_per_epoch == 0:
            raise ValueError(f"--config.data.path={config.data.path}: the train split holds "
                             f"less than one batch (batch_size={config.batch_size}, "
                             f"seq_len={config.seq_len}); add data or lower batch_size")
        if config.eval.every_steps == 0:
            return train, None
        if validation_batches(prepared, self.kind, config) == 0:
            print(f"data.path={config.data.path}: the validation split holds less than one "
                  f"batch (batch_size={config.batch_size}), so no validation loss is reported; "
                  "raise data.split.validation or lower batch_size for one", flush=True)
            return train, None
        return train, DataSource(make("validation", False, 1))

    def loss(self, model: Transformer, side, batch, rng):
        logits_BTV, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"],
                              dropout_rng=rng)
        return losses.masked_cross_entropy(logits_BTV, batch["targets"], batch["loss_mask"],
                                           z_loss=self.config.train.z_loss)
