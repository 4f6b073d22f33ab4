"""The demo's stages in run order (`scripts/demo.py` runs them), one module each.

A stage module has `NAME`, a one-line `DESCRIPTION`, `run(ctx: Context) -> dict` (what it
achieved; it writes under `ctx.workdir` and may read what earlier stages wrote there) and
`headline(result) -> str` (its cell in the closing table), and optionally
`details(result) -> str` (printed below the table). A new stage is a new module here
and one entry in `STAGES`.
"""

from __future__ import annotations

from types import ModuleType

from llm.demo import data, dpo, evaluate, grpo, label, ppo, pretrain, reward, sample, sft

STAGES: dict[str, ModuleType] = {stage.NAME: stage for stage in (
    data,
    pretrain,
    sample,
    sft,
    label,
    reward,
    dpo,
    grpo,
    ppo,
    evaluate,
)}
