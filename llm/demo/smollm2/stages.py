"""The real-model demo's stages in run order (`scripts/demo.py --model=smollm2`)."""

from __future__ import annotations

from types import ModuleType

from llm.demo.smollm2 import chat, dpo, evaluate, grpo, import_model, sft

STAGES: dict[str, ModuleType] = {stage.NAME: stage for stage in (
    import_model,
    chat,
    sft,
    dpo,
    grpo,
    evaluate,
)}
