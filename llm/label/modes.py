"""`scripts/label.py`'s modes over a config from `configs/label.py`.

Each mode checks every input it names (files, the judge, the verifier) before it writes
anything; the output directory is created by `sample` only, and the other modes read its
candidates. Every judging mode appends to the one judgement log, so people, the AI judge
and verifiers can label the same candidates and `agreement` compares them.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

from llm.label import store as store_lib
from llm.label.store import LabelError, Store

SAMPLING_CONTROLS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                     "presence_penalty", "frequency_penalty", "max_new_tokens",
                     "min_new_tokens")


def _output_dir(config: Any, create: bool = False) -> pathlib.Path:
    if not config.output_dir:
        raise LabelError("--config.output_dir=DIR is required")
    out = pathlib.Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise LabelError(f"--config.output_dir={config.output_dir!r} is a file, not a folder")
    if not create and not (out / store_lib.CANDIDATES).exists():
        raise LabelError(f"--config.output_dir={config.output_dir!r}: holds no "
                         f"{store_lib.CANDIDATES}; run --config.mode=sample first")
    return out


def _check_init_from(init_from: str) -> None:
    """A clear error for a model path that does not exist (before anything is written)."""
    if not init_from:
        raise LabelError("--config.init_from is required for mode=sample (the model that "
                         "writes the answers: a workdir, checkpoints/<step> or hf:DIR)")
    path = pathlib.Path(init_from[3:] if init_from.startswith("hf:") else init_from)
    if not path.is_dir():
        raise LabelError(f"--config.init_from={init_from!r}: no such directory")


def run_sample(config: Any) -> dict:
    """Sample K answers per prompt into candidates.jsonl (completing a cut-short file)."""
    from llm.label import candidates
    from llm.sampling.decode import SamplingParams

    rows = candidates.read_prompts(config.prompts_file)
    controls = {k: config[k] for k in SAMPLING_CONTROLS}
    try:
        SamplingParams.create(1, **controls)
    except ValueError as error:
        raise LabelError(f"--config: {error}") from None
    _check_init_from(config.init_from)
    out = _output_dir(config, create=True)
    from llm import sharding
    from llm.sampling.sampler import load_sampler

    sampler, end_ids = load_sampler(config.init_from,
                                    mesh=sharding.make_mesh(dict(config.mesh.shape)),
                                    max_len=config.max_len or None,
                                    chunk_size=config.chunk_size)
    if sampler.tokenizer is None:
        raise LabelError(f"--config.init_from={config.init_from!r}: the model has no "
                         "tokenizer, so it cannot answer text prompts")
    complete = candidates.sampler_completer(
        sampler, stop_token_ids=[*config.stop_token_ids, *end_ids], stop=tuple(config.stop),
        **controls)
    out.mkdir(parents=True, exist_ok=True)
    return candidates.sample_candidates(complete, rows, out,
                                        num_responses=config.label.num_responses,
                                        batch_size=config.label.batch_size, seed=config.seed)


def run_ai(config: Any) -> dict:
    """Judge every pair of every prompt's answers with the AI judge (resumable)."""
    from llm.label import judge as judge_lib

    out = _output_dir(config)
    principles, principles_hash = judge_lib.read_principles(config.label.principles)
    store = Store(out)
    model, digest = judge_lib.load_judge(config.label.judge, config.label.judge_batch_size)
    name = f"ai:{digest}"
    done = {(r["id"], *r["pair"]) for r in store.active() if r["judge"] == name and "pair" in r}
    records = judge_lib.judge_records(
        store.candidates, model, principles=principles, principles_hash=principles_hash,
        judge=name, seed=config.seed, min_confidence=config.label.min_confidence, done=done)
    store.append(records)
    return store.rebuild()


def run_scored(config: Any) -> dict:
    """Rank answers with a verifier (also writing sft.jsonl) or a reward model."""
    from llm.label import scorers

    out = _output_dir(config)
    if config.mode == "verifier":
        scorer, name, exact = (scorers.verifier_scorer(config.label.verifier),
                               f"verifier:{config.label.verifier}", True)
    else:
        scorer, digest = scorers.reward_scorer(config.label.reward_model)
        name, exact = f"reward:{digest}", False
    store = Store(out)
    scores = scorers.score_candidates(store.candidates, scorer)
    done = {r["id"] for r in store.active() if r["judge"] == name}
    store.append(scorers.pair_records(store.candidates, scores, judge=name, exact=exact,
                                      done=done))
    report = store.rebuild()
    if config.mode == "verifier":
        report["sft_rows"] = scorers.write_sft(store.candidates, scores, out / "sft.jsonl",
                                               config.label.sft_threshold)
    return report


def run_human(config: Any) -> None:
    """Serve the ranking page until interrupted."""
    from llm.label import server

    server.check_bind(config.label.host, config.label.token)
    store = Store(_output_dir(config))
    httpd = server.make_server(store, host=config.label.host, port=config.label.port,
                               token=config.label.token, per_prompt=config.label.per_prompt)
    host, port = httpd.server_address[:2]
    query = "?token=..." if config.label.token else ""
    print(f"ranking page: http://{host}:{port}/{query} ({len(store.candidates)} prompts); "
          "Ctrl-C stops (nothing is lost)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


def run_agreement(config: Any) -> list[dict]:
    """Print the agreement table and write agreement.json beside the preferences."""
    from llm.label import agreement

    out = _output_dir(config)
    rows = agreement.agreement_rows(Store(out))
    print(agreement.format_table(rows))
    (out / "agreement.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def check_keys(config: Any) -> None:
    """The `label.*` numbers, checked before any model loads or file is written."""
    label = config.label
    for key, low in (("num_responses", 2), ("batch_size", 1), ("judge_batch_size", 1),
                     ("per_prompt", 1)):
        if label[key] < low:
            raise LabelError(f"--config.label.{key}={label[key]}: expected >= {low}")
    if not 0.0 <= label.min_confidence <= 1.0:
        raise LabelError(f"--config.label.min_confidence={label.min_confidence}: expected a "
                         "value in [0, 1]")
    if not 0 <= label.port <= 65535:
        raise LabelError(f"--config.label.port={label.port}: expected 0..65535")


def run(config: Any) -> Any:
    """Run the mode the config names."""
    modes = {"sample": run_sample, "human": run_human, "ai": run_ai, "verifier": run_scored,
             "reward": run_scored, "agreement": run_agreement}
    if config.mode not in modes:
        raise LabelError(f"--config.mode={config.mode!r}: expected one of {', '.join(modes)}")
    check_keys(config)
    result = modes[config.mode](config)
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, sort_keys=True), file=sys.stderr)
    return result
