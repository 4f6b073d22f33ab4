"""Sample from a trained model: one prompt, a JSONL file of prompts, or an interactive chat.

    python scripts/sample.py --config=configs/sample.py --config.init_from=WORKDIR \\
        --config.prompt="Once upon a time"
    python scripts/sample.py --config=configs/sample.py --config.init_from=WORKDIR \\
        --config.prompts_file=in.jsonl --config.output_file=out.jsonl
    python scripts/sample.py --config=configs/sample.py:chat --config.init_from=WORKDIR
"""

from __future__ import annotations

import json
import sys

from absl import app, logging

from llm import config as config_lib
from llm import host_memory

CONTROLS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
            "frequency_penalty", "max_new_tokens", "min_new_tokens", "seed")


def build_sampler(config):
    """The model named by init_from, with its tokenizer and chat template."""
    from llm import sampling, sharding
    from llm.sampler import load_sampler

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


def run() -> None:
    """Load the model named by --config.init_from and sample from it."""
    from llm.sampler import complete_rows

    config = config_lib.cli_config()
    if not config.init_from:
        raise app.UsageError("--config.init_from=DIR is required (workdir, checkpoint, hf:DIR)")
    sampler, end_ids = build_sampler(config)
    controls = {k: config[k] for k in CONTROLS}
    if config.chat:
        if sampler.tokenizer is None:
            raise app.UsageError("chat needs a tokenizer; this model has none")
        return interactive_chat(sampler, config, controls, end_ids)
    if config.prompts_file:
        with open(config.prompts_file) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif config.prompt:
        rows = [{"prompt": config.prompt}]
    else:
        raise app.UsageError("give --config.prompt, --config.prompts_file or --config.chat")
    if sampler.tokenizer is None and any("prompt_ids" not in r for r in rows):
        raise app.UsageError("this model has no tokenizer: rows need 'prompt_ids'")
    results = complete_rows(sampler, rows, batch_size=config.batch_size,
                            stop=tuple(config.stop),
                            stop_token_ids=[*config.stop_token_ids, *end_ids],
                            beam_width=config.beam_width, **controls)
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
    if config.output_file:
        with open(config.output_file, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} rows to {config.output_file}")
    elif config.prompt:
        print(config.prompt + results[0]["completion"])
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.absl_flags_parser)
