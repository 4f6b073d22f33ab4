"""Our KTO loss, its batch-level KL reference point and its metrics equal TRL 1.16's
KTOTrainer on the same tiny model (weights imported from transformers), the same reference
and the same unpaired rows, TRL's mismatched KL rows built by TRL's own collator."""

from __future__ import annotations

import numpy as np
import pytest
import trl_peer

from llm.config import load_config
from llm.hf import convert as hf
from llm.train import get_task

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

LENGTH = 16
LABELS = (True, False, True, True, False)
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
           "logps/rejected", "kl")
KTO = dict(beta=0.3, desirable_weight=1.3, undesirable_weight=0.7)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_kto")
    # seeds whose mismatched rows give a positive KL estimate, so z is not clamped to 0
    policy = trl_peer.hf_llama(3, root / "policy")
    reference = trl_peer.hf_llama(1, root / "reference")
    ours = {name: hf.import_hf(str(root / name), dtype="float32")
            for name in ("policy", "reference")}
    return policy, reference, ours


def unpaired_rows(seed: int = 0) -> tuple[dict, list[dict]]:
    """Our batch of right-padded rows (prompts and completions of varied length) and the
    same rows as TRL's tokenised examples, with TRL's cycled `KL_completion_ids`."""
    rng = np.random.default_rng(seed)
    rows = len(LABELS)
    ours = {k: np.zeros((rows, LENGTH), np.int32)
            for k in ("tokens", "targets", "positions", "segment_ids")}
    ours["loss_mask"] = np.zeros((rows, LENGTH), np.float32)
    ours["label"] = np.asarray(LABELS, np.int32)
    ours["prompt_lengths"] = np.zeros(rows, np.int32)
    examples = []
    for i, label in enumerate(LABELS):
        prompt, answer = int(rng.integers(2, 6)), int(rng.integers(2, 8))
        n = prompt + answer
        seq = rng.integers(4, trl_peer.VOCAB, n)
        seq[-1] = 1  # EOS
        ours["tokens"][i, :n] = seq
        ours["targets"][i, :n - 1] = seq[1:]
        ours["positions"][i, :n] = np.arange(n)
        ours["segment_ids"][i, :n] = 1
        ours["loss_mask"][i, prompt - 1:n - 1] = 1.0  # targets that are completion tokens
        ours["prompt_lengths"][i] = prompt
        examples.append({"prompt_ids": seq[:prompt].tolist(),
                         "completion_ids": seq[prompt:].tolist(), "label": label})
    completions = [e["completion_ids"] for e in examples]
    for e, kl in zip(examples, completions[-1:] + completions[:-1], strict=True):
        e["KL_completion_ids"] = kl  # TRL's _prepare_dataset: completions cycled by one
    return ours, examples


def our_loss(models, **kto):
    from flax import nnx

    task = get_task("dpo")(load_config("configs/dpo.py:model=tiny", [
        "dpo.loss_type=kto", *(f"dpo.{k}={v}" for k, v in kto.items())]))
    modules = {name: nnx.merge(graphdef, params)
               for name, (_, graphdef, params, _) in models[2].items()}
    loss_sum, sums = task.loss(modules["policy"], {"reference": modules["reference"]},
                               unpaired_rows()[0], None)
    weight = float(sums.pop("weight"))
    return float(loss_sum) / weight, {k: float(v) / weight for k, v in sums.items()}


def trl_loss(models, tmp_path, **kto):
    from datasets import Dataset
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    policy, reference, _ = models
    args = trl.KTOConfig(str(tmp_path / "kto"), report_to=[], use_cpu=True, bf16=False,
                         per_device_train_batch_size=len(LABELS), **kto)
    dataset = Dataset.from_list([{"prompt": "w5 w6", "completion": " w7 w8", "label": True},
                                 {"prompt": "w5 w6", "completion": " w9", "label": False}] * 2)
    trainer = trl.KTOTrainer(model=policy, ref_model=reference, args=args,
                             train_dataset=dataset, processing_class=trl_peer.tokenizer())
    trainer.model.eval()
    trainer.model.training = True  # TRL files metrics under 'train' by this flag
    batch = DataCollatorForUnpairedPreference(pad_token_id=0)(unpaired_rows()[1])
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, batch, False)
    return float(loss), trl_peer.last_metrics(trainer)


def test_kto_matches_trl(models, tmp_path):
    ours, our_metrics = our_loss(models, **KTO)
    theirs, their_metrics = trl_loss(models, tmp_path, **KTO)
    assert ours == pytest.approx(theirs, abs=1e-5)
    for key in METRICS:
        assert our_metrics[key] == pytest.approx(their_metrics[key], abs=1e-5), key
    assert our_metrics["kl"] > 1e-3  # the reference point is in play, not clamped to 0
    assert abs(our_metrics["rewards/margins"]) > 1e-3  # the batch tells the rows apart


def test_kto_at_initialisation(models):
    """Policy = reference: every reward and the KL are 0, each row's loss is w·(1 - σ(0))."""
    from flax import nnx

    _, graphdef, params, _ = models[2]["policy"]
    task = get_task("dpo")(load_config("configs/dpo.py:model=tiny", [
        "dpo.loss_type=kto", *(f"dpo.{k}={v}" for k, v in KTO.items())]))
    policy = nnx.merge(graphdef, params)
    loss_sum, sums = task.loss(policy, {"reference": policy}, unpaired_rows()[0], None)
    weights = [KTO["desirable_weight"] if good else KTO["undesirable_weight"]
               for good in LABELS]
    assert float(loss_sum) == pytest.approx(0.5 * sum(weights), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "kl"):
        assert float(sums[key]) == 0.0
