"""Our DPO-family losses and `rewards/*` metrics equal TRL 1.16's DPOTrainer on the same
tiny model (weights imported from transformers), the same reference and the same pairs."""

from __future__ import annotations

import numpy as np
import pytest
import trl_peer

from llm.config import load_config
from llm.hf import convert as hf
from llm.train.dpo import DpoTask

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

PAIRS, LENGTH = 3, 16
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_dpo")
    policy = trl_peer.hf_llama(0, root / "policy")
    reference = trl_peer.hf_llama(1, root / "reference")
    ours = {name: hf.import_hf(str(root / name), dtype="float32")
            for name in ("policy", "reference")}
    return policy, reference, ours


def our_loss(models, loss_type, **dpo):
    from flax import nnx

    config = load_config("configs/dpo.py:model=tiny", [f"dpo.loss_type={loss_type}",
                                                         *(f"dpo.{k}={v}" for k, v in dpo.items())])
    task = DpoTask(config)
    _, _, ours = models
    modules = {name: nnx.merge(graphdef, params) for name, (_, graphdef, params, _)
               in ours.items()}
    batch = trl_peer.pair_rows(PAIRS, LENGTH)["ours"]
    side = {"reference": modules["reference"]} if task.needs_reference else {}
    loss_sum, sums = task.loss(modules["policy"], side, batch, None)
    weight = float(sums.pop("weight"))
    return float(loss_sum) / weight, {k: float(v) / weight for k, v in sums.items()}


def trl_loss(models, tmp_path, loss_type, **dpo):
    policy, reference, _ = models
    args = trl.DPOConfig(str(tmp_path / "trl"), loss_type=[loss_type], report_to=[],
                         per_device_train_batch_size=PAIRS, use_cpu=True, bf16=False,
                         **dpo)
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args,
                             train_dataset=trl_peer.tiny_dataset(),
                             processing_class=trl_peer.tokenizer())
    trainer.model.eval()
    trainer.model.training = True  # TRL files metrics under 'train' by this flag
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, trl_peer.pair_rows(PAIRS, LENGTH)["trl"],
                                     False)
    return float(loss), trl_peer.last_metrics(trainer)



@pytest.mark.parametrize("loss_type,dpo", [
    ("sigmoid", dict(beta=0.3)), ("hinge", dict(beta=0.3)), ("ipo", dict(beta=0.3)),
    ("robust", dict(beta=0.3, label_smoothing=0.2))])
def test_dpo_losses_match_trl(models, tmp_path, loss_type, dpo):
    ours, our_metrics = our_loss(models, loss_type, **dpo)
    theirs, their_metrics = trl_loss(models, tmp_path, loss_type, **dpo)
    assert ours == pytest.approx(theirs, abs=1e-5)
    for key in METRICS:
        assert our_metrics[key] == pytest.approx(their_metrics[key], abs=1e-5), key
    assert abs(our_metrics["rewards/margins"]) > 1e-3  # the batch tells the losses apart


def test_simpo_matches_trl_cpo(models, tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    beta, gamma = 2.0, 0.4
    ours, our_metrics = our_loss(models, "simpo", beta=beta, simpo_gamma=gamma)
    args = CPOConfig(str(tmp_path / "cpo"), loss_type="simpo", cpo_alpha=0.0, beta=beta,
                     simpo_gamma=gamma, report_to=[], use_cpu=True, bf16=False,
                     per_device_train_batch_size=PAIRS)
    trainer = CPOTrainer(model=models[0], args=args, train_dataset=trl_peer.tiny_dataset(),
                         processing_class=trl_peer.tokenizer())
    batch = trl_peer.paired_labels(trl_peer.pair_rows(PAIRS, LENGTH)["trl"], PAIRS)
    with torch.no_grad():
        theirs, their_metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    assert ours == pytest.approx(float(theirs), abs=1e-5)
    for key in METRICS:
        assert our_metrics[key] == pytest.approx(float(their_metrics[key]), abs=1e-5), key


def test_orpo_odds_ratio_matches_trl(models, tmp_path):
    """The odds-ratio term and the metrics agree; the SFT term differs by design: TRL's ORPO
    takes the NLL over the chosen row's prompt and answer, ours over the answer only (the
    issue's 'SFT loss on the chosen answer'), so each side's own NLL is taken out."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    beta = 0.25
    ours, our_metrics = our_loss(models, "orpo", beta=beta)
    args = ORPOConfig(str(tmp_path / "orpo"), beta=beta, report_to=[], use_cpu=True,
                      bf16=False, per_device_train_batch_size=PAIRS)
    trainer = ORPOTrainer(model=models[0], args=args, train_dataset=trl_peer.tiny_dataset(),
                          processing_class=trl_peer.tokenizer())
    batch = trl_peer.paired_labels(trl_peer.pair_rows(PAIRS, LENGTH)["trl"], PAIRS)
    with torch.no_grad():
        theirs, their_metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    assert ours - our_metrics["nll_loss"] == pytest.approx(
        float(theirs) - float(their_metrics["nll_loss"]), abs=1e-5)
    for key in METRICS:
        assert our_metrics[key] == pytest.approx(float(their_metrics[key]), abs=1e-5), key


def test_at_initialisation_sigmoid_dpo_is_log_two(models):
    """Policy = reference: loss log 2, every implicit reward 0."""
    from flax import nnx

    _, _, ours = models
    _, graphdef, params, _ = ours["policy"]
    task = DpoTask(load_config("configs/dpo.py:model=tiny", ["dpo.beta=0.3"]))
    policy = nnx.merge(graphdef, params)
    loss_sum, sums = task.loss(policy, {"reference": policy},
                               trl_peer.pair_rows(PAIRS, LENGTH)["ours"], None)
    assert float(loss_sum) / PAIRS == pytest.approx(np.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert float(sums[key]) == 0.0
