"""Every documented model size x config variant builds: enumerated from `configs/`, built
abstractly (`nnx.eval_shape`) for every size, and with real, sharded arrays for tiny and small.
"""

import importlib
import pathlib

import jax
import pytest
from flax import nnx

from configs import models
from llm import sharding
from llm.config import load_config
from llm.loading import build_model
from llm.model import Transformer
from llm.peft import methods as peft
from llm.train import checks, get_task

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
REAL = ("tiny", "small")


def _combinations() -> list[tuple[str, str]]:
    """(config file, variant argument) for each task config, size and documented variant.

    A task config documents its variants in a module-level `VARIANTS` (or `METHODS`)."""
    out = []
    for path in sorted(CONFIGS.glob("*.py")):
        module = importlib.import_module(f"configs.{path.stem}")
        if path.stem in ("base", "models", "__init__") or not hasattr(module, "get_config"):
            continue
        try:
            has_model = "model" in load_config(str(path) + ":model=tiny")
        except ValueError:  # takes no model= variant (data preparation, sampling)
            continue
        if not has_model:
            continue
        variants = [""] + [f",{v}" for v in getattr(module, "VARIANTS",
                                                   getattr(module, "METHODS", ()))]
        out += [(path.name, f"model={size}{variant}") for size in models.SIZES
                for variant in variants]
    return out


COMBINATIONS = _combinations()


def test_the_enumeration_covers_sizes_and_variants():
    assert ("sft.py", "model=tiny,qlora") in COMBINATIONS  # the combination once broken
    assert {_size(arg) for _, arg in COMBINATIONS} == set(models.SIZES)


def _parts(file: str, arg: str):
    config = load_config(str(CONFIGS / file) + ":" + arg)
    task = get_task(config.task)(config)
    return config, task, checks.model_config(config)


@pytest.mark.parametrize(("file", "arg"), COMBINATIONS)
def test_builds_abstractly(file, arg):
    config, task, model_cfg = _parts(file, arg)

    def create():
        model = Transformer(model_cfg, nnx.Rngs(0))
        model = task.build(model)
        if config.peft.method == "none":
            return model
        return peft.apply_peft(model, config.peft, nnx.Rngs(1))

    shapes = jax.tree.leaves(nnx.state(nnx.eval_shape(create)))
    assert shapes and all(0 not in s.shape for s in shapes)


def _size(arg: str) -> str:
    return arg.split(",")[0].removeprefix("model=")


@pytest.mark.parametrize(("file", "arg"), [
    pytest.param(*c, marks=[pytest.mark.slow] if _size(c[1]) != "tiny" else [])
    for c in COMBINATIONS if _size(c[1]) in REAL])
def test_builds_with_real_arrays(file, arg):
    config, task, model_cfg = _parts(file, arg)
    mesh = sharding.make_mesh(dict(config.mesh.shape))
    rules = {k: (v or None) for k, v in config.mesh.rules.items()}
    model = build_model(model_cfg, config.peft, mesh, rules, build=task.build,
                        fresh=task.fresh)
    arrays = jax.tree.leaves(nnx.state(model))
    assert arrays and all(isinstance(a, jax.Array) and a.is_fully_addressable for a in arrays)
