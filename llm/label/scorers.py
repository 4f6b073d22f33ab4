"""The `verifier` and `reward` modes: score each response, pair higher over lower.

A scorer is `f(prompts, completions, **row_fields) -> list[float]`, TRL's reward signature,
so a registered verifier (`llm/rewards.py`) is one as it is; a reward model becomes one
through `reward_scorer`. Within a prompt every two distinct responses with different scores
make a pair (the higher one chosen). A verifier's pair has confidence 1 (an exact check); a
reward model's has |2 sigmoid(r_chosen - r_rejected) - 1|, the same scale as the AI judge's.
A prompt whose responses all score alike is skipped as `no_contrast`. The verifier mode also
writes `sft.jsonl`: every distinct response scoring at least `label.sft_threshold`, as a chat
row (rejection sampling).
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable, Sequence

from llm import rewards
from llm.label.store import Candidate, LabelError

Scorer = Callable[..., list[float]]


def verifier_scorer(name: str) -> Scorer:
    """The registered reward function `name` as a scorer; unknown names list the known."""
    try:
        rewards.get(name)
    except ValueError as error:
        raise LabelError(f"--config.label.verifier: {error}") from None
    return lambda prompts, completions, **fields: rewards.score(name, prompts, completions,
                                                                 **fields)


def reward_scorer(init_from: str, seq_len: int = 512, batch_size: int = 16
                  ) -> tuple[Scorer, str]:
    """A reward model (scalar head, `llm.scoring.Scorer`) as a scorer, and its model hash."""
    from llm.label.judge import model_hash
    from llm.scoring import Scorer as RewardModel

    try:
        model = RewardModel.load(init_from, seq_len=seq_len, batch_size=batch_size)
    except (OSError, ValueError) as error:
        raise LabelError(f"label.reward_model={init_from!r}: {error}") from None
    return (lambda prompts, completions, **fields: model.score(prompts, completions),
            model_hash(model.params))


def score_candidates(candidates: Sequence[Candidate], scorer: Scorer) -> list[list[float]]:
    """Each candidate's response scores, one scorer call per prompt's responses."""
    out = []
    for cand in candidates:
        k = len(cand.responses)
        fields = {key: [value] * k for key, value in cand.row.items()}
        try:
            scores = scorer([cand.prompt] * k, list(cand.responses), **fields)
        except ValueError as error:
            raise LabelError(f"prompt {cand.id!r}: {error}") from None
        if len(scores) != k:
            raise LabelError(f"prompt {cand.id!r}: the scorer returned {len(scores)} scores "
                             f"for {k} responses")
        out.append([float(s) for s in scores])
    return out


def pair_records(candidates: Sequence[Candidate], scores: Sequence[Sequence[float]], *,
                 judge: str, exact: bool, done: set[str] = frozenset()) -> list[dict]:
    """Pair and skip records of the prompts not in `done` (ids this judge already ranked)."""
    records = []
    for cand, found in zip(candidates, scores, strict=True):
        if cand.id in done:
            continue
        first = {}  # each distinct text once, at its first index
        for i, text in enumerate(cand.responses):
            first.setdefault(text, i)
        distinct = sorted(first.values())
        pairs = [(i, j) if found[i] > found[j] else (j, i)
                 for n, i in enumerate(distinct) for j in distinct[n + 1:]
                 if found[i] != found[j]]
        common = {"judge": judge, "id": cand.id, "scores": found}
        if not pairs:
            records.append({**common, "kind": "skip", "reason": "no_contrast"})
        for better, worse in pairs:
            margin = found[better] - found[worse]
            confidence = 1.0 if exact else abs(2.0 / (1.0 + math.exp(-margin)) - 1.0)
            records.append({**common, "kind": "pair", "chosen": better, "rejected": worse,
                            "confidence": round(confidence, 6)})
    return records


def write_sft(candidates: Sequence[Candidate], scores: Sequence[Sequence[float]],
              path: pathlib.Path, threshold: float) -> int:
    """Write the responses scoring >= threshold as chat rows (replacing the file); count."""
    rows = []
    for cand, found in zip(candidates, scores, strict=True):
        for text in dict.fromkeys(t for t, s in zip(cand.responses, found, strict=True)
                                  if s >= threshold):
            rows.append({"messages": [{"role": "user", "content": cand.prompt},
                                      {"role": "assistant", "content": text}], "id": cand.id})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)
    return len(rows)
