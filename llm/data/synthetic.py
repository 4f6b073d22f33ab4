"""Synthetic-data generators (a registry), starting with verifiable arithmetic.

`generate('arithmetic', out_dir, n=..., difficulty=..., seed=..., heldout=k)` writes:

  sft.jsonl         {"messages": [user question, assistant answer]}
  preference.jsonl  {"prompt", "chosen" (right answer), "rejected" (a near miss)}
  rl.jsonl          {"prompt", "answer"}
  heldout.jsonl     {"prompt", "answer"}: k distinct questions (only when k > 0)

Held-out questions are drawn first and no training row asks one of them, compared by exact
prompt: easy difficulties have few distinct questions (200 at difficulty 1), so two draws
repeat often and n-gram decontamination cannot see a five-word prompt.

`check_arithmetic_answer(completion, answer)` is the exact-answer verifier used by the demo
and RL rewards. `register` adds generators. Data written by the project's own model
(verified preference pairs, rejection-sampled SFT rows) comes from `scripts/label.py`'s
`sample` and `verifier` modes (`llm/label/`).
"""

from __future__ import annotations

import json
import pathlib
import random
import re
from collections.abc import Callable, Container, Iterator

from llm.data import DataError

GENERATORS: dict[str, Callable] = {}


def register(name: str):
    """Decorator adding a generator `fn(out_dir, n, difficulty, seed, heldout) -> dict`."""
    def wrap(fn):
        GENERATORS[name] = fn
        return fn
    return wrap


def generate(name: str, out_dir, n: int = 1000, difficulty: int = 1, seed: int = 0,
             heldout: int = 0) -> dict[str, pathlib.Path]:
    """Run a registered generator; returns the files it wrote by role."""
    if name not in GENERATORS:
        raise DataError(f"unknown synthetic generator {name!r}; have {sorted(GENERATORS)}")
    if heldout < 0:
        raise DataError(f"heldout must be >= 0, got {heldout}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return GENERATORS[name](out, n, difficulty, seed, heldout)


def arithmetic_problem(rng: random.Random, difficulty: int) -> tuple[str, int]:
    """A question and its exact integer answer; difficulty 1..5 sets digits and operators."""
    if not 1 <= difficulty <= 5:
        raise DataError(f"arithmetic difficulty must be in 1..5, got {difficulty}")
    digits = difficulty
    ops = ["+", "-"] if difficulty == 1 else ["+", "-", "*"]
    terms = 2 if difficulty <= 2 else 3
    expr = str(rng.randint(0, 10**digits - 1))
    for _ in range(terms - 1):
        op = rng.choice(ops)
        bound = 10 ** max(1, digits - 1) if op == "*" else 10**digits
        expr += f" {op} {rng.randint(0, bound - 1)}"
    return f"What is {expr}?", int(eval(expr, {"__builtins__": {}}))  # noqa: S307 - own digits


def format_answer(answer: int) -> str:
    """The reference assistant reply for an answer."""
    return f"The answer is {answer}."


_ANSWER = re.compile(r"answer is\s*(-?\d+)", re.IGNORECASE)
_LAST_INT = re.compile(r"-?\d+")


def check_arithmetic_answer(completion: str, answer) -> bool:
    """True iff the completion's stated answer ('answer is N', else its last integer) is exact."""
    m = _ANSWER.search(completion)
    found = m.group(1) if m else (_LAST_INT.findall(completion) or [None])[-1]
    if found is None:
        return False
    try:
        return int(found) == int(answer)
    except (TypeError, ValueError):
        return False


def _problems(rng: random.Random, difficulty: int, skip: Container[str],
              problem: Callable[[random.Random, int], tuple[str, int]] = arithmetic_problem
              ) -> Iterator[tuple[str, int]]:
    """Problems whose question is not in `skip`; a DataError when they run out."""
    misses = 0
    while True:
        question, answer = problem(rng, difficulty)
        if question not in skip:
            misses = 0
            yield question, answer
        elif (misses := misses + 1) > 10_000:
            raise DataError(f"difficulty {difficulty} has too few distinct questions left "
                            f"once {len(skip)} are held out; lower heldout")


def sums_problem(rng: random.Random, difficulty: int) -> tuple[str, int]:
    """`a + b` or `a - b` with operands below 10 * 2**difficulty (800 questions at 1)."""
    if not 1 <= difficulty <= 5:
        raise DataError(f"sums difficulty must be in 1..5, got {difficulty}")
    bound = 10 * 2**difficulty
    a, op, b = rng.randrange(bound), rng.choice("+-"), rng.randrange(bound)
    return f"What is {a} {op} {b}?", a + b if op == "+" else a - b


@register("arithmetic")
def arithmetic(out: pathlib.Path, n: int, difficulty: int, seed: int, heldout: int = 0
               ) -> dict[str, pathlib.Path]:
    """Write SFT, preference and RL files of n arithmetic questions each (plus held-out)."""
    return _write(out, n, difficulty, seed, heldout, arithmetic_problem)


@register("sums")
def sums(out: pathlib.Path, n: int, difficulty: int, seed: int, heldout: int = 0
         ) -> dict[str, pathlib.Path]:
    """Like `arithmetic`, on `sums_problem`: enough distinct questions to hold out hundreds."""
    return _write(out, n, difficulty, seed, heldout, sums_problem)


def _write(out: pathlib.Path, n: int, difficulty: int, seed: int, heldout: int,
           problem: Callable[[random.Random, int], tuple[str, int]]
           ) -> dict[str, pathlib.Path]:
    rng = random.Random(seed)
    held: dict[str, int] = {}
    for question, answer in _problems(rng, difficulty, held, problem):
        if len(held) == heldout:
            break
        held[question] = answer
    paths = {k: out / f"{k}.jsonl" for k in ("sft", "preference", "rl")}
    if heldout:
        paths["heldout"] = out / "heldout.jsonl"
        paths["heldout"].write_text("".join(json.dumps({"prompt": q, "answer": str(a)}) + "\n"
                                            for q, a in held.items()))
    files = {k: open(paths[k], "w") for k in ("sft", "preference", "rl")}  # noqa: SIM115
    problems = _problems(rng, difficulty, held, problem)
    try:
        for _ in range(n):
            question, answer = next(problems)
            wrong = answer + rng.choice([-10, -2, -1, 1, 2, 10])
            files["sft"].write(json.dumps({"messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": format_answer(answer)}]}) + "\n")
            files["preference"].write(json.dumps({
                "prompt": question, "chosen": format_answer(answer),
                "rejected": format_answer(wrong)}) + "\n")
            files["rl"].write(json.dumps({"prompt": question, "answer": str(answer)}) + "\n")
    finally:
        for f in files.values():
            f.close()
    return paths
