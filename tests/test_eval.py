"""llm.eval: log-likelihoods against the model's own forward, truncation, task files,
bits per byte, pass@k and the generation verifier."""

import json
import math
from functools import partial

import jax
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

import eval_helpers  # noqa: E402

from llm.data.tokenizer import Tokenizer  # noqa: E402
from llm.eval import loglik, runner, stats  # noqa: E402
from llm.eval.task_files import TaskError, load_task, read_task  # noqa: E402
from llm.model import Transformer  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(graphdef, params, tokenizer) of a random model with a byte-level BPE."""
    root = tmp_path_factory.mktemp("eval")
    tokenizer = Tokenizer.load(eval_helpers.tokenizer_dir(root / "tok"))
    cfg = eval_helpers.model_config(tokenizer.vocab_size, max_seq_len=32)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    return graphdef, params, tokenizer


@partial(jax.jit, static_argnums=0)
def _logp(graphdef, params, ids_1T):
    logits_BTV, _ = nnx.merge(graphdef, params)(ids_1T)
    return jax.nn.log_softmax(logits_BTV[0], -1)


def forward_logp(graphdef, params, ids):
    """log-softmax of one plain forward pass over `ids` (right-padded to 32: causal, so the
    padding changes no earlier position)."""
    padded = np.zeros((1, 32), np.int32)
    padded[0, :len(ids)] = ids
    return np.asarray(_logp(graphdef, params, padded))


def direct(graphdef, params, context, continuation):
    """Sum of the continuation's token log-probs from one plain forward pass."""
    logp_TV = forward_logp(graphdef, params, context + continuation)
    return float(sum(logp_TV[len(context) - 1 + j, t] for j, t in enumerate(continuation)))


def test_loglikelihood_equals_the_forward_and_batching_changes_no_score(tiny):
    graphdef, params, tok = tiny
    encode = lambda s: tok.encode(s, add_bos=True)  # noqa: E731
    # "hel" + "lo": the whole text merges across the boundary, so the continuation is
    # what follows the context's own tokens in the whole text's encoding
    boundary = loglik.encode_pair(encode, "hel", "lo world")
    whole = encode("hello world")
    assert boundary == (encode("hel"), whole[len(encode("hel")):])
    assert boundary[0] + boundary[1] != whole  # the merge really crosses the boundary
    requests = [("Question: What is 3 + 4?\nAnswer:", c) for c in (" 7", " 8", " 12")]
    requests += [("def add(a, b):", "\n    return a + b"), ("hello ", "world"), ("", "fox")]
    pairs = [boundary] + [loglik.encode_pair(encode, c, k) for c, k in requests]
    assert pairs[-2] == loglik.encode_pair(encode, "hello", " world")  # spaces move over
    expected = [direct(graphdef, params, c, k) for c, k in pairs]
    mesh = runner.make_mesh({"data": -1})
    # prefill_chunk=4 prefills each context in several chunks; 64 in one
    for batch_size, on_mesh, chunk in ((4, None, 64), (16, mesh, 64), (4, None, 4),
                                       (16, mesh, 4)):
        scorer = loglik.Scorer(graphdef, params, batch_size=batch_size, mesh=on_mesh,
                               prefill_chunk=chunk)
        got = [ll for ll, _ in scorer.loglikelihood(pairs)]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # is_greedy: a continuation made of the model's own argmax tokens
    context = encode("hello")
    greedy = []
    for _ in range(3):
        greedy.append(int(np.argmax(forward_logp(graphdef, params, context + greedy)[
            len(context) + len(greedy) - 1])))
    flags = [g for _, g in loglik.Scorer(graphdef, params).loglikelihood(
        [(context, greedy), (context, [(greedy[0] + 1) % tok.vocab_size] + greedy[1:])])]
    assert flags == [True, False]


def test_long_requests_are_cut_from_the_left_and_counted(tiny):
    graphdef, params, _ = tiny
    max_len = 10
    scorer = loglik.Scorer(graphdef, params, max_len=max_len, batch_size=4)
    context, continuation = list(range(5, 17)), [20, 21, 22]  # 15 tokens > max_len + 1
    long_cont = list(range(30, 44))  # the continuation alone is longer than max_len
    (ll, _), (ll_long, _), _ = scorer.loglikelihood(
        [(context, continuation), ([2], long_cont), ([2, 3], [4])])
    kept = (context + continuation)[-(max_len + 1):]
    np.testing.assert_allclose(ll, direct(graphdef, params, kept[:-3], continuation),
                               atol=1e-5)
    window = long_cont[-(max_len + 1):]
    np.testing.assert_allclose(ll_long, direct(graphdef, params, window[:1], window[1:]),
                               atol=1e-5)
    assert (scorer.truncated.context, scorer.truncated.continuation) == (2, 1)


