"""Tasks by name: `config.task` picks one; each lives in its own file here."""

from __future__ import annotations

import difflib
from collections.abc import Callable

import ml_collections

from llm.train.task import Task


def dpo_family(config: ml_collections.ConfigDict) -> Task:
    """The `dpo` task: KtoTask for `dpo.loss_type=kto` (unpaired rows), else DpoTask."""
    from llm.train.dpo import UNPAIRED, DpoTask, parse_loss_types
    from llm.train.kto import KtoTask

    return (KtoTask if parse_loss_types(config.dpo)[0] == UNPAIRED else DpoTask)(config)


def get_task(name: str) -> Callable[[ml_collections.ConfigDict], Task]:
    """The Task class (or, for `dpo`, the function choosing one) registered under `name`."""
    from llm.train.grpo import GrpoTask
    from llm.train.ppo import PpoTask
    from llm.train.pretrain import PretrainTask
    from llm.train.reward import RewardTask
    from llm.train.sft import SftTask

    tasks: dict[str, Callable] = {"pretrain": PretrainTask, "sft": SftTask,
                                  "reward": RewardTask, "dpo": dpo_family, "grpo": GrpoTask,
                                  "ppo": PpoTask}
    if name not in tasks:
        close = difflib.get_close_matches(name, tasks, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"task={name!r}: unknown task{hint}; known: {', '.join(tasks)}")
    return tasks[name]
