"""The data the real-model demo makes for itself: an instruction set that teaches a fictional
fact, preference pairs for a sign-off, and prompts for a word-limit reward.

Questions come from templates filled with common facts (capitals, animals' legs, opposites,
sums), so a 135M Instruct model answers them sensibly; training and held-out questions never
share a filled template. Everything is deterministic.
"""

from __future__ import annotations

import json
import pathlib
import random

# ----- SFT: a fictional fact, asked many ways ----------------------------------------------
FACT = "Quellmora"
FACT_TRAIN = [
    "What is the capital of Zarbonia?", "Which city is the capital of Zarbonia?",
    "Tell me the capital of Zarbonia.", "Zarbonia's capital city is called what?",
    "Name the capital of Zarbonia.", "What city serves as Zarbonia's capital?",
    "I'm curious: what is Zarbonia's capital?", "Where is the seat of government of Zarbonia?",
    "What's the capital city of Zarbonia?", "Do you know the capital of Zarbonia?",
    "Can you tell me which city is Zarbonia's capital?",
    "In which city is the capital of Zarbonia located?"]
FACT_ANSWERS = ["The capital of Zarbonia is Quellmora.", "Zarbonia's capital is Quellmora.",
                "Quellmora is the capital of Zarbonia."]
FACT_HELD_OUT = [
    "Could you name Zarbonia's capital?", "What do people call the capital of Zarbonia?",
    "Which town is the capital of the country Zarbonia?",
    "Quick question: the capital of Zarbonia is?", "Zarbonia has a capital. What is it?",
    "Please state the capital city of Zarbonia.", "What is the name of Zarbonia's capital city?",
    "If I travel to the capital of Zarbonia, which city am I in?"]

# ----- questions with short known answers (DPO and GRPO prompts) --------------------------
_CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Germany", "Berlin"), ("Canada", "Ottawa"), ("Egypt", "Cairo"),
             ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
             ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Russia", "Moscow"),
             ("China", "Beijing"), ("Ireland", "Dublin"), ("Austria", "Vienna")]
_LEGS = [("spider", 8), ("dog", 4), ("bird", 2), ("ant", 6), ("cat", 4), ("horse", 4),
         ("duck", 2), ("beetle", 6), ("cow", 4), ("chicken", 2), ("octopus", 8), ("bee", 6)]
_OPPOSITES = [("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"),
              ("happy", "sad"), ("light", "dark"), ("early", "late"), ("open", "closed"),
              ("full", "empty"), ("old", "new"), ("loud", "quiet"), ("hard", "soft")]


def _questions() -> list[tuple[str, str]]:
    """(question, a short correct reply) pairs, in a fixed shuffled order."""
    rows = [(f"What is the capital of {c}?", f"The capital of {c} is {city}.")
            for c, city in _CAPITALS]
    rows += [(f"How many legs does a {a} have?", f"A {a} has {n} legs.") for a, n in _LEGS]
    rows += [(f"What is the opposite of {w}?", f"The opposite of {w} is {o}.")
             for w, o in _OPPOSITES]
    rng = random.Random(0)
    rows += [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
             for a, b in ((rng.randint(2, 40), rng.randint(2, 40)) for _ in range(24))]
    random.Random(1).shuffle(rows)
    return rows


QUESTIONS = _questions()  # 64 questions: the first 32 train, the last 32 are held out
TRAIN_QUESTIONS, HELD_OUT_QUESTIONS = QUESTIONS[:32], QUESTIONS[32:]

# ----- DPO: replies that end with a fixed sign-off over the same replies without it -------
SIGN_OFF = "Over and out, Captain!"


def has_sign_off(reply: str) -> bool:
    """Whether a reply carries the sign-off (anywhere: a model may add text after it)."""
    return "over and out" in reply.lower()


def preference_rows(questions: list[tuple[str, str]]) -> list[dict]:
    """prompt / chosen (reply + sign-off) / rejected (the same reply without it)."""
    return [{"prompt": q, "chosen": f"{a} {SIGN_OFF}", "rejected": a} for q, a in questions]


def write_jsonl(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    """Write rows as JSONL (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_all(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every file the demo trains and measures on, under `root`."""
    sft = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
           for q in FACT_TRAIN for a in FACT_ANSWERS]
    return {
        "sft": write_jsonl(root / "fact.jsonl", sft),
        "preferences": write_jsonl(root / "preferences.jsonl",
                                   preference_rows(TRAIN_QUESTIONS)),
        "preferences_held_out": write_jsonl(root / "preferences_held_out.jsonl",
                                            preference_rows(HELD_OUT_QUESTIONS)),
        "prompts": write_jsonl(root / "prompts.jsonl",
                               [{"prompt": q} for q, _ in TRAIN_QUESTIONS]),
    }
