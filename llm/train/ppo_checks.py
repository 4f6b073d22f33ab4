"""PPO's input checks, all before any rollout: the ppo.* / rl.* keys, the reward (and
value) checkpoints, and that those models read the policy's token ids."""

from __future__ import annotations

import pathlib

import jax

from llm import loading, scoring
from llm.checkpoint import CheckpointError
from llm.config import ConfigError
from llm.model import ModelConfig
from llm.rl import kl as kl_lib
from llm.rl import rewards as rewards_lib
from llm.rl import rollout as rollout_lib

VALUE_MODELS = ("shared", "separate")


def check_config(config, sampling_controls: dict) -> None:
    """Every ppo.* / rl.* value in range, one ConfigError naming the key otherwise."""
    p, rl = config.ppo, config.rl
    if p.value_model not in VALUE_MODELS:
        raise ConfigError(f"ppo.value_model={p.value_model!r}: expected one of {VALUE_MODELS}")
    for key, value in (("ppo.num_ppo_epochs", p.num_ppo_epochs),
                       ("ppo.num_mini_batches", p.num_mini_batches),
                       ("rl.max_prompt_length", rl.max_prompt_length),
                       ("rl.max_completion_length", rl.max_completion_length)):
        if int(value) < 1:
            raise ConfigError(f"{key}={value}: expected >= 1")
    for key in ("cliprange", "cliprange_value", "kl_horizon"):
        if p[key] <= 0:
            raise ConfigError(f"ppo.{key}={p[key]}: expected > 0")
    for key in ("vf_coef", "entropy_coef", "beta", "target_kl", "missing_eos_penalty",
                "value_lr"):
        if p[key] < 0:
            raise ConfigError(f"ppo.{key}={p[key]}: expected >= 0")
    for key in ("gamma", "lam"):
        if not 0 <= p[key] <= 1:
            raise ConfigError(f"ppo.{key}={p[key]}: expected a value in [0, 1]")
    if p.target_kl > 0 and p.beta == 0:
        raise ConfigError(f"ppo.target_kl={p.target_kl} with ppo.beta=0: the controller "
                          "scales beta, so it needs a positive starting beta")
    if p.kl_estimator not in kl_lib.ESTIMATORS:
        raise ConfigError(f"ppo.kl_estimator={p.kl_estimator!r}: expected one of "
                          f"{kl_lib.ESTIMATORS}")
    if rl.temperature <= 0:
        raise ConfigError(f"rl.temperature={rl.temperature}: expected > 0 (RL samples)")
    if rollout_lib.uses_filters(sampling_controls):
        raise ConfigError("rl.top_k/top_p/min_p/repetition_penalty: PPO's ratio and KL are "
                          "against softmax(logits / temperature); turn the filters off")
    context = rl.max_prompt_length + rl.max_completion_length
    if context > config.model.max_seq_len:
        raise ConfigError(f"rl.max_prompt_length + rl.max_completion_length = {context} "
                          f"exceeds model.max_seq_len={config.model.max_seq_len}")
    if config.batch_size * p.num_mini_batches % jax.process_count():
        raise ConfigError(f"batch_size * ppo.num_mini_batches = "
                          f"{config.batch_size * p.num_mini_batches} prompts per rollout do "
                          f"not split over {jax.process_count()} processes")
    if p.eval_file and p.eval_verifier not in rewards_lib.registry.names():
        raise ConfigError(f"ppo.eval_verifier={p.eval_verifier!r}: expected one of "
                          f"{rewards_lib.registry.names()}")
    if p.value_model == "separate" and config.peft.method != "none":
        raise ConfigError(f"ppo.value_model=separate with peft.method={config.peft.method}: "
                          "a separate value model trains in full; use ppo.value_model=shared "
                          "under PEFT")
    if p.value_model == "shared" and p.value_model_path:
        raise ConfigError(f"ppo.value_model_path={p.value_model_path!r} is for "
                          "ppo.value_model=separate; the shared value head starts fresh")


def value_path(config) -> str:
    """The checkpoint the separate value model starts from (the reward model's by default)."""
    return config.ppo.value_model_path or config.ppo.reward_model_path


def _reward_run(key: str, path: str) -> tuple[pathlib.Path, dict]:
    """(step directory, run config) of a reward-model checkpoint, or one ConfigError."""
    if not path:
        raise ConfigError(f"{key} is empty: name a reward model's workdir or checkpoints/"
                          "<step> (train one: scripts/train.py --config=configs/reward.py)")
    if path.startswith("hf:"):
        raise ConfigError(f"{key}={path}: PPO reads a reward model from a training workdir "
                          "or checkpoints/<step>; hf: directories are not supported here")
    try:
        step_dir = loading.resolve_step_dir(path)
        scoring.check_reward_model(path)
        _, run = loading.step_config(step_dir)
    except (CheckpointError, ValueError) as error:
        raise ConfigError(f"{key}: {error}") from None
    return step_dir, run


def check_models(config) -> ModelConfig | None:
    """The reward (and separate value) checkpoints exist and carry a score head; returns the
    value model's ModelConfig (separate) or None."""
    _reward_run("ppo.reward_model_path", config.ppo.reward_model_path)
    if config.ppo.value_model != "separate":
        return None
    key = "ppo.value_model_path" if config.ppo.value_model_path else "ppo.reward_model_path"
    step_dir, run = _reward_run(key, value_path(config))
    return ModelConfig.from_dict(loading.run_model_values(run, str(step_dir)))


def check_tokenizers(config, data_tokenizer_dir, tokenizer) -> None:
    """The reward and value models read the policy's token ids: the same tokenizer, the same
    vocabulary, and a context as long as a prompt plus its completion."""
    from llm.train.checks import model_config

    policy_vocab = model_config(config, tokenizer.vocab_size).vocab_size
    context = config.rl.max_prompt_length + config.rl.max_completion_length
    keys = [("ppo.reward_model_path", config.ppo.reward_model_path, "reward model")]
    if config.ppo.value_model == "separate":
        keys.append(("ppo.value_model_path" if config.ppo.value_model_path
                     else "ppo.reward_model_path", value_path(config), "value model"))
    for key, path, role in keys:
        step_dir = loading.resolve_step_dir(path)
        _, run = loading.step_config(step_dir)
        cfg = ModelConfig.from_dict(loading.run_model_values(run, str(step_dir)))
        if cfg.vocab_size != policy_vocab:
            raise ConfigError(f"{key}={path}: a {role} of another architecture: its "
                              f"vocabulary has {cfg.vocab_size} ids, the policy's "
                              f"{policy_vocab}; it must read the policy's token ids")
        if cfg.max_seq_len < context:
            raise ConfigError(f"{key}={path}: the {role}'s max_seq_len={cfg.max_seq_len} is "
                              f"shorter than a prompt plus completion ({context})")
        tokenizer_dir = step_dir.parent.parent / "tokenizer"
        try:
            loading.check_same_tokenizer(tokenizer_dir if tokenizer_dir.is_dir() else None,
                                         data_tokenizer_dir, path)
        except CheckpointError as error:
            raise ConfigError(f"{key}: the {role}'s tokenizer differs from the policy's "
                              f"({error})") from None
