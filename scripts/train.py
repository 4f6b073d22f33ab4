"""Train any task: python scripts/train.py --config=configs/<task>.py[:args] --config.workdir=DIR

Running the same command again with the same workdir resumes from the newest checkpoint.
"""

from __future__ import annotations

import sys

from absl import app, logging


def main(argv: list[str]) -> None:
    """Load the config from the command line and run the training loop."""
    logging.set_verbosity(logging.WARNING)
    from llm import config as config_lib
    from llm.train.loop import train

    spec, overrides, rest = config_lib.split_argv(argv[1:])
    if rest:
        raise app.UsageError(f"unknown arguments {rest}; expected --config=FILE and "
                             "--config.KEY=VALUE")
    if spec is None:
        raise app.UsageError("--config=configs/<task>.py[:args] is required")
    try:
        config = config_lib.load_config(spec, overrides)
        train(config)
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: argv)
