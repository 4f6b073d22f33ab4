"""Run a sweep: python scripts/sweep.py --config=configs/sweeps/<name>.py --config.folder=DIR

Every run trains in DIR/<run name> (named by its overrides) through scripts/train.py; the same
command again skips finished runs, resumes unfinished ones and keeps failed ones (unless
--config.retry_failed=true). With --config.executor=slurm the runs go to one sbatch array job
(DRY_RUN=1 prints it). --results_only rewrites the table and plots from the workdirs.
"""

from __future__ import annotations

import os
import pathlib
import sys

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm import config as config_lib  # noqa: E402

_RESULTS_ONLY = flags.DEFINE_bool("results_only", False,
                                  "only (re)write the results from the runs' workdirs")


def main(argv: list[str]) -> None:
    """Load the sweep, run what is left, write the results table."""
    del argv
    from llm.sweep import runner

    try:
        sweep = config_lib.cli_config()
        spec = config_lib.split_argv(sys.argv[1:])[0].partition(":")[0]  # for messages
        if _RESULTS_ONLY.value:
            from llm.sweep.spec import expand

            runner.write_results(expand(sweep, spec), pathlib.Path(sweep.folder).absolute(),
                                 sweep.metric)
        else:
            runner.run_sweep(sweep, spec, dry_run=os.environ.get("DRY_RUN") == "1")
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.absl_flags_parser)
