"""Preference labelling: `scripts/label.py --config=configs/label.py --config.mode=MODE`.

    sample     K answers per prompt from init_from into output_dir/candidates.jsonl
    human      serve the ranking page (label.host, label.port, label.token)
    ai         an AI judge (label.judge) compares pairs against label.principles
    verifier   a registered verifier (label.verifier) ranks the answers
    reward     a reward model (label.reward_model) ranks the answers
    agreement  agreement rate and Cohen's kappa between judges, per principle

Sampling keys (temperature, top_p, max_new_tokens, stop, ...) are those of configs/sample.py.
"""

from __future__ import annotations

import ml_collections

from configs import sample

MODES = ("sample", "human", "ai", "verifier", "reward", "agreement")
# The keys of configs/sample.py that say how answers are sampled (the rest are its I/O).
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                 "presence_penalty", "frequency_penalty", "max_new_tokens", "min_new_tokens",
                 "seed", "stop", "stop_token_ids", "max_len", "chunk_size", "mesh")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The labelling config; `arg` may name the mode (`configs/label.py:ai`)."""
    if arg and arg not in MODES:
        raise ValueError(f"configs/label.py:{arg}: unknown mode; expected one of {MODES}")
    sampling = sample.get_config()
    config = ml_collections.ConfigDict()
    config.mode = arg or "sample"
    config.init_from = ""  # the model that writes the answers (workdir, checkpoint, hf:DIR)
    config.prompts_file = ""  # JSONL rows with 'prompt' (+ optional 'id', 'answer', ...)
    config.output_dir = ""  # candidates.jsonl, judgements.jsonl, preferences.jsonl, report.json
    for key in SAMPLING_KEYS:
        config[key] = sampling[key]
    config.temperature = 1.0  # candidates should differ; 0.7 repeats itself more often
    config.label = ml_collections.ConfigDict(dict(
        num_responses=4,  # K answers per prompt
        batch_size=4,  # prompts per sampling batch (each decodes K rows)
        judge="",  # ai: the judge model (workdir, checkpoints/<step> or hf:DIR)
        principles="",  # ai: a file of principles, one per line (or a JSON list)
        min_confidence=0.1,  # ai: pairs with |2p - 1| below this are skipped, counted
        judge_batch_size=8,  # ai: judge prompts per forward pass
        verifier="arithmetic",  # verifier: a name registered in llm/rewards.py
        sft_threshold=1.0,  # verifier: answers scoring >= this go to sft.jsonl
        reward_model="",  # reward: a reward-model workdir
        per_prompt=1,  # human: judgements wanted per prompt (by different labellers)
        host="127.0.0.1",  # human: any non-loopback address needs label.token
        port=8765,
        token="",  # human: access token (labellers open /?token=...)
    ))
    config.lock()
    return config
