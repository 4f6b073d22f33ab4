"""Run a GRPO config in a fresh process, optionally dying by SIGKILL at one step (resume test).

usage: python tests/run_grpo.py [--kill-at-step=K] KEY=VALUE ...   (configs/grpo.py overrides)
With --kill-at-step=K the process kills itself (-9) once step K's metrics are read: after
the checkpoint of step K - 1, before step K's.
"""

import os
import pathlib
import signal
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from llm.config import load_config  # noqa: E402
from llm.train.grpo import GrpoTask  # noqa: E402
from llm.train.loop import train  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


class KillAtStep(GrpoTask):
    """GRPO that SIGKILLs its own process when step `kill_at` is logged."""

    kill_at = 0

    def observe(self, step, metrics):
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    kill = [a for a in argv if a.startswith("--kill-at-step=")]
    overrides = [a for a in argv if a not in kill]
    config = load_config(str(ROOT / "configs/grpo.py") + ":model=tiny", overrides)
    task = KillAtStep(config)
    task.kill_at = int(kill[0].split("=")[1]) if kill else 0
    train(config, task)


if __name__ == "__main__":
    main(sys.argv[1:])
