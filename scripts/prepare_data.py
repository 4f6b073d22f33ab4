"""Prepare raw text/JSONL/Parquet inputs into tokenised shards (thin main over llm.data).

    python scripts/prepare_data.py --config=configs/data.py \
        --config.inputs=PATH[,PATH...] --config.output_dir=DIR
"""

from absl import app
from ml_collections import config_flags

from llm.data import DataError
from llm.data.prepare import prepare

_CONFIG = config_flags.DEFINE_config_file("config", "configs/data.py", "data config file")


def main(argv):
    """Run the preparation pipeline and print where the result is."""
    del argv
    try:
        out = prepare(_CONFIG.value)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"prepared: {out}")


if __name__ == "__main__":
    app.run(main)
