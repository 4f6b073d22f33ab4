"""A prompt too long for the context: one error with its length, the context, max_new_tokens
and the file line; `truncate_prompt='left'` keeps its last tokens instead."""

import numpy as np
import pytest
from flax import nnx

from llm.model import ModelConfig, Transformer
from llm.sampling import decode
from llm.sampling.decode import SamplingParams
from llm.sampling.sampler import Sampler, complete_rows

CFG = ModelConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                  head_dim=16, d_ff=64, max_seq_len=64)


@pytest.fixture(scope="module")
def sampler():
    graphdef, params = nnx.split(Transformer(CFG, nnx.Rngs(0)))
    return Sampler(graphdef, params, None)


ROWS = [{"prompt_ids": [1, 2, 3]}, {"prompt_ids": list(range(1, 61))}]
WHERE = ["in.jsonl line 1", "in.jsonl line 3"]


def test_an_over_long_prompt_names_its_line(sampler):
    with pytest.raises(ValueError) as caught:
        complete_rows(sampler, ROWS, batch_size=2, where=WHERE, max_new_tokens=8,
                      temperature=0.0)
    message = str(caught.value)
    assert message.startswith("in.jsonl line 3: prompt of 60 tokens does not fit the "
                              "context of 64 with max_new_tokens 8"), message
    assert "truncate_prompt=left" in message


def test_truncate_left_keeps_the_prompts_end(sampler):
    out = complete_rows(sampler, ROWS, batch_size=2, where=WHERE, max_new_tokens=8,
                        temperature=0.0, truncate_prompt="left")
    assert [len(r["tokens"]) for r in out] == [8, 8]
    # the kept end is what the model saw: the same completion as giving it directly
    direct = complete_rows(sampler, [ROWS[0], {"prompt_ids": list(range(5, 61))}],
                           batch_size=2, max_new_tokens=8, temperature=0.0)
    assert out[1]["tokens"] == direct[1]["tokens"]
    with pytest.raises(ValueError, match="truncate_prompt='right'"):
        complete_rows(sampler, ROWS, batch_size=2, truncate_prompt="right")


def test_the_decode_api_says_the_same_per_row():
    prompt_BP = np.ones((2, 60), np.int32)
    lengths_B = np.array([3, 60], np.int32)
    with pytest.raises(ValueError, match="row 1: prompt of 60 tokens does not fit the "
                                         "context of 64 with max_new_tokens 8"):
        decode.validate_request(CFG, prompt_BP, lengths_B,
                                SamplingParams.create(2, max_new_tokens=8), None)
