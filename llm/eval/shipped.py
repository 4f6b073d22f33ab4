"""Writes the shipped arithmetic task rows (`llm/eval/tasks/*.jsonl`):
`python -m llm.eval.shipped` regenerates them byte for byte.

The demo fine-tunes on difficulty 1 only, so difficulties 2 and 3 (and the multiple-choice
set, built from difficulty 2) are questions it never trained on. Difficulty 1 has only 200
distinct questions, all of which the demo's 4000 training rows hold: there it measures
what SFT learned, not generalisation.
"""

from __future__ import annotations

import json
import pathlib
import random

from llm.data import synthetic

SEED = 2026  # the demo trains on seed 0 and checks on seed 1
ROWS = 100


def held_out(difficulty: int, n: int, seed: int) -> list[tuple[str, int]]:
    """n distinct (question, answer) pairs of a difficulty, drawn with `seed`."""
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < n:
        question, answer = synthetic.arithmetic_problem(rng, difficulty)
        if question not in seen:
            seen.add(question)
            rows.append((question, answer))
    return rows


def write(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write the generation rows per difficulty and the multiple-choice rows."""
    written = []
    for difficulty in (1, 2, 3):
        path = out_dir / f"arithmetic_d{difficulty}.jsonl"
        lines = [json.dumps({"prompt": q, "answer": str(a), "difficulty": difficulty})
                 for q, a in held_out(difficulty, ROWS, SEED + difficulty)]
        path.write_text("\n".join(lines) + "\n")
        written.append(path)
    rng, lines = random.Random(SEED), []
    for question, answer in held_out(2, ROWS, SEED + 10):
        misses = rng.sample([-10, -2, -1, 1, 2, 10], 3)
        choices = [answer, *(answer + m for m in misses)]
        rng.shuffle(choices)
        lines.append(json.dumps({"question": question,
                                 "choices": [synthetic.format_answer(c) for c in choices],
                                 "label": choices.index(answer)}))
    path = out_dir / "arithmetic_mc.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return [*written, path]


if __name__ == "__main__":
    for written_path in write(pathlib.Path(__file__).parent / "tasks"):
        print(f"wrote {written_path}")
