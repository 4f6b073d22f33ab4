"""The AI judge (`scripts/label.py --config.mode=ai`) with SmolLM2-135M-Instruct
(llm/demo/smollm2) as judge: its prompt is the model's own chat template, and on 32 pairs
under a principle a program checks ("the shorter answer is better") it agrees with the
program.

What the 135M judge does, measured on CPU with this file's pairs and others: shown one
order it answers "A" about 95 % of the time whatever the pair; the order-averaged score
s = q(x, y) - q(y, x) cancels that, leaving a small (mean |s| 0.03, so the test sets
label.min_confidence=0) but consistent preference for the shorter answer. That preference
does not come from reading the principle: under the opposite one ("the longer, more detailed
answer is better") it still picks the shorter answer (agreement 0.16), and principles it
would have to read to follow score at or below chance (no digits on pairs differing only in
"8" vs "eight": 0.06; all capitals: 0.50; ends with a question mark: 0.22). So this test
pins the judge's whole path on a real model under a principle its preference happens to
match; it does not show that a 135M judge follows principles.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys

import pytest
from label_helpers import read_jsonl, write_candidates

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRINCIPLE = "The better answer is the shorter one."
# (question, a short answer, a longer answer): both right, the long one adds detail.
PAIRS = [
    ("What is the capital of France?", "Paris.",
     "The capital of France is Paris, which lies on the river Seine."),
    ("What color is the sky?", "Blue.",
     "On a clear day the sky looks blue because air scatters blue light most."),
    ("What do bees make?", "Honey.",
     "Bees make honey from the nectar of flowers and store it in their hives."),
    ("Which planet do we live on?", "Earth.",
     "We live on Earth, the third planet from the Sun in our solar system."),
    ("What is frozen water called?", "Ice.",
     "When water gets cold enough it freezes, and frozen water is called ice."),
    ("What animal says meow?", "A cat.",
     "The animal that says meow is a cat, a small pet that many people keep."),
    ("What do cows drink?", "Water.",
     "Cows drink water, and a big cow can drink a whole bathtub of it each day."),
    ("What is the opposite of hot?", "Cold.",
     "The opposite of hot is cold, as in a cold winter day or a cold drink."),
    ("Where do fish live?", "In water.",
     "Fish live in water: some in rivers and lakes, others in the salty sea."),
    ("What do we use to see?", "Our eyes.",
     "We see with our eyes, which turn light into signals that the brain reads."),
    ("What is the largest ocean?", "The Pacific.",
     "The largest ocean on Earth is the Pacific Ocean, between Asia and America."),
    ("What falls from clouds?", "Rain.",
     "Rain falls from clouds when the tiny drops in them grow big and heavy."),
    ("What do plants need to grow?", "Sunlight and water.",
     "Plants need sunlight, water, air and good soil to grow tall and green."),
    ("What gives us milk?", "Cows.",
     "Most of the milk we drink comes from cows that live on farms."),
    ("What is the color of grass?", "Green.",
     "Grass is green because its leaves are full of a pigment called chlorophyll."),
    ("When do owls hunt?", "At night.",
     "Owls usually hunt at night, using their sharp eyes and quiet wings."),
    ("What shape is a ball?", "Round.",
     "A ball is round, shaped like a sphere, so it rolls easily in any direction."),
    ("What do we breathe?", "Air.",
     "We breathe air, taking in the oxygen in it and breathing out carbon dioxide."),
    ("What season comes after winter?", "Spring.",
     "After winter comes spring, when days get longer and flowers begin to bloom."),
    ("What do you call a baby dog?", "A puppy.",
     "A baby dog is called a puppy, and it stays a puppy for about a year."),
    ("What is the sun?", "A star.",
     "The sun is a star, a huge ball of hot gas at the centre of our solar system."),
    ("What do birds use to fly?", "Wings.",
     "Birds fly with their wings, which push against the air as they flap."),
    ("What is bread made from?", "Flour.",
     "Bread is made mostly from flour, mixed with water, salt and yeast, then baked."),
    ("Where does the sun rise?", "In the east.",
     "The sun rises in the east every morning and sets in the west at night."),
    ("What do you call a baby cat?", "A kitten.",
     "A baby cat is called a kitten, and kittens love to play and sleep a lot."),
    ("What metal is a coin often made of?", "Copper.",
     "Many coins are made of copper or of alloys that contain some copper."),
    ("What is the main language of Spain?", "Spanish.",
     "The main language spoken in Spain is Spanish, also called Castilian."),
    ("What do you wear on your feet?", "Shoes.",
     "On your feet you wear socks and shoes to keep them warm and safe."),
    ("What is the tallest animal?", "The giraffe.",
     "The tallest animal in the world is the giraffe, with its very long neck."),
    ("Which way does a compass point?", "North.",
     "A compass needle points north, because it lines up with Earth's magnetic field."),
    ("What do pandas eat?", "Bamboo.",
     "Pandas eat bamboo almost all day long, many kilograms of it every day."),
    ("What is the boiling point of water in Celsius?", "One hundred degrees.",
     "Water boils at one hundred degrees Celsius at sea level."),
]


def program_choice(responses: list[str]) -> int:
    """The index of the better answer under PRINCIPLE, decided by a program."""
    return min(range(len(responses)), key=lambda k: len(responses[k]))


def candidate_rows() -> list[dict]:
    """One prompt per pair; the short answer is first in exactly half of them (a judge that
    always picks one position agrees with the program on half)."""
    first = [True] * (len(PAIRS) // 2) + [False] * (len(PAIRS) - len(PAIRS) // 2)
    random.Random(0).shuffle(first)
    return [{"id": f"q{n}", "prompt": q, "responses": [short, long] if f else [long, short]}
            for n, ((q, short, long), f) in enumerate(zip(PAIRS, first, strict=True))]


@pytest.mark.slow
def test_the_judge_prompt_is_the_models_chat_template(smollm2_dir):
    import transformers

    from llm.label import judge

    model, _ = judge.load_judge(f"hf:{smollm2_dir}")
    hf = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    text = judge.judge_prompt(PRINCIPLE, *PAIRS[0])
    messages = [{"role": "user", "content": text}]
    assert model.render(text) == list(hf.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    # the labels are scored as the first token of the reply: "A" and "B" as the model spells
    # them right after "<|im_start|>assistant\n"
    assert model.label_ids_2.tolist() == hf.convert_tokens_to_ids(["A", "B"])


@pytest.mark.slow
def test_judge_agrees_with_a_program_on_which_answer_is_shorter(smollm2_dir, tmp_path):
    """Measured: 27 of 32 pairs (0.84) agree with the program; asserted >= 0.70 (23)."""
    rows = candidate_rows()
    assert sum(program_choice(r["responses"]) == 0 for r in rows) == len(rows) // 2
    out = tmp_path / "labels"
    write_candidates(out, rows)
    principles = tmp_path / "principles.txt"
    principles.write_text(PRINCIPLE + "\n")
    proc = subprocess.run(
        [sys.executable, "scripts/label.py", "--config=configs/label.py", "--config.mode=ai",
         f"--config.output_dir={out}", f"--config.label.judge=hf:{smollm2_dir}",
         f"--config.label.principles={principles}",
         # the 135M judge's |s| is ~0.03: the default 0.1 would skip most pairs
         "--config.label.min_confidence=0.0"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})  # one device
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = {r["id"]: r for r in read_jsonl(out / "judgements.jsonl")}
    assert len(records) == len(rows)
    agree = [records[r["id"]].get("chosen") == program_choice(r["responses"]) for r in rows]
    scores = [round(records[r["id"]]["score"], 4) for r in rows]
    assert sum(agree) / len(rows) >= 0.70, (sum(agree), scores)
    prefs = read_jsonl(out / "preferences.jsonl")
    assert {p["principle"] for p in prefs} == {PRINCIPLE}
    (counts,) = json.loads((out / "report.json").read_text())["judges"].values()
    assert counts["pairs"] == len(rows)  # nothing skipped
