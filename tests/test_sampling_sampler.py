"""Host Sampler: stop strings across tokens, trimming, streaming == one-shot, chat template."""

import numpy as np
import pytest
from flax import nnx

from llm.model import ModelConfig, Transformer
from llm.sampling.sampler import Sampler, find_stop


class ByteTokenizer:
    """Bytes 0..255 are tokens (one latin-1 character each); then BOS, EOS, PAD."""

    bos_id, eos_id, pad_id, vocab_size = 256, 257, 258, 259

    @property
    def eos_ids(self):
        return (self.eos_id,)

    def encode(self, text, add_bos=False, add_eos=False):
        return [self.bos_id] * add_bos + list(text.encode("latin-1")) + [self.eos_id] * add_eos

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("latin-1")


CFG = ModelConfig(vocab_size=259, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=16, d_ff=128, max_seq_len=128, init_std=0.3)


@pytest.fixture(scope="module")
def sampler():
    graphdef, params = nnx.split(Transformer(CFG, nnx.Rngs(0)))
    return Sampler(graphdef, params, ByteTokenizer(), max_len=64, chunk_size=4)


def test_stop_string_across_tokens_ends_and_trims(sampler):
    prompts = ["hello", "abc"]
    free = sampler.complete(prompts, temperature=0.0, max_new_tokens=40)
    # A 2-character stop string spans two tokens; take it from row 0's free-running text.
    stop = free[0].text[6:8]
    cut = free[0].text.find(stop)
    out = sampler.complete(prompts, temperature=0.0, max_new_tokens=40, stop=[stop, "\x00zz"])
    assert out[0].finish_reason == "stop"
    assert out[0].text == free[0].text[:cut]
    assert out[0].tokens == free[0].tokens[:cut + 2]  # up to the token ending the stop
    np.testing.assert_allclose(out[0].logprobs, free[0].logprobs[:cut + 2], atol=1e-6)
    other = find_stop(free[1].text, [stop, "\x00zz"])
    if other < 0:
        assert out[1].text == free[1].text and out[1].finish_reason == free[1].finish_reason
    else:
        assert out[1].text == free[1].text[:other] and out[1].finish_reason == "stop"


def test_stream_pieces_join_to_the_one_shot_text(sampler):
    kwargs = dict(temperature=0.8, top_p=0.9, seed=3, max_new_tokens=30)
    whole = sampler.complete(["stream me"], **kwargs)[0]
    stream = sampler.stream("stream me", **kwargs)
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as done:
            result = done.value
            break
    assert len(pieces) > 2  # it really arrived in chunks
    assert "".join(pieces) == whole.text == result.text
    assert result.tokens == whole.tokens


def test_eos_is_not_in_the_text_and_stop_token_ids(sampler):
    free = sampler.complete(["x"], temperature=0.0, max_new_tokens=20)[0]
    stop_id = free.tokens[5]
    n = free.tokens.index(stop_id) + 1
    out = sampler.complete(["x"], temperature=0.0, max_new_tokens=20,
                           stop_token_ids=[stop_id])[0]
    assert out.finish_reason == "stop" and out.tokens == free.tokens[:n]
    sampler.tokenizer.eos_id = stop_id  # the same token as EOS: reported and left out
    try:
        out = sampler.complete(["x"], temperature=0.0, max_new_tokens=20)[0]
    finally:
        sampler.tokenizer.eos_id = ByteTokenizer.eos_id
    assert out.finish_reason == "eos" and out.tokens == free.tokens[:n]
    assert out.text == ByteTokenizer().decode(free.tokens[:n - 1])


def test_chat_uses_the_template(sampler):
    seen = []

    def template(messages):
        seen.append(messages)
        return "".join(m["content"] for m in messages) + ">"

    sampler.chat_template = template
    reply = sampler.chat([{"role": "user", "content": "hi"}], temperature=0.0,
                         max_new_tokens=5)
    direct = sampler.complete(["hi>"], temperature=0.0, max_new_tokens=5)[0]
    assert seen and reply.tokens == direct.tokens


def test_invalid_controls_raise_value_error(sampler):
    with pytest.raises(ValueError, match="top_p"):
        sampler.complete(["x"], top_p=1.5)
    with pytest.raises(ValueError, match="empty prompt"):
        sampler.complete([[]], max_new_tokens=3)


def test_complete_rows_reads_prompt_messages_and_ids(sampler):
    from llm.sampling.sampler import complete_rows

    sampler.chat_template = lambda messages: messages[-1]["content"]
    rows = [{"prompt": "ab", "id": 1}, {"messages": [{"role": "user", "content": "ab"}]},
            {"prompt_ids": [256, 97, 98]}]
    out = complete_rows(sampler, rows, batch_size=2, temperature=0.0, max_new_tokens=4)
    assert [r.get("id") for r in out] == [1, None, None]
    assert out[0]["tokens"] == out[1]["tokens"] == out[2]["tokens"]  # same prompt ids
    assert all(set(r) >= {"completion", "tokens", "logprobs", "finish_reason"} for r in out)
    with pytest.raises(ValueError, match="row 1"):
        complete_rows(sampler, [{"text": "x"}], batch_size=1)
    beams = complete_rows(sampler, rows[:1], batch_size=1, beam_width=2, max_new_tokens=4)
    assert len(beams[0]["tokens"]) <= 4


def test_sample_config_has_every_control():
    from configs import sample

    config = sample.get_config()
    for key in ("init_from", "prompt", "prompts_file", "output_file", "chat", "temperature",
                "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                "frequency_penalty", "max_new_tokens", "min_new_tokens", "stop",
                "stop_token_ids", "seed", "batch_size", "beam_width"):
        assert key in config
    assert (config.temperature, config.top_p, config.top_k) == (0.7, 0.9, 0)
    assert sample.get_config("chat").chat
    with pytest.raises(AttributeError):
        config.temprature = 1.0  # locked: typos are errors
    assert dict(config.mesh.shape)["data"] == -1


