"""SmolLM2-135M-Instruct (llm/demo/smollm2/model.py), imported with `init_from=hf:DIR`: its special
tokens and chat template as transformers uses them, so chat sampling gives transformers' replies."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Say hello."}],
    [{"role": "user", "content": "List three primary colors."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a fruit that is yellow."}],
]
MAX_NEW = 40


def transformers_replies(hf_dir: pathlib.Path) -> list[str]:
    """Greedy replies of transformers' own generate, prompted by its apply_chat_template."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    replies = []
    for messages in CHATS:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False,
                                 eos_token_id=model.generation_config.eos_token_id)
        replies.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return replies


@pytest.mark.slow
def test_sample_py_chat_replies_equal_transformers(smollm2_dir, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS))
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "scripts/sample.py", "--config=configs/sample.py",
         f"--config.init_from=hf:{smollm2_dir}", f"--config.prompts_file={rows}",
         f"--config.output_file={out}", "--config.temperature=0",
         f"--config.max_new_tokens={MAX_NEW}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, XLA_FLAGS=""))  # one CPU device, as a user samples
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    theirs = transformers_replies(smollm2_dir)
    assert [r["completion"] for r in ours] == theirs
    # the replies that ended did so at the model's EOS (<|im_end|>), not at a length limit
    assert sum(r["finish_reason"] == "eos" for r in ours) >= 3


@pytest.mark.slow
def test_imported_tokenizer_reads_the_models_special_tokens(smollm2_dir):
    import transformers

    from llm.data import chat
    from llm.data.tokenizer import Tokenizer

    tok = Tokenizer.load(smollm2_dir)
    hf = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)  # <|im_start|>, <|im_end|>
    assert tok.eos_ids == (2,) and not tok.add_bos_token
    assert tok.encode("The capital of France is", add_bos=True) == hf.encode(
        "The capital of France is")
    for messages in CHATS:
        for add in (False, True):
            ids, _ = chat.render_messages(tok, messages, add)
            assert ids == list(hf.apply_chat_template(messages, add_generation_prompt=add,
                                                      return_dict=True)["input_ids"])