def test_rolling_windows_cover_every_token_once_with_at_most_max_len():
    tokens = list(range(100, 123))
    windows = loglik.rolling_windows(tokens, 1, 8)
    assert [t for _, cont in windows for t in cont] == tokens
    assert windows[0][0] == [1]
    for context, continuation in windows:
        assert len(context) + len(continuation) - 1 <= 8
    # a short last window sees as many tokens before it as still fit
    assert windows == [([1], tokens[:8]), (tokens[7:8], tokens[8:16]),
                       (tokens[14:16], tokens[16:])]


def write_task(path, header: dict, rows: list[dict]):
    (path.parent / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in header.items()) + "\n")
    return path


def test_task_file_errors_name_the_file_line_and_field(tmp_path):
    with pytest.raises(TaskError, match="unknown task 'arithmetc_mc'.*known tasks: "
                                        "arithmetic_d1, .*arithmetic_mc.*stdlib_bpb"):
        load_task("arithmetc_mc")
    mc = {"name": "mine", "kind": "multiple_choice", "data": "rows.jsonl",
          "prompt": "Q: {question}", "choices": "choices", "answer": "label"}
    rows = [{"question": "a", "choices": ["x", "y"], "label": 1}]
    for missing in ("choices", "prompt"):
        header = {k: v for k, v in mc.items() if k != missing}
        path = write_task(tmp_path / f"no_{missing}.yaml", header, rows)
        with pytest.raises(TaskError, match=f"no_{missing}.yaml: missing field '{missing}'"):
            read_task(path)
    bad_rows = rows + [{"question": "b", "choices": ["x", "y"], "label": 2}]
    with pytest.raises(TaskError, match=r"rows.jsonl line 2: field 'label' must be the index"):
        read_task(write_task(tmp_path / "bad.yaml", mc, bad_rows))
    with pytest.raises(TaskError, match=r"rows.jsonl line 1: missing field 'question'"):
        read_task(write_task(tmp_path / "q.yaml", mc, [{"choices": ["x", "y"], "label": 0}]))
    with pytest.raises(TaskError, match="typed.yaml: field 'fewshot' must be int, got 'two'"):
        read_task(write_task(tmp_path / "typed.yaml", {**mc, "fewshot": "two"}, rows))
    with pytest.raises(TaskError, match="unknown field 'promt'.*did you mean 'prompt'"):
        read_task(write_task(tmp_path / "typo.yaml", {**mc, "promt": "x"}, rows))
    # a JSONL with a header line is a task file too; few-shot draws are deterministic
    jsonl = tmp_path / "inline.jsonl"
    header = {k: v for k, v in mc.items() if k != "data"} | {"fewshot": 1}
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"task": header}, *rows * 3]) + "\n")
    task = read_task(jsonl)
    assert len(task.rows) == 3 and task.fewshot_prefix(0) == task.fewshot_prefix(0) == \
        "Q: a y\n\n"


def test_bits_per_byte_of_a_random_model_is_log2_vocab_per_byte(tmp_path):
    root = tmp_path
    tokenizer = Tokenizer.load(eval_helpers.tokenizer_dir(root / "tok"))
    cfg = eval_helpers.model_config(tokenizer.vocab_size, max_seq_len=32)
    import dataclasses

    cfg = dataclasses.replace(cfg, init_std=0.002)  # logits ~ 0: near-uniform predictions
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(1)))
    (root / "docs").mkdir()
    for i, text in enumerate(eval_helpers.CORPUS[:4]):
        (root / "docs" / f"{i}.txt").write_text(text * 3)
    task = write_task(root / "ppl.yaml", {"name": "ppl", "kind": "perplexity",
                                          "data": "docs"}, [])
    model = runner.EvalModel(graphdef, params, tokenizer, batch_size=8, progress=False)
    metrics = runner.run_task(model, read_task(task))
    expected = math.log2(tokenizer.vocab_size) * metrics["tokens_per_byte"]
    assert metrics["bits_per_byte"] == pytest.approx(expected, rel=0.01)
    assert metrics["token_perplexity"] == pytest.approx(tokenizer.vocab_size, rel=0.02)
    assert metrics["bits_per_byte_stderr"] > 0 and metrics["n"] == 4
    # `prefill_chunk` (configs/eval.py) reaches the scorer; the figures do not depend on it.
    chunked = runner.EvalModel(graphdef, params, tokenizer, batch_size=8, progress=False,
                               prefill_chunk=8)
    assert chunked.scorer.prefill_chunk == 8
    assert runner.run_task(chunked, read_task(task))["bits_per_byte"] == pytest.approx(
        metrics["bits_per_byte"], rel=1e-5)


