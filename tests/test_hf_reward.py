"""Reward models and Hugging Face: a `LlamaForSequenceClassification` imports with its score
head and scores as transformers does, and the Bradley-Terry loss and metrics equal TRL's
RewardTrainer on the same model and pairs."""

from __future__ import annotations

import numpy as np
import pytest
import trl_peer
from flax import nnx

from llm import scoring
from llm.config import load_config
from llm.hf import convert as hf
from llm.train.reward import RewardTask

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

PAIRS, LENGTH = 3, 16


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_reward")
    model = trl_peer.hf_llama(0, root / "rm", classification=True)
    cfg, graphdef, params, _ = hf.import_hf(str(root / "rm"), dtype="float32",
                                            build=scoring.add_score_head)
    return model, cfg, nnx.merge(graphdef, params), root


def test_imported_classifier_scores_as_transformers(classifier):
    model, _, ours, _ = classifier
    rows = trl_peer.pair_rows(PAIRS, LENGTH)
    with torch.no_grad():
        theirs = model(input_ids=rows["trl"]["input_ids"],
                       attention_mask=rows["trl"]["attention_mask"]).logits[:, 0].numpy()
    batch = rows["ours"]
    mine = np.concatenate([np.asarray(scoring.sequence_scores(
        ours, batch[f"{k}_tokens"], batch[f"{k}_positions"], batch[f"{k}_segment_ids"]))
        for k in ("chosen", "rejected")])
    np.testing.assert_allclose(mine, theirs, atol=1e-5)


def test_classifier_without_a_score_head_is_refused(classifier):
    *_, root = classifier
    with pytest.raises(hf.HFError, match="is a reward model"):
        hf.import_hf(str(root / "rm"))


@pytest.mark.parametrize("margin,center", [(False, 0.0), (True, 0.05)])
def test_bradley_terry_matches_trl_reward_trainer(classifier, tmp_path, margin, center):
    model, _, ours, _ = classifier
    rows = trl_peer.pair_rows(PAIRS, LENGTH)
    margins = np.asarray([0.5, -0.25, 1.0], np.float32)
    config = load_config("configs/reward.py:model=tiny",
                         [f"reward.center_rewards_coefficient={center}"])
    batch = {**rows["ours"], **({"margin": margins} if margin else {})}
    loss_sum, sums = RewardTask(config).loss(ours, {}, batch, None)
    weight = float(sums.pop("weight"))
    args = trl.RewardConfig(str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False,
                            center_rewards_coefficient=center or None,
                            per_device_train_batch_size=PAIRS)
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=trl_peer.tiny_dataset(),
                                processing_class=trl_peer.tokenizer())
    trainer.model.eval()
    trainer.model.training = True  # TRL files metrics under 'train' by this flag
    inputs = {k: rows["trl"][k] for k in ("input_ids", "attention_mask")}
    if margin:
        inputs["margin"] = torch.tensor(margins)
    with torch.no_grad():
        theirs = float(trainer.compute_loss(trainer.model, inputs))
    metrics = trl_peer.last_metrics(trainer)
    assert float(loss_sum) / weight == pytest.approx(theirs, abs=1e-5)
    assert float(sums["accuracy"]) / weight == pytest.approx(metrics["accuracy"], abs=1e-5)
    assert float(sums["margin"]) / weight == pytest.approx(metrics["margin"], abs=1e-5)
