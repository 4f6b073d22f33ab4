"""Tasks by name: `config.task` picks one; each lives in its own file here."""

from __future__ import annotations

import difflib

from llm.train.task import Task


def get_task(name: str) -> type[Task]:
    """The Task class registered under `name`."""
    from llm.train.dpo import DpoTask
    from llm.train.grpo import GrpoTask
    from llm.train.ppo import PpoTask
    from llm.train.pretrain import PretrainTask
    from llm.train.reward import RewardTask
    from llm.train.sft import SftTask

    tasks: dict[str, type[Task]] = {"pretrain": PretrainTask, "sft": SftTask,
                                    "reward": RewardTask, "dpo": DpoTask, "grpo": GrpoTask,
                                    "ppo": PpoTask}
    if name not in tasks:
        close = difflib.get_close_matches(name, tasks, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"task={name!r}: unknown task{hint}; known: {', '.join(tasks)}")
    return tasks[name]
