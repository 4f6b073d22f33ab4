"""Run the training loop on the synthetic task in a fresh process (kill/resume tests).

usage: python tests/run_synthetic.py KEY=VALUE ...   (config overrides)
       fault points, test-only: --nan-at-step=K (step K's loss is NaN),
       --crash-before-commit=K (die after checkpoint K's files are written, before commit),
       --hang-at-step=K (preparing step K's batch never returns: a run to kill or compete with),
       --fixed-shards (each process shuffles its own rows: a data stream that cannot be
       resharded onto another process count)
"""

import os
import pathlib
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np  # noqa: E402
from synthetic_task import SyntheticTask  # noqa: E402

from llm.checkpoint import Checkpointer, ChecksummedPath  # noqa: E402
from llm.config import load_config  # noqa: E402
from llm.train.loop import train  # noqa: E402
from llm.train.workdir import exit_status  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = ["total_steps=12", "batch_size=8", "seq_len=32", "log.every_steps=1",
        "checkpoint.every_steps=4", "eval.every_steps=0", "optim.warmup_steps=2",
        "optim.lr=3e-3", "checkpoint.async_save=false"]


class NanAtStepTask(SyntheticTask):
    """The synthetic task whose loss (and so every gradient) is NaN at one step."""

    def __init__(self, config, nan_step: int, fixed_shards: bool = False):
        super().__init__(config, fixed_shards)
        self.nan_step, self.prepared = nan_step, 0

    def prepare(self, models, host_batch, rng):
        self.prepared += 1  # one batch per step, counted from a fresh start
        poison = np.nan if self.prepared == self.nan_step else 0.0
        return {**host_batch, "poison": np.full(len(host_batch["tokens"]), poison,
                                                np.float32)}

    def loss(self, model, side, batch, rng):
        loss_sum, sums = super().loss(model, side, batch, rng)
        return loss_sum * (1.0 + batch["poison"].sum()), sums


class HangAtStepTask(SyntheticTask):
    """The synthetic task that stops making progress when preparing step K's batch."""

    def __init__(self, config, hang_step: int, fixed_shards: bool = False):
        super().__init__(config, fixed_shards)
        self.hang_step, self.prepared = hang_step, 0

    def prepare(self, models, host_batch, rng):
        self.prepared += 1
        if self.prepared == self.hang_step:
            time.sleep(3600)
        return super().prepare(models, host_batch, rng)


def crash_before_commit(step: int) -> type:
    """orbax's temporary-path class, dying as SIGKILL would once step's files are written."""

    class CrashBeforeCommit(ChecksummedPath):
        async def finalize(self, *args, **kwargs):
            if self.get_final().name == str(step):
                os._exit(137)
            return await super().finalize(*args, **kwargs)

    return CrashBeforeCommit


def main(argv: list[str]) -> None:
    faults = dict((a[2:] + "=").split("=")[:2] for a in argv if a.startswith("--"))
    fixed_shards = "fixed-shards" in faults
    overrides = [a for a in argv if not a.startswith("--")]
    config = load_config(str(ROOT / "configs/pretrain.py") + ":model=tiny", BASE + overrides)
    if "crash-before-commit" in faults:
        Checkpointer.temporary_path_class = crash_before_commit(
            int(faults["crash-before-commit"]))
    if "hang-at-step" in faults:
        task = HangAtStepTask(config, int(faults["hang-at-step"]), fixed_shards)
    elif "nan-at-step" in faults:
        task = NanAtStepTask(config, int(faults["nan-at-step"]), fixed_shards)
    else:
        task = SyntheticTask(config, fixed_shards)
    sys.exit(exit_status(train(config, task)))


if __name__ == "__main__":
    main(sys.argv[1:])
