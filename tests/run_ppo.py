"""Run a PPO config in a fresh process (the kill -9 resume test).

usage: python tests/run_ppo.py KEY=VALUE ...   (overrides of configs/ppo.py:model=tiny)
"""

import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

from ppo_helpers import CONFIG  # noqa: E402

from llm.config import load_config  # noqa: E402
from llm.train.loop import train  # noqa: E402

if __name__ == "__main__":
    train(load_config(CONFIG, sys.argv[1:]))
