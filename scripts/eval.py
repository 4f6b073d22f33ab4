"""Evaluate a model (or compare several) on named tasks; results as JSON and one table.

    python scripts/eval.py --config=configs/eval.py --config.init_from=WORKDIR \\
        --config.tasks=arithmetic_mc,stdlib_bpb --config.output_file=results.json
    python scripts/eval.py --config=configs/eval.py --config.compare=RUN1,RUN2,hf:DIR \\
        --config.tasks=arithmetic_d1 --config.output_file=compare.json
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, logging

from llm import config as config_lib


def split(value: str) -> list[str]:
    """'a, b,,c' → ['a', 'b', 'c']."""
    return [part.strip() for part in value.split(",") if part.strip()]


def check_output_file(path: str, compare: bool) -> list[pathlib.Path]:
    """The files the run will write; refused before any work if one exists (never
    overwritten) or its folder is missing."""
    target = pathlib.Path(path)
    files = [target] + ([target.with_suffix(".md"), target.with_suffix(".csv")]
                        if compare else [])
    for file in files:
        if file.exists():
            raise ValueError(f"--config.output_file={path!r}: {file} exists; it is never "
                             "overwritten (remove it or choose another path)")
    if not target.absolute().parent.is_dir():
        raise ValueError(f"--config.output_file={path!r}: folder "
                         f"{str(target.absolute().parent)!r} does not exist")
    return files


def models_of(config) -> list[str]:
    """The models to evaluate: --config.compare's, else --config.init_from."""
    if config.compare and config.init_from:
        raise ValueError("give --config.init_from (one model) or --config.compare (several), "
                         "not both")
    models = split(config.compare) if config.compare else split(config.init_from)
    if not models:
        raise app.UsageError("--config.init_from=DIR|hf:DIR (or --config.compare=DIR1,DIR2) "
                             "is required")
    for model in models:
        path = model[3:] if model.startswith("hf:") else model
        if not pathlib.Path(path).exists():
            raise ValueError(f"model {model!r}: no such directory")
    return models


def run() -> list[dict]:
    """Evaluate as the config says; returns one results dict per model."""
    from llm.eval import runner, table
    from llm.eval.task_files import load_task

    config = config_lib.cli_config()
    models = models_of(config)
    names, dirs = split(config.tasks), split(config.task_dirs)
    if not names:
        raise ValueError("--config.tasks: give at least one task name or task file")
    for key in ("batch_size",):
        if config[key] < 1:
            raise ValueError(f"--config.{key}={config[key]}: expected >= 1")
    if config.max_len < 0:
        raise ValueError(f"--config.max_len={config.max_len}: expected >= 0 (0 = the model's "
                         "max_seq_len)")
    chunk = config.prefill_chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"--config.prefill_chunk={chunk}: expected a power of two (64: "
                         "context tokens per compiled prefill call)")
    tasks = [load_task(name, dirs) for name in names]  # every task file checked first
    files = check_output_file(config.output_file, len(models) > 1) if config.output_file \
        else []
    mesh = runner.make_mesh(dict(config.mesh.shape))
    results = []
    for init_from in models:
        model = runner.EvalModel.load(init_from, mesh, batch_size=config.batch_size,
                                      max_len=config.max_len or None, add_bos=config.add_bos,
                                      prefill_chunk=config.prefill_chunk)
        results.append({"model": init_from,
                        "tasks": {t.name: runner.run_task(model, t) for t in tasks}})
        del model
    print(table.markdown(results), end="")
    if files:
        files[0].write_text(json.dumps(results if len(models) > 1 else results[0], indent=2))
        if len(models) > 1:
            files[1].write_text(table.markdown(results))
            files[2].write_text(table.to_csv(results))
        print(f"wrote {', '.join(map(str, files))}")
    return results


def main(argv: list[str]) -> None:
    """Run; bad input is one error line, not a traceback."""
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        run()
    except (ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.absl_flags_parser)
