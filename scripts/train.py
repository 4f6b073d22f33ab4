"""Train any task: python scripts/train.py --config=configs/<task>.py[:args] --config.workdir=DIR

Running the same command again with the same workdir resumes from the newest checkpoint.
Exit status: 0 when training is complete, 75 (`EXIT_UNFINISHED`) when a signal or a time
limit stopped it with a checkpoint saved (rerun to resume), 2 for a refused or failed run.
"""

from __future__ import annotations

import sys

from absl import app, logging

from llm import config as config_lib
from llm import host_memory


def main(argv: list[str]) -> None:
    """Load the config from the command line and run the training loop."""
    del argv
    logging.set_verbosity(logging.WARNING)
    host_memory.retain_freed_memory()
    from llm.train.loop import train
    from llm.train.workdir import exit_status

    try:
        result = train(config_lib.cli_config())
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(exit_status(result))


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.absl_flags_parser)
