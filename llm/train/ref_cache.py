"""Reference log-probs computed once over a preference dataset (`dpo.precompute_ref_log_probs`).

Before the first step the frozen starting model scores every pair of the train and
validation splits; the table is stored under `workdir/ref_logps/<key>.npz`, the key a hash of
(the prepared records' bytes, the reference's weights, `seq_len`, the truncation mode), and
written atomically (a run killed while writing leaves no partial table). A rerun or resume
with the same key reads the table; any change of data, weights or length computes a new one.
The step then looks each pair up by its `record_index` and runs no reference forward, and no
reference weights are held beside the policy.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
import zipfile
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from llm import sharding
from llm.data import DataError, buckets, loaders
from llm.data.checksums import file_digest

CACHE_DIR = "ref_logps"
SPLITS = ("train", "validation")
STREAMS = ("chosen", "rejected")


def reference_view(model: nnx.Module, peft_method: str) -> nnx.Module:
    """The starting model as the reference: under PEFT the same base with the adapters
    zeroed (sharing every base array), otherwise the model itself."""
    if peft_method == "none":
        return model
    from llm.peft import lora

    graphdef, adapters, rest = nnx.split(model, lora.ADAPTERS, ...)
    zeroed = jax.jit(lambda a: jax.tree.map(jax.numpy.zeros_like, a))(adapters)
    return nnx.merge(graphdef, zeroed, rest)


def data_hash(prepared_dir: pathlib.Path) -> str:
    """Digest of the chosen and rejected record files of every split."""
    digest = hashlib.sha256()
    records = pathlib.Path(prepared_dir) / "records"
    for split in SPLITS:
        for stream in STREAMS:
            for path in sorted((records / split).glob(f"{stream}-*")):
                digest.update(f"{path.relative_to(records)}|{file_digest(path)}|".encode())
    return digest.hexdigest()


def cache_key(prepared_dir, reference_hash: str, seq_len: int, truncation_mode: str) -> str:
    """The table's name: what its values depend on."""
    parts = {"data": data_hash(prepared_dir), "reference": reference_hash,
             "seq_len": int(seq_len), "truncation_mode": truncation_mode}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _split_pairs(prepared_dir, split: str, seq_len: int, truncation_mode: str):
    """The loader's pair source of a split (None when the split has no pairs)."""
    try:
        chosen, rejected = loaders.preference_records(prepared_dir, split)
    except DataError:
        return None, 0
    meta = loaders.read_meta(prepared_dir)
    return loaders.pair_source(chosen, rejected, seq_len, meta["pad_id"],
                               truncation_mode), len(chosen)


def score_split(reference: nnx.Module, pair_logps: Callable, pairs, records: int, mesh,
                batch_size: int, seq_len: int, pad_to_multiple_of: int, label: str
                ) -> np.ndarray:
    """[records, 2] reference log-prob sums (chosen, rejected) of every pair in `pairs`, NaN
    for records the source leaves out; every process computes (and holds) the whole table.
    `pair_logps(model, batch)` gives the [2P] sums, chosen rows first (the task's own)."""
    graphdef, state = nnx.split(reference)
    score = jax.jit(lambda s, b: pair_logps(nnx.merge(graphdef, s), b)[0],
                    out_shardings=sharding.replicated(mesh))
    table = np.full((records, 2), np.nan, np.float32)
    share = batch_size // jax.process_count()
    start = time.perf_counter()
    for at in range(0, len(pairs), batch_size):
        index = np.arange(at, at + batch_size) % len(pairs)  # the last batch wraps round
        mine = index[jax.process_index() * share:(jax.process_index() + 1) * share]
        rows = [pairs[int(i)] for i in mine]
        host = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        host = buckets.trim_batch(host, seq_len, pad_to_multiple_of)
        logps_2P = np.asarray(score(state, sharding.place_batch(host, mesh)))
        record_B = pairs.records[index]  # every process's rows, not only this one's
        table[record_B, 0], table[record_B, 1] = logps_2P[:batch_size], logps_2P[batch_size:]
        done = min(at + batch_size, len(pairs))
        if jax.process_index() == 0 and (done == len(pairs) or at // batch_size % 20 == 19):
            elapsed = time.perf_counter() - start
            print(f"reference log-probs ({label}): {done}/{len(pairs)} pairs, "
                  f"{done / elapsed:.0f} pairs/s, ETA {elapsed * (len(pairs) / done - 1):.0f} s",
                  flush=True)
    return table


def load_or_compute(reference: nnx.Module, pair_logps: Callable, reference_hash: str,
                    prepared_dir, workdir, mesh, batch_size: int, seq_len: int,
                    truncation_mode: str, pad_to_multiple_of: int) -> dict[str, np.ndarray]:
    """{split: [records, 2] table} from `workdir/ref_logps/<key>.npz`, computed (and written
    atomically by process 0) when no table has this key."""
    key = cache_key(prepared_dir, reference_hash, seq_len, truncation_mode)
    path = pathlib.Path(workdir) / CACHE_DIR / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                tables = {split: stored[split] for split in stored.files}
            print(f"reference log-probs: read {path}", flush=True)
            return tables
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            # A derived table, recomputable from what the run already has.
            print(f"reference log-probs: {path} is unreadable ({error}); computing it again",
                  flush=True)
    tables = {}
    for split in SPLITS:
        pairs, records = _split_pairs(prepared_dir, split, seq_len, truncation_mode)
        if pairs is not None and len(pairs):
            tables[split] = score_split(reference, pair_logps, pairs, records, mesh,
                                        batch_size, seq_len, pad_to_multiple_of, split)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **tables)
        tmp.replace(path)
        print(f"reference log-probs: wrote {path}", flush=True)
    return tables


def lookup(table: np.ndarray, record_B: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """`ref_chosen_logps` / `ref_rejected_logps` rows of a batch from its record indices."""
    rows_B2 = table[np.asarray(record_B, np.int64)]
    if np.isnan(rows_B2).any():
        raise DataError("a pair has no precomputed reference log-probs (the data or "
                        "truncation mode changed under the table); delete the table to "
                        "recompute it", where)
    return {"ref_chosen_logps": rows_B2[:, 0], "ref_rejected_logps": rows_B2[:, 1]}
