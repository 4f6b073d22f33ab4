"""Named evaluation tasks run by the training loop every `eval.every_steps`.

`eval.tasks=arithmetic_mc,stdlib_bpb` in any task config: the tasks are loaded (and so
checked) when the run is built, and at each evaluation they score the policy as it is,
on the run's own mesh and tokenizer. Their metrics are logged beside the validation loss
as `eval_<task>_<metric>` (`eval_stdlib_bpb_bits_per_byte`, with `..._stderr`).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
from flax import nnx

from llm.eval.runner import EvalModel, run_task
from llm.eval.task_files import TaskError, load_task


class TrainingEval:
    """The run's eval tasks, scored on the policy's current arrays (no copy)."""

    def __init__(self, names: str, tokenizer_dir: pathlib.Path | None, *,
                 batch_size: int = 32, max_len: int | None = None):
        from llm.data.tokenizer import Tokenizer

        self.tasks = [load_task(n.strip()) for n in names.split(",") if n.strip()]
        if tokenizer_dir is None:
            raise TaskError(f"eval.tasks={names!r}: evaluation tasks are text, and this run's "
                            "data has no tokenizer")
        self.tokenizer = Tokenizer.load(tokenizer_dir)
        self.batch_size, self.max_len = batch_size, max_len

    def __call__(self, policy: nnx.Module, mesh: jax.sharding.Mesh) -> dict[str, Any]:
        """`eval_<task>_<metric>` for every task and metric."""
        graphdef, params = nnx.split(policy)
        model = EvalModel(graphdef, params, self.tokenizer, mesh, batch_size=self.batch_size,
                          max_len=self.max_len, progress=False)
        metrics = {}
        for task in self.tasks:
            for key, value in run_task(model, task).items():
                metrics[f"eval_{task.name}_{key}"] = value
        return metrics
