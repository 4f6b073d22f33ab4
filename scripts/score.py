"""Score rows with a reward model (a `configs/reward.py` run or an HF sequence classifier).

    python scripts/score.py --config=configs/score.py --config.init_from=REWARD_DIR \\
        --config.input_file=rows.jsonl --config.output_file=scored.jsonl
"""

from __future__ import annotations

import json
import sys

from absl import app, logging

from llm import config as config_lib


def run() -> None:
    """Load the reward model, score --config.input_file, write --config.output_file."""
    from llm import scoring, sharding

    config = config_lib.cli_config()
    if not config.init_from:
        raise ValueError("--config.init_from=DIR is required (a reward-model workdir, "
                         "checkpoint or hf:DIR)")
    if not config.input_file:
        raise ValueError("--config.input_file=rows.jsonl is required")
    for key in ("seq_len", "batch_size"):
        if config[key] < 1:
            raise ValueError(f"--config.{key}={config[key]}: expected >= 1")
    rows = scoring.read_rows(config.input_file)  # checked before the model loads
    if config.output_file:
        from sample import check_output_file  # scripts/sample.py: the same refusal

        check_output_file(config.output_file)
    mesh = sharding.make_mesh(dict(config.mesh.shape))
    scorer = scoring.Scorer.load(config.init_from, config.seq_len, config.batch_size, mesh)
    lines = [json.dumps(r, ensure_ascii=False) for r in scoring.score_rows(scorer, rows)]
    if config.output_file:
        with open(config.output_file, "x") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} scored rows to {config.output_file}")
    else:
        print("\n".join(lines))


def main(argv: list[str]) -> None:
    """Score as the config says; bad input is one error line, not a traceback."""
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        run()
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.absl_flags_parser)