def test_stats_pass_at_k_and_standard_errors():
    from itertools import combinations

    for n, c, k in ((5, 2, 1), (5, 2, 3), (6, 0, 2), (4, 4, 4), (7, 3, 4)):
        draws = list(combinations(range(n), k))  # the first c samples are the correct ones
        brute = np.mean([any(i < c for i in draw) for draw in draws])
        assert stats.pass_at_k(n, c, k) == pytest.approx(brute)
    assert stats.mean_stderr([1, 1, 0, 0]) == pytest.approx((0.5, math.sqrt(1 / 3) / 2))
    ratio, se = stats.ratio_stderr([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert ratio == 1.0 and se == 0.0


def test_generation_scores_completions_with_the_verifier(tiny, tmp_path):
    graphdef, params, tokenizer = tiny
    rows = [{"prompt": "hello", "answer": "", "pattern": ".*"},
            {"prompt": "fox", "answer": "", "pattern": ".*"},
            {"prompt": "the", "answer": "", "pattern": "^NEVER$"},
            {"prompt": "def", "answer": "", "pattern": "^NEVER$"}]
    header = {"name": "gen", "kind": "generation", "data": "rows.jsonl",
              "prompt": "{prompt}", "verifier": "regex", "answer": "answer", "n": 3,
              "k": [1, 2], "temperature": 1.0, "max_new_tokens": 4}
    task = read_task(write_task(tmp_path / "gen.yaml", header, rows))
    model = runner.EvalModel(graphdef, params, tokenizer, batch_size=8, progress=False)
    metrics = runner.run_task(model, task)
    for k in (1, 2):
        assert metrics[f"pass@{k}"] == 0.5
        assert metrics[f"pass@{k}_stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)
    with pytest.raises(TaskError, match="need 'temperature' > 0"):
        read_task(write_task(tmp_path / "greedy.yaml", {**header, "temperature": 0}, rows))


def test_shipped_rows_regenerate_byte_for_byte_and_every_shipped_task_loads(tmp_path):
    from llm.eval import shipped
    from llm.eval.task_files import known_tasks, shipped_dir

    for path in shipped.write(tmp_path):
        assert path.read_bytes() == (shipped_dir() / path.name).read_bytes(), path.name
    names = known_tasks()
    assert {"arithmetic_d1", "arithmetic_d2", "arithmetic_d3", "arithmetic_mc",
            "stdlib_bpb"} <= set(names)
    kinds = {name: load_task(name).kind for name in names if name != "stdlib_bpb"}
    assert kinds["arithmetic_mc"] == "multiple_choice" and kinds["arithmetic_d3"] == \
        "generation"


def test_table_puts_models_in_rows_and_tasks_in_columns_with_stderr():
    from llm.eval import table

    results = [{"model": "a", "tasks": {"mc": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.25,
                                               "acc_norm_stderr": 0.05, "n": 4.0}}},
               {"model": "b", "tasks": {"ppl": {"bits_per_byte": 1.5,
                                                "bits_per_byte_stderr": 0.01}}}]
    assert table.markdown(results).splitlines() == [
        "| model | mc acc_norm | ppl bits_per_byte |", "|---|---|---|",
        "| a | 0.2500 ± 0.0500 |  |", "| b |  | 1.5000 ± 0.0100 |"]
    assert table.to_csv(results).splitlines()[1] == "a,0.25,0.05,,"


def test_eval_tasks_in_training_are_checked_when_the_run_is_built(tmp_path):
    from synthetic_task import SyntheticTask
    from test_train import config_for

    from llm.config import ConfigError
    from llm.train.loop import train

    config = config_for(tmp_path / "a", "eval.tasks=stdlib_bpb", "eval.every_steps=0")
    with pytest.raises(ConfigError, match="eval.tasks='stdlib_bpb' run every "
                                          "eval.every_steps, which is 0"):
        train(config, SyntheticTask(config))
    config = config_for(tmp_path / "b", "eval.tasks=no_such_task")
    with pytest.raises(TaskError, match="unknown task 'no_such_task'"):
        train(config, SyntheticTask(config))
    assert not (tmp_path / "b" / "checkpoints").exists() or not any(
        (tmp_path / "b" / "checkpoints").iterdir())
