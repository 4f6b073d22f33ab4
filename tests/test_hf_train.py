"""Training from `init_from=hf:DIR`: the real loop starts from the transformers weights.

A tiny random LLaMA saved by transformers, with the `tiny` model config's shape, is the
base. The loop's logged step-1 loss is the loss of the weights before the first update, so
it must equal the loss transformers' own logits give on that first batch.
"""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from synthetic_task import SyntheticTask
from test_train import config_for

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm import loading as checkpoint  # noqa: E402
from llm import losses, sharding  # noqa: E402 - after the importorskip guards
from llm.config import load_config  # noqa: E402
from llm.hf import convert as hf  # noqa: E402
from llm.train.loop import train  # noqa: E402

# configs/models.py `tiny`, spelled the transformers way.
TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, intermediate_size=160,
            max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10_000.0,
            tie_word_embeddings=False)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """(directory saved by transformers, the torch model), every weight random."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name
                    else 0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path)
    return str(path), model


def reference_loss(model, batch: dict) -> float:
    """Mean masked next-token CE from transformers' logits, each packed document run alone
    (the same as our segment-masked attention with positions restarting at 0)."""
    nll = count = 0.0
    for b in range(len(batch["tokens"])):
        segments = batch["segment_ids"][b]
        for segment in np.unique(segments):
            keep = segments == segment
            with torch.no_grad():
                logits_TV = model(torch.tensor(batch["tokens"][b][keep][None])).logits[0]
            logp_TV = torch.log_softmax(logits_TV.double(), -1).numpy()
            targets_T = batch["targets"][b][keep]
            picked_T = logp_TV[np.arange(len(targets_T)), targets_T]
            nll -= float(np.sum(picked_T * batch["loss_mask"][b][keep]))
            count += float(np.sum(batch["loss_mask"][b][keep]))
    return nll / count


def our_loss(loaded: checkpoint.LoadedModel, batch: dict) -> float:
    """Mean masked next-token CE of a loaded model of ours on `batch`."""
    model = nnx.merge(loaded.graphdef, loaded.params)
    logits_BTV, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    loss_sum, sums = losses.masked_cross_entropy(logits_BTV, batch["targets"],
                                                 batch["loss_mask"])
    return float(loss_sum / sums["weight"])


def test_training_starts_from_the_hf_weights(hf_model, tmp_path):
    path, model = hf_model
    config = config_for(tmp_path, f"init_from=hf:{path}", "total_steps=8",
                        "checkpoint.every_steps=8", "eval.every_steps=0",
                        "optim.warmup_steps=0")
    task = SyntheticTask(config)
    first = next(task.datasets(config, None, tmp_path)[0].make_iterator())
    train(config, task)

    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1
    expected = reference_loss(model, first)
    # float32 logits and sums over 256 tokens: measured 7e-8 relative; a random init
    # (loss ~ln 512 = 6.2, against 6.6 for these weights) is off by far more.
    np.testing.assert_allclose(rows[0]["loss"], expected, rtol=1e-6)
    assert rows[-1]["step"] == 8

    trained = checkpoint.load_model(str(tmp_path))
    # The saved weights learnt: lower loss on that first batch than the HF weights had.
    assert our_loss(trained, first) < 0.8 * expected
    _, _, base, _ = hf.import_hf(path)
    flat = dict(nnx.to_flat_state(nnx.State(trained.params)))
    for key, value in nnx.to_flat_state(base):  # every weight trained, none left behind
        assert not np.array_equal(np.asarray(flat[key][...]), np.asarray(value[...])), key


def test_a_bad_hf_path_is_one_clear_error(tmp_path):
    config = config_for(tmp_path / "run", f"init_from=hf:{tmp_path / 'nope'}",
                        "total_steps=2")
    with pytest.raises(hf.HFError, match="nope: no config.json"):
        train(config, SyntheticTask(config))


def test_hf_weights_follow_the_runs_sharding_rules(hf_model):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = dict(sharding.DEFAULT_RULES, mlp=None)
    loaded = checkpoint.load_model(f"hf:{hf_model[0]}", mesh, rules)
    gate = loaded.params["layers"]["mlp"]["gate_proj"]["kernel"][...]
    assert "tensor" not in jax.tree.leaves(tuple(gate.sharding.spec))


def test_a_base_with_another_architecture_is_refused(hf_model, tmp_path):
    # Same shapes, different numerics: the HF model uses rope_theta 10,000 and eps 1e-5.
    config = config_for(tmp_path, f"init_from=hf:{hf_model[0]}", "total_steps=2",
                        "model.rope_theta=500000.0", "model.norm_eps=1e-6")
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"model.norm_eps=1e-06 \(init_from has 1e-05\); "
                             r"model.rope_theta=500000.0 \(init_from has 10000.0\)"):
        train(config, SyntheticTask(config))


def test_model_init_from_takes_the_bases_architecture(hf_model, tmp_path):
    import dataclasses

    from llm.train import checks

    path, _ = hf_model
    config = load_config("configs/sft.py:lora,model=init_from",
                         [f"init_from=hf:{path}", f"workdir={tmp_path}", "model.remat=full"])
    got = checks.model_config(config)
    loaded = checkpoint.load_model(f"hf:{path}").model_cfg
    keep = set(checks.RUN_MODEL_KEYS)
    assert {k: v for k, v in dataclasses.asdict(got).items() if k not in keep} == {
        k: v for k, v in dataclasses.asdict(loaded).items() if k not in keep}
    assert got.remat == "full"  # a run setting stays the run's
    config = load_config("configs/sft.py:model=init_from", [f"workdir={tmp_path}"])
    with pytest.raises(ValueError, match="model=init_from takes the architecture of "
                                         "init_from, and init_from is empty"):
        checks.model_config(config)
