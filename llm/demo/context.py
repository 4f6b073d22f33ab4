"""What every demo stage is given: where to write and the run's settings."""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class Context:
    """The demo run's settings; stages read the fields they need and write under `workdir`."""

    workdir: pathlib.Path  # every stage writes here; a later stage reads an earlier one's output
    root: pathlib.Path  # the repository, for `configs/*.py`
    steps: int = 300  # pretraining steps
    sft_steps: int = 300  # fine-tuning steps
    files: int = 400  # standard-library files in the corpus
    post_steps: int = 0  # steps of each post-training stage (0: each stage's own default)

    def steps_of(self, default: int) -> int:
        """A post-training stage's step count: `post_steps` when set, else its default."""
        return self.post_steps or default

    def config(self, spec: str, overrides: list[str]):
        """`configs/<spec>` (with variants) under this checkout, with `overrides` applied."""
        from llm.config import load_config

        return load_config(str(self.root / "configs" / spec), overrides)
