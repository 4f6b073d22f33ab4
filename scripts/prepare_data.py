"""Prepare raw text/JSONL/Parquet inputs into tokenised shards (thin main over llm.data).

    python scripts/prepare_data.py --config=configs/data.py \
        --config.inputs=PATH[,PATH...] --config.output_dir=DIR
"""

import sys

from absl import app

from llm import config as config_lib
from llm.data import DataError
from llm.data.prepare import prepare


def main(argv):
    """Run the preparation pipeline and print where the result is."""
    del argv
    try:
        out = prepare(config_lib.cli_config())
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"prepared: {out}")


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.absl_flags_parser)
