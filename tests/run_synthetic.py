"""Run the training loop on the synthetic task in a fresh process (kill/resume tests).

usage: python tests/run_synthetic.py KEY=VALUE ...   (config overrides)
"""

import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

from synthetic_task import SyntheticTask  # noqa: E402

from llm.config import load_config  # noqa: E402
from llm.train.loop import train  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = ["total_steps=12", "batch_size=8", "seq_len=32", "log.every_steps=1",
        "checkpoint.every_steps=4", "eval.every_steps=0", "optim.warmup_steps=2",
        "optim.lr=3e-3", "checkpoint.async_save=false"]


def main(argv: list[str]) -> None:
    config = load_config(str(ROOT / "configs/pretrain.py") + ":model=tiny", BASE + argv)
    train(config, SyntheticTask(config))


if __name__ == "__main__":
    main(sys.argv[1:])
