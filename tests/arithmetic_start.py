"""The demo's tiny SFT arithmetic model, built once per test session: where DPO, GRPO and PPO
outcome tests start.

`build(root)` runs the demo's own stages (data → pretrain → sft) with a CPU-sized budget. The
SFT model is deliberately undertrained, answering part of the held-out questions right, so a
preference or RL stage has room to show a gain. `heldout_accuracy` is the one measure those
tests share: the mean over `samples` sampled answers per held-out question of the exact-answer
verifier; the held-out questions are never in any training file (`synthetic.generate(...,
heldout=k)`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from llm.demo.context import Context
from llm.demo.measure import heldout_accuracy  # noqa: F401  (the outcome tests' measure)

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The demo's own defaults: small enough for the slow tests, enough for an SFT model that is
# right part of the time (see test_arithmetic_start.py for the range it must land in).
_DEMO = Context(workdir=pathlib.Path(), root=ROOT)
PRETRAIN_STEPS = _DEMO.steps
SFT_STEPS = _DEMO.sft_steps
CORPUS_FILES = _DEMO.files


@dataclasses.dataclass(frozen=True)
class StartPoint:
    """An SFT workdir (an `init_from`), its arithmetic files and the held-out rows."""

    workdir: pathlib.Path
    files: dict[str, pathlib.Path]  # sft, preference, rl (held-out prompts removed), heldout
    heldout_rows: list[dict]


def build(root: pathlib.Path, *, pretrain_steps: int = PRETRAIN_STEPS,
          sft_steps: int = SFT_STEPS, files: int = CORPUS_FILES) -> StartPoint:
    """Run the demo's data, pretrain and sft stages under `root`; reruns reuse what exists."""
    from llm.demo import data, pretrain, sft

    ctx = Context(workdir=root, root=ROOT, steps=pretrain_steps, sft_steps=sft_steps,
                  files=files)
    for stage in (data, pretrain, sft):
        stage.run(ctx)
    arithmetic = root / "arithmetic"
    paths = {k: arithmetic / f"{k}.jsonl" for k in ("sft", "preference", "rl", "heldout")}
    rows = [json.loads(line) for line in paths["heldout"].read_text().splitlines()]
    return StartPoint(workdir=root / "sft", files=paths, heldout_rows=rows)
