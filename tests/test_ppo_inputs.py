"""PPO's bad inputs are one clear error before any rollout, and a separate value model
starts as the reward model (its first value estimate is the reward model's score)."""

from __future__ import annotations

import json
import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm import scoring, sharding
from llm.config import ConfigError, load_config
from llm.loading import build_model, load_model, save_params
from llm.model import ModelConfig, Transformer
from llm.train import ppo_checks
from llm.train.loop import train
from llm.train.ppo import PpoTask, completion_values

CONFIG = "configs/ppo.py:model=tiny"


def saved_model(path, task: str | None, **model: int):
    """A workdir with a tiny model (+ score head) whose run config says `task`."""
    cfg = ModelConfig.from_dict({**load_config(CONFIG).model.to_dict(), "vocab_size": 300,
                                 **model})
    cfg = ModelConfig.from_dict({k: v for k, v in cfg.__dict__.items() if k != "size"})
    _, params = nnx.split(scoring.add_score_head(Transformer(cfg, nnx.Rngs(params=3))))
    save_params(path, cfg, params)
    if task:
        for file in (path / "config.json", path / "checkpoints/0/config/metadata"):
            if file.exists():
                file.write_text(json.dumps({**json.loads(file.read_text()), "task": task}))
    return path


def ppo(tmp_path, *extra):
    return load_config(CONFIG, [f"workdir={tmp_path / 'run'}", "data.path=unused.jsonl",
                                "mesh.shape={'data': 8}", *extra])


@pytest.mark.parametrize("extra, message", [
    ((), "ppo.reward_model_path is empty"),
    (("ppo.reward_model_path=/no/such/reward",), "no such directory"),
    (("ppo.value_model=both",), "ppo.value_model='both': expected one of"),
    (("ppo.gamma=1.5",), r"ppo.gamma=1.5: expected a value in \[0, 1\]"),
    (("ppo.target_kl=6.0", "ppo.beta=0.0"), "needs a positive starting beta"),
    (("rl.top_k=5",), "turn the filters off"),
])
def test_bad_config_is_one_error_before_any_data(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        train(ppo(tmp_path, *extra))
    assert not (tmp_path / "run" / "data").exists()  # nothing was prepared


def test_reward_checkpoint_without_score_head(tmp_path):
    sft = saved_model(tmp_path / "sft", "sft")
    with pytest.raises(ConfigError, match=r"ppo.reward_model_path: .* 'sft' run with no "
                                          "score head"):
        train(ppo(tmp_path, f"ppo.reward_model_path={sft}"))
    reward = saved_model(tmp_path / "reward", "reward")
    with pytest.raises(ConfigError, match=r"ppo.value_model_path: .* 'sft' run"):
        train(ppo(tmp_path, f"ppo.reward_model_path={reward}", "ppo.value_model=separate",
                  f"ppo.value_model_path={sft}"))


def test_value_model_of_another_architecture(tmp_path):
    reward = saved_model(tmp_path / "reward", "reward")
    other = saved_model(tmp_path / "other", "reward", vocab_size=384)
    tokenizer = types.SimpleNamespace(vocab_size=300)
    config = ppo(tmp_path, f"ppo.reward_model_path={reward}", "ppo.value_model=separate",
                 f"ppo.value_model_path={other}")
    with pytest.raises(ConfigError, match=r"ppo.value_model_path=.*other: a value model of "
                                          "another architecture: its vocabulary has 384 ids, "
                                          "the policy's 300"):
        ppo_checks.check_tokenizers(config, None, tokenizer)
    ppo_checks.check_tokenizers(ppo(tmp_path, f"ppo.reward_model_path={reward}"), None,
                                tokenizer)  # the same vocabulary passes


def test_separate_value_model_starts_as_the_reward_model(tmp_path):
    reward = saved_model(tmp_path / "reward", "reward", d_model=48)  # its own width
    config = ppo(tmp_path, f"ppo.reward_model_path={reward}", "ppo.value_model=separate")
    task = PpoTask(config)
    task.check()
    mesh = sharding.make_mesh({"data": 8})
    policy_cfg = ModelConfig.from_dict({**{k: v for k, v in config.model.items()
                                           if k != "size"}, "vocab_size": 300})
    model = build_model(policy_cfg, config.peft, mesh, build=task.build, fresh=task.fresh)
    task.initialise(model, mesh, None)
    tokens_RT = jnp.asarray(np.random.default_rng(0).integers(3, 300, (8, 12)), jnp.int32)
    positions_RT = jnp.broadcast_to(jnp.arange(12), (8, 12))
    segments_RT = (positions_RT < jnp.arange(5, 13)[:, None]).astype(jnp.int32)
    # value slot 0 reads the state at position prompt_length - 1: each row's last token
    batch = {"tokens": tokens_RT, "positions": positions_RT, "segment_ids": segments_RT,
             "prompt_lengths": segments_RT.sum(-1)}
    values_R = completion_values(model, None, batch, 1)[:, 0]
    loaded = load_model(str(reward), mesh, build=scoring.add_score_head)
    scores_R = scoring.sequence_scores(nnx.merge(loaded.graphdef, loaded.params), tokens_RT,
                                       positions_RT, segments_RT)
    assert float(jnp.std(scores_R)) > 0  # distinct scores, so a match is not a coincidence
    np.testing.assert_allclose(values_R, scores_R, rtol=1e-5, atol=1e-6)
