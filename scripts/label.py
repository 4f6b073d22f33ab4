"""Preference labelling: sample candidates, rank them (people, an AI judge, a verifier or a
reward model) into preference JSONL, and compare judges.

    python scripts/label.py --config=configs/label.py --config.mode=sample \\
        --config.init_from=SFT_DIR --config.prompts_file=prompts.jsonl --config.output_dir=DIR
    python scripts/label.py --config=configs/label.py --config.mode=human --config.output_dir=DIR
    python scripts/label.py --config=configs/label.py --config.mode=ai --config.output_dir=DIR \\
        --config.label.judge=JUDGE_DIR --config.label.principles=principles.txt
    python scripts/label.py --config=configs/label.py --config.mode=verifier \\
        --config.output_dir=DIR --config.label.verifier=arithmetic
    python scripts/label.py --config=configs/label.py --config.mode=agreement \\
        --config.output_dir=DIR
"""

from __future__ import annotations

import sys

from absl import app, logging

from llm import config as config_lib


def main(argv: list[str]) -> None:
    """Run the configured mode; bad input is one error line and exit code 2."""
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    from llm.label import modes

    try:
        modes.run(config_lib.cli_config())
    except ValueError as error:  # LabelError, ConfigError and the loaders' errors
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.absl_flags_parser)
