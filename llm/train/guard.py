"""The gate around every optimiser update: non-finite steps and (optionally) loss spikes are
never applied.

A step whose loss or gradient norm is not finite changes nothing (the loop then stops with an
error). With `train.skip_spikes`, a finite loss more than `spike_sigma` running standard
deviations above the running mean (an exponential moving average with `spike_decay`, after
`spike_warmup` applied steps) is skipped and counted, and training goes on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class UpdateGuard:
    """`tx`'s update, applied only when the step is finite and not a loss spike."""

    tx: optax.GradientTransformation
    skip_spikes: bool = False
    spike_sigma: float = 6.0
    spike_warmup: int = 20
    spike_decay: float = 0.99

    @classmethod
    def from_config(cls, tx: optax.GradientTransformation, train: Any) -> UpdateGuard:
        """The guard `config.train.*` asks for."""
        return cls(tx, bool(train.skip_spikes), float(train.spike_sigma),
                   int(train.spike_warmup), float(train.spike_decay))

    def init(self) -> dict[str, jax.Array]:
        """Running loss statistics (kept in the train state as 'spike')."""
        return {"mean": jnp.zeros((), jnp.float32), "var": jnp.zeros((), jnp.float32),
                "count": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}

    def apply(self, params: Any, opt_state: Any, stats: dict, grads: Any, loss: jax.Array
              ) -> tuple[Any, Any, dict, jax.Array, jax.Array]:
        """(params, opt_state, stats, finite, grad_norm) after the gated update."""
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        std = jnp.sqrt(jnp.maximum(stats["var"], 1e-12))
        is_spike = (self.skip_spikes & (stats["count"] >= self.spike_warmup)
                    & (loss > stats["mean"] + self.spike_sigma * std))
        ok = finite & ~is_spike

        updates, new_opt_state = self.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # Gated steps never reach the parameters or the optimiser moments.
        new_params = _select(ok, new_params, params)
        new_opt_state = _select(ok, new_opt_state, opt_state)

        first = stats["count"] == 0
        decay = self.spike_decay
        mean = jnp.where(first, loss, decay * stats["mean"] + (1 - decay) * loss)
        var = jnp.where(first, 0.0, decay * stats["var"]
                        + (1 - decay) * jnp.square(loss - stats["mean"]))
        new_stats = {"mean": jnp.where(ok, mean, stats["mean"]),
                     "var": jnp.where(ok, var, stats["var"]),
                     "count": stats["count"] + ok.astype(jnp.int32),
                     "skipped": stats["skipped"] + (finite & is_spike).astype(jnp.int32)}
        return new_params, new_opt_state, new_stats, finite, grad_norm


def _select(ok: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
