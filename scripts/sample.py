"""Sample from a trained model: one prompt, a JSONL file of prompts, or an interactive chat.

    python scripts/sample.py --config=configs/sample.py --config.init_from=WORKDIR \\
        --config.prompt="Once upon a time"
    python scripts/sample.py --config=configs/sample.py --config.init_from=WORKDIR \\
        --config.prompts_file=in.jsonl --config.output_file=out.jsonl
    python scripts/sample.py --config=configs/sample.py:chat --config.init_from=WORKDIR
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, logging

from llm import config as config_lib
from llm import host_memory

CONTROLS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
            "frequency_penalty", "max_new_tokens", "min_new_tokens", "seed")


DECODE_SHARDINGS = ("training", "tensor")


def check_config(config) -> dict:
    """Validate the sampling keys before the model loads; returns the controls."""
    from llm.sampling.decode import SamplingParams

    for key in ("batch_size", "chunk_size", "beam_width"):
        if config[key] < 1:
            raise ValueError(f"--config.{key}={config[key]}: expected >= 1")
    if config.max_len < 0:
        raise ValueError(f"--config.max_len={config.max_len}: expected >= 0 (0 = fit the "
                         "longest request)")
    if config.decode_sharding not in DECODE_SHARDINGS:
        raise ValueError(f"--config.decode_sharding={config.decode_sharding!r}: expected one "
                         f"of {', '.join(DECODE_SHARDINGS)}")
    if not all(isinstance(s, str) for s in config.stop):
        raise ValueError(f"--config.stop={list(config.stop)}: expected strings, e.g. "
                         """--config.stop='["###", "\\n\\n"]'""")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
               for i in config.stop_token_ids):
        raise ValueError(f"--config.stop_token_ids={list(config.stop_token_ids)}: expected "
                         "token ids (integers >= 0)")
    from llm.sampling.sampler import TRUNCATE_PROMPT

    if config.truncate_prompt not in TRUNCATE_PROMPT:
        raise ValueError(f"--config.truncate_prompt={config.truncate_prompt!r}: expected '' "
                         "(a prompt that does not fit is an error) or 'left' (keep its end)")
    controls = {k: config[k] for k in CONTROLS}
    try:
        SamplingParams.create(1, **controls)
    except ValueError as error:
        raise ValueError(f"--config: {error}") from None
    return controls


def build_sampler(config):
    """The model named by init_from, with its tokenizer and chat template."""
    from llm import sharding
    from llm.sampling import decode as sampling
    from llm.sampling.sampler import load_sampler

    mesh = sharding.make_mesh(dict(config.mesh.shape))
    sampler, end_ids = load_sampler(config.init_from, mesh=mesh,
                                    max_len=config.max_len or None,
                                    chunk_size=config.chunk_size,
                                    unstack_layers=config.unstack_layers)
    if config.decode_sharding == "tensor":
        sampler.params = sampling.reshard_for_decode(sampler.params, mesh)
    return sampler, end_ids


def interactive_chat(sampler, config, controls, end_ids) -> None:
    """Read user turns from stdin, stream each reply to stdout."""
    messages = [{"role": "system", "content": config.system}] if config.system else []
    while True:
        try:
            user = input("\n> ")
        except EOFError:
            return
        messages.append({"role": "user", "content": user})
        stream = sampler.stream(sampler.chat_template(messages), stop=tuple(config.stop),
                                stop_token_ids=[*config.stop_token_ids, *end_ids], **controls)
        while True:
            try:
                sys.stdout.write(next(stream))
                sys.stdout.flush()
            except StopIteration as done:
                messages.append({"role": "assistant", "content": done.value.text})
                break


def main(argv: list[str]) -> None:
    """Sample as the config says; bad input is one error line, not a traceback."""
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    host_memory.retain_freed_memory()
    try:
        run()
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def read_prompts(path: str) -> tuple[list[dict], list[str]]:
    """The JSONL rows of --config.prompts_file and where each is ('FILE line N'); a bad
    file or line is one ValueError."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as error:
        raise ValueError(f"--config.prompts_file={path!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"--config.prompts_file={path!r}: not UTF-8 text ({error.reason} "
                         f"at byte {error.start})") from None
    rows, where = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number}: not valid JSON ({error.msg}, column "
                             f"{error.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number}: expected a JSON object with 'prompt', "
                             f"'messages' or 'prompt_ids', got {type(row).__name__}")
        rows.append(row)
        where.append(f"{path} line {number}")
    if not rows:
        raise ValueError(f"{path}: no prompts (the file is empty)")
    return rows, where


def prompt_rows(config) -> tuple[list[dict], list[str]]:
    """The rows to complete, and where each comes from: --config.prompts_file, else
    --config.prompt."""
    if config.prompts_file:
        return read_prompts(config.prompts_file)
    if config.prompt:
        return [{"prompt": config.prompt}], ["--config.prompt"]
    raise app.UsageError("give --config.prompt, --config.prompts_file or --config.chat")


def check_output_file(path: str) -> None:
    """Refuse, before any sampling, to overwrite a file or to write into a missing folder."""
    target = pathlib.Path(path)
    if target.exists():
        raise ValueError(f"--config.output_file={path!r} exists; it is never overwritten "
                         "(remove it or choose another path)")
    if not target.absolute().parent.is_dir():
        raise ValueError(f"--config.output_file={path!r}: folder "
                         f"{str(target.absolute().parent)!r} does not exist")


def run() -> None:
    """Load the model named by --config.init_from and sample from it."""
    from llm.sampling.sampler import complete_rows

    config = config_lib.cli_config()
    if not config.init_from:
        raise app.UsageError("--config.init_from=DIR is required (workdir, checkpoint, hf:DIR)")
    # The keys, the input and the output file are checked before the model loads.
    controls = check_config(config)
    rows, where = (None, None) if config.chat else prompt_rows(config)
    if config.output_file:
        check_output_file(config.output_file)
    sampler, end_ids = build_sampler(config)
    if config.chat:
        if sampler.tokenizer is None:
            raise app.UsageError("chat needs a tokenizer; this model has none")
        return interactive_chat(sampler, config, controls, end_ids)
    if sampler.tokenizer is None and any("prompt_ids" not in r for r in rows):
        raise app.UsageError("this model has no tokenizer: rows need 'prompt_ids'")
    results = complete_rows(sampler, rows, batch_size=config.batch_size,
                            stop=tuple(config.stop),
                            stop_token_ids=[*config.stop_token_ids, *end_ids],
                            beam_width=config.beam_width, where=where,
                            truncate_prompt=config.truncate_prompt, **controls)
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
    if config.output_file:
        with open(config.output_file, "x") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} rows to {config.output_file}")
    elif config.prompt:
        print(config.prompt + results[0]["completion"])
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.absl_flags_parser)