def test_stop_strings_wait_for_min_new_tokens(sampler):
    """As EOS and stop ids are held back until min_new_tokens, so are stop strings: one
    that ends inside the text of the first min_new_tokens tokens does not count."""
    kwargs = dict(temperature=0.0, max_new_tokens=30, min_new_tokens=8)
    free = sampler.complete(["hello"], **kwargs)[0]
    min_end = len(ByteTokenizer().decode(free.tokens[:8]))
    stop = free.text[2]
    assert 0 <= find_stop(free.text, [stop]) < min_end  # it would have stopped early
    out = sampler.complete(["hello"], stop=[stop], **kwargs)[0]
    later = find_stop(free.text, [stop], 0, min_end)
    if later < 0:
        assert out.text == free.text and out.tokens == free.tokens
    else:
        assert out.finish_reason == "stop" and out.text == free.text[:later]
        assert len(out.tokens) >= 8


def test_stop_string_split_across_two_chunks(sampler):
    """Chunks of 4 steps after the prefill's token: a stop over tokens 4 and 5 is only
    whole in the second check; streamed pieces never pass the stop."""
    free = sampler.complete(["abc"], temperature=0.0, max_new_tokens=24)[0]
    assert all(t < 256 for t in free.tokens[:8])  # one character per token
    stop = free.text[4:6]
    cut = free.text.find(stop)
    out = sampler.complete(["abc"], temperature=0.0, max_new_tokens=24, stop=[stop])[0]
    assert out.finish_reason == "stop" and out.text == free.text[:cut]
    assert out.tokens == free.tokens[:cut + 2]
    pieces = list(sampler.stream("abc", temperature=0.0, max_new_tokens=24, stop=[stop]))
    assert "".join(pieces) == free.text[:cut]


def test_bad_batches_and_rows_are_one_clear_error(sampler):
    from llm.sampling.sampler import complete_rows

    with pytest.raises(ValueError, match="no prompts"):
        sampler.complete([])
    with pytest.raises(ValueError, match="chunk_size=0"):
        Sampler(sampler.graphdef, sampler.params, ByteTokenizer(), chunk_size=0)
    with pytest.raises(ValueError, match="batch_size=-1"):
        complete_rows(sampler, [{"prompt": "a"}], batch_size=-1)
    with pytest.raises(ValueError, match="beam_width=0"):
        complete_rows(sampler, [{"prompt": "a"}], batch_size=1, beam_width=0)
    for row, match in [({"messages": "hi"}, "'messages' must be"),
                       ({"messages": [{"content": "hi"}]}, "'messages' must be"),
                       ({"prompt_ids": "ab"}, "'prompt_ids' must be"),
                       ({"prompt_ids": []}, "'prompt_ids' must be"),
                       ({"prompt_ids": [1, 9999]}, "'prompt_ids' must lie in \\[0, 259\\)"),
                       ({"prompt": None}, "'prompt' must be a string")]:
        with pytest.raises(ValueError, match=f"in.jsonl line 7: {match}"):
            complete_rows(sampler, [{"prompt": "ok"}, row], batch_size=2,
                          where=["in.jsonl line 5", "in.jsonl line 7"])
    def strict_template(messages):
        if messages[0]["role"] not in ("system", "user"):
            raise ValueError(f"unknown chat role {messages[0]['role']!r}")
        return messages[0]["content"]

    strict = Sampler(sampler.graphdef, sampler.params, ByteTokenizer(),
                     chat_template=strict_template)
    with pytest.raises(ValueError, match="prompts row 2: unknown chat role 'robot'"):
        complete_rows(strict, [{"prompt": "a"}, {"messages": [{"role": "robot",
                                                                "content": "hi"}]}],
                      batch_size=2)
    no_bos = Sampler(sampler.graphdef, sampler.params, ByteTokenizer(), add_bos=False)
    with pytest.raises(ValueError, match="prompts row 1: empty 'prompt'"):
        complete_rows(no_bos, [{"prompt": ""}], batch_size=1)


def test_without_a_tokenizer_rows_have_tokens_but_no_completion(sampler):
    from llm.sampling.sampler import complete_rows

    bare = Sampler(sampler.graphdef, sampler.params, None, max_len=64)
    rows = complete_rows(bare, [{"prompt_ids": [5, 6, 7]}], batch_size=1, temperature=0.0,
                         max_new_tokens=4)
    assert "completion" not in rows[0] and len(rows[0]["tokens"]) == 4
    beams = complete_rows(bare, [{"prompt_ids": [5, 6, 7]}], batch_size=1, beam_width=2,
                          max_new_tokens=4)
    assert "completion" not in beams[0] and len(beams[0]["tokens"]) == 4
    with pytest.raises(ValueError, match="no tokenizer"):
        bare.complete([[5, 6]], stop=["x"])
    with pytest.raises(ValueError, match="no tokenizer"):
        bare.complete(["text"])


def test_beam_text_leaves_out_stop_ids(sampler):
    free = sampler.complete_beam(["x"], beam_width=2, max_new_tokens=12)[0]
    stop_id = next(t for t in free.tokens[2:] if t < 256)
    sampler.complete(["y"], temperature=0.0, max_new_tokens=3)  # a different request first
    out = sampler.complete_beam(["x"], beam_width=2, max_new_tokens=12,
                                stop_token_ids=[stop_id])[0]
    assert out.tokens[-1] == stop_id and out.finish_reason == "stop"
    assert out.text == ByteTokenizer().decode(out.tokens[:-1])
