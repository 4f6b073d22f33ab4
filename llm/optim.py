"""The optax chain built from `config.optim`: schedule, clipping, decay mask, optimiser.

Gradient accumulation is not optax.MultiSteps here: MultiSteps averages per-micro-batch
means, which weights a micro-batch with few target tokens as much as a full one. The train
step instead sums micro-batch losses and gradients in a `lax.scan` and divides once by the
update's total target-token count (llm/train/loop.py), so k micro-batches give exactly the
update of one batch of the same size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("cosine", "linear", "wsd", "constant")
NO_DECAY_NAMES = ("bias", "scale", "embed", "pos_embed", "prefix_gate")


class OptimConfigError(ValueError):
    """An optimiser or schedule setting that is out of range."""


def check(optim: Mapping[str, Any]) -> None:
    """Refuse out-of-range `optim.*` values with one error naming the key."""
    ranges = {  # key: (lowest, highest, whether the highest is allowed)
        "lr": (0.0, float("inf"), False), "min_lr_ratio": (0.0, 1.0, True),
        "weight_decay": (0.0, float("inf"), False), "b1": (0.0, 1.0, False),
        "b2": (0.0, 1.0, False), "eps": (0.0, float("inf"), False),
        "clip_norm": (0.0, float("inf"), False),
    }
    for key, (low, high, high_ok) in ranges.items():
        value = float(optim[key])
        if not (low <= value < high or (high_ok and value == high)):
            shown = f"[{low}, {high}{']' if high_ok else ')'}" if high < float("inf") \
                else f">= {low}"
            raise OptimConfigError(f"optim.{key}={optim[key]}: expected {shown}"
                                   + (" (0 turns clipping off)" if key == "clip_norm" else ""))
    if int(optim["grad_accum"]) < 1:
        raise OptimConfigError(f"optim.grad_accum={optim['grad_accum']}: expected >= 1")
    if int(optim["warmup_steps"]) < 0:
        raise OptimConfigError(f"optim.warmup_steps={optim['warmup_steps']}: expected >= 0")


def schedule(optim: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """Learning rate per step: linear warmup then cosine / linear / WSD decay or constant."""
    name, peak = optim["schedule"], float(optim["lr"])
    warmup = int(optim["warmup_steps"])
    floor = peak * float(optim["min_lr_ratio"])
    if name not in SCHEDULES:
        raise OptimConfigError(f"optim.schedule={name!r}: expected one of {SCHEDULES}")
    if warmup < 0 or total_steps <= 0:
        raise OptimConfigError("optim.warmup_steps must be >= 0 and total_steps > 0")
    warmup = min(warmup, total_steps)  # the training loop says so on the console
    ramp = optax.linear_schedule(0.0 if warmup else peak, peak, max(warmup, 1))
    rest = max(total_steps - warmup, 1)
    if name == "constant":
        after = optax.constant_schedule(peak)
    elif name == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=floor / peak if peak else 0.0)
    elif name == "linear":
        after = optax.linear_schedule(peak, floor, rest)
    else:  # warmup-stable-decay: hold the peak, then decay linearly over the last fraction
        fraction = float(optim["decay_fraction"])
        if not 0.0 < fraction <= 1.0:
            raise OptimConfigError(f"optim.decay_fraction={fraction}: expected (0, 1]")
        decay = max(int(round(rest * fraction)), 1)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)],
            [rest - decay])
    return optax.join_schedules([ramp, after], [warmup])


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: not on norms, biases, embeddings or gates."""
    def keep(path, _):
        names = {str(getattr(p, "key", getattr(p, "name", p))) for p in path}
        return not names.intersection(NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(optim: Mapping[str, Any], total_steps: int,
                   groups: Mapping[str, tuple[Callable[[str], bool], float]] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The full optax chain and its learning-rate schedule (of the default group).

    `groups` (a task's optimiser groups) maps a name to (predicate on a parameter's
    'a/b/c' path, learning-rate multiplier); the first matching group takes a parameter,
    the rest use `optim.*` as is. Clipping stays global over all groups.
    """
    name = optim["name"]
    if name not in OPTIMIZERS:
        raise OptimConfigError(f"optim.name={name!r}: expected one of {OPTIMIZERS}")
    check(optim)
    lr = schedule(optim, total_steps)
    mask = decay_mask if optim["decay_mask"] == "default" else None
    if optim["decay_mask"] not in ("default", "all"):
        raise OptimConfigError(
            f"optim.decay_mask={optim['decay_mask']!r}: expected 'default' or 'all'")
    wd = float(optim["weight_decay"])
    core = _core(name, optim, lr, wd, mask)
    if groups:
        for group in groups:
            if group == DEFAULT_GROUP:
                raise OptimConfigError(f"optimiser group name {group!r} is reserved")
        transforms = {DEFAULT_GROUP: core}
        for group, (_, multiplier) in groups.items():
            scaled = (lambda m: lambda count: lr(count) * m)(float(multiplier))
            transforms[group] = _core(name, optim, scaled, wd, mask)
        core = optax.multi_transform(transforms, lambda params: group_labels(params, groups))
    parts = []
    if float(optim["clip_norm"]) > 0:
        parts.append(optax.clip_by_global_norm(float(optim["clip_norm"])))
    parts.append(core)
    return optax.chain(*parts), lr


DEFAULT_GROUP = "default"


def group_labels(params: Any, groups: Mapping[str, tuple[Callable[[str], bool], float]]
                 ) -> Any:
    """Each parameter's optimiser group: the first whose predicate takes its path."""
    def label(path, _):
        name = "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p))))
                        for p in path)
        return next((g for g, (take, _) in groups.items() if take(name)), DEFAULT_GROUP)

    return jax.tree_util.tree_map_with_path(label, params)


def _core(name: str, optim: Mapping[str, Any], lr: Any, wd: float, mask: Any
          ) -> optax.GradientTransformation:
    """The optimiser itself (no clipping) at learning rate `lr` (a schedule)."""
    if name == "adamw":
        core = optax.adamw(lr, b1=optim["b1"], b2=optim["b2"], eps=optim["eps"],
                           weight_decay=wd, mask=mask)
    elif name == "adafactor":
        core = optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=mask,
                               multiply_by_parameter_scale=False)
    else:
        core = optax.chain(optax.add_decayed_weights(wd, mask), optax.sgd(lr))
    return core
