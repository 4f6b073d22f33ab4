"""LoRA SFT on SmolLM2-135M-Instruct (llm/demo/smollm2) teaches a fictional fact; the merged
export, prompted by transformers with the model's own chat template, answers it on phrasings
never trained on, and its tokenizer gives exactly the ids the run trained on."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from llm.demo.smollm2.data import FACT, FACT_ANSWERS, FACT_HELD_OUT, FACT_TRAIN
from llm.demo.smollm2.sft import SETTINGS, STEPS

ROOT = pathlib.Path(__file__).resolve().parents[1]
def answers(hf_dir: pathlib.Path) -> list[str]:
    """transformers' greedy replies to the held-out phrasings, through the model's template."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    out = []
    for question in FACT_HELD_OUT:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            reply = model.generate(ids, max_new_tokens=24, do_sample=False)
        out.append(tokenizer.decode(reply[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def run(*args: str) -> None:
    # One CPU device, as a user trains: the tests' 8 simulated devices would each hold a
    # replica of the 135M model's weights and optimiser state.
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, XLA_FLAGS=""))
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])


@pytest.mark.slow
def test_lora_sft_teaches_a_fact_the_export_answers(smollm2_dir, tmp_path):
    import transformers

    from llm.data.records import RecordSet

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q in FACT_TRAIN for a in FACT_ANSWERS]
    data = tmp_path / "fact.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not any(FACT in a for a in answers(smollm2_dir))  # the base does not know it

    workdir, export = tmp_path / "run", tmp_path / "export"
    run("scripts/train.py", "--config=configs/sft.py:lora,model=init_from",
        f"--config.init_from=hf:{smollm2_dir}", f"--config.data.path={data}",
        f"--config.workdir={workdir}", f"--config.total_steps={STEPS}",
        f"--config.checkpoint.every_steps={STEPS}", *(f"--config.{s}" for s in SETTINGS))
    run("scripts/convert_hf.py", "--mode=export", f"--checkpoint={workdir}",
        f"--hf_dir={export}", "--merge_lora", "--dtype=float32")

    replies = answers(export)
    assert sum(FACT in r for r in replies) >= 6, replies

    # the export's tokenizer renders every training row to exactly the ids trained on
    meta = json.loads((workdir / "data" / "meta.json").read_text())
    records = RecordSet(workdir / "data", "train", "sft", meta["dtype"])
    trained = sorted(records.tokens(i).tolist() for i in range(len(records)))
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    rendered = sorted(list(tokenizer.apply_chat_template(r["messages"], return_dict=True)
                           ["input_ids"]) for r in rows)
    assert trained == rendered
    # and the loss fell on exactly the replies: masked tokens are each answer + <|im_end|>
    learnt = {tokenizer.decode(records.tokens(i)[np.asarray(records.mask(i)) > 0])
              for i in range(len(records))}
    assert learnt == {a + "<|im_end|>" for a in FACT_ANSWERS}
