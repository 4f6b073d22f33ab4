"""What every demo stage is given: where to write and the run's settings."""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class Context:
    """The demo run's settings; stages read the fields they need and write under `workdir`."""

    workdir: pathlib.Path  # every stage writes here; a later stage reads an earlier one's output
    root: pathlib.Path  # the repository, for `configs/*.py`
    # The defaults are the start the DPO, GRPO and PPO outcome tests prove their gains from
    # (tests/arithmetic_start.py): SFT after a short pretraining answers more held-out sums
    # than after 300 steps (17% against 11% sampled), which leaves room a later stage can show.
    steps: int = 60  # pretraining steps
    sft_steps: int = 400  # fine-tuning steps
    files: int = 120  # standard-library files in the corpus
    post_steps: int = 0  # steps of each post-training stage (0: each stage's own default)

    def steps_of(self, default: int) -> int:
        """A post-training stage's step count: `post_steps` when set, else its default."""
        return self.post_steps or default

    def config(self, spec: str, overrides: list[str]):
        """`configs/<spec>` (with variants) under this checkout, with `overrides` applied."""
        from llm.config import load_config

        return load_config(str(self.root / "configs" / spec), overrides)
