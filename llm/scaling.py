"""Scaling laws: fit L(N, D) = E + A/N^α + B/D^β to runs and plan a compute-optimal run.

The fit follows Hoffmann et al. (2022, approach 3): parameters (a, b, e, α, β) with
A = exp(a), B = exp(b), E = exp(e); the prediction is log L̂ = LSE(a − α log N, b − β log D, e);
the objective is the Huber loss (δ = 1e-3) between log L̂ and log L, minimised by L-BFGS from a
grid of starting points, the best end point kept. N is the parameter count the runs give
(Hoffmann et al. count every parameter, embeddings included); D is training tokens.

A FLOP budget C buys N·D = C / k, where k is FLOPs per parameter per token: 6 in the published
fits (C ≈ 6ND); for a sweep, k is measured from the runs' own FLOP counts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize

HUBER_DELTA = 1e-3


@dataclasses.dataclass(frozen=True)
class LossLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta, with k FLOPs per parameter per token."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "fit"
    flops_per_param_token: float = 6.0

    def loss(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        """Predicted loss at N parameters trained on D tokens."""
        N, D = np.asarray(N, float), np.asarray(D, float)
        with np.errstate(over="ignore"):  # a huge N^alpha is inf, and A/inf the right 0
            return self.E + self.A / N ** self.alpha + self.B / D ** self.beta

    def optimal(self, flops: float) -> tuple[float, float, float]:
        """(N, D, loss) minimising the loss at a FLOP budget (N·D = C / k).

        Setting dL/dN = 0 on L(N, C/(kN)) gives N* = G (C/k)^(β/(α+β)),
        G = (αA / (βB))^(1/(α+β)).
        """
        budget = flops / self.flops_per_param_token
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        N = G * budget ** (self.beta / (self.alpha + self.beta))
        D = budget / N
        return float(N), float(D), float(self.loss(N, D))

    def describe(self) -> str:
        """One line with the law's constants."""
        return (f"{self.name}: L = {self.E:.4g} + {self.A:.4g}/N^{self.alpha:.4f} + "
                f"{self.B:.4g}/D^{self.beta:.4f}  (C = {self.flops_per_param_token:.3g}·N·D)")


# Published fits, counting every parameter (embeddings included), C = 6ND.
PUBLISHED = {
    "hoffmann": LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
                        name="Hoffmann et al. 2022 (Chinchilla, approach 3)"),
    "epoch": LossLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
                     name="Besiroglu et al. 2024 (Epoch AI replication of approach 3)"),
}

# Hoffmann et al.'s grid of starting points.
_GRID = dict(alpha=(0.0, 0.5, 1.0, 1.5, 2.0), beta=(0.0, 0.5, 1.0, 1.5, 2.0),
             e=(-1.0, -0.5, 0.0, 0.5, 1.0), a=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
             b=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0))

def _objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray
               ) -> tuple[float, np.ndarray]:
    """Summed Huber loss of log-loss residuals and its gradient in (a, b, e, α, β)."""
    a, b, e, alpha, beta = theta
    terms_P3 = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)], axis=1)
    top_P1 = terms_P3.max(axis=1, keepdims=True)
    exp_P3 = np.exp(terms_P3 - top_P1)
    total_P1 = exp_P3.sum(axis=1, keepdims=True)
    pred_P = (top_P1 + np.log(total_P1))[:, 0]
    weights_P3 = exp_P3 / total_P1  # d pred / d term: the softmax of the terms
    r_P = pred_P - logL
    small = np.abs(r_P) <= HUBER_DELTA
    value = np.where(small, 0.5 * r_P**2, HUBER_DELTA * (np.abs(r_P) - 0.5 * HUBER_DELTA))
    dr_P = np.where(small, r_P, HUBER_DELTA * np.sign(r_P))
    grad = np.array([
        np.sum(dr_P * weights_P3[:, 0]),
        np.sum(dr_P * weights_P3[:, 1]),
        np.sum(dr_P * weights_P3[:, 2]),
        np.sum(dr_P * weights_P3[:, 0] * -logN),
        np.sum(dr_P * weights_P3[:, 1] * -logD),
    ])
    return float(np.sum(value)), grad


def _check_points(N: np.ndarray, D: np.ndarray, L: np.ndarray) -> None:
    if not (N.shape == D.shape == L.shape) or N.ndim != 1:
        raise ValueError(f"fit: N, D and loss must be equal-length 1-D arrays, got shapes "
                         f"{N.shape}, {D.shape}, {L.shape}")
    if len(N) < 5:
        raise ValueError(f"fit: {len(N)} runs; five parameters need at least 5 (finished runs "
                         "with a loss, several sizes and several token budgets)")
    for name, values in (("N", N), ("D", D), ("loss", L)):
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"fit: every {name} must be a positive finite number")
    if len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise ValueError("fit: the runs need at least two model sizes and two token budgets")


def _grid_values(starts_G5: np.ndarray, logN: np.ndarray, logD: np.ndarray,
                 logL: np.ndarray) -> np.ndarray:
    """The objective at every starting point at once: [G]."""
    a, b, e, alpha, beta = (starts_G5[:, i:i + 1] for i in range(5))
    terms_GP3 = np.stack(np.broadcast_arrays(a - alpha * logN, b - beta * logD, e), axis=2)
    top_GP1 = terms_GP3.max(axis=2, keepdims=True)
    pred_GP = (top_GP1 + np.log(np.exp(terms_GP3 - top_GP1).sum(axis=2, keepdims=True)))[..., 0]
    r_GP = np.abs(pred_GP - logL)
    return np.where(r_GP <= HUBER_DELTA, 0.5 * r_GP**2,
                    HUBER_DELTA * (r_GP - 0.5 * HUBER_DELTA)).sum(axis=1)


def start_grid() -> np.ndarray:
    """Hoffmann et al.'s starting points (a, b, e, α, β): [4500, 5]."""
    g = _GRID
    return np.array([[a, b, e, al, be] for al, be, e, a, b in itertools.product(
        g["alpha"], g["beta"], g["e"], g["a"], g["b"])])


def fit(N: Sequence[float], D: Sequence[float], loss: Sequence[float], *,
        starts: np.ndarray | None = None, refine: int = 8,
        flops_per_param_token: float = 6.0, name: str = "fit") -> LossLaw:
    """The law that best fits (N, D, loss) points (Huber on log-loss, L-BFGS, best start).

    Every starting point of the grid is scored and L-BFGS runs from the `refine` best (running
    it from all 4,500, as Hoffmann et al. did, costs minutes on a CPU for the same optimum).
    Tolerances are tight: the Huber objective is ~1e-4 in size, and scipy's defaults stop
    L-BFGS a few iterations in.
    """
    N, D, L = (np.asarray(x, float) for x in (N, D, loss))
    _check_points(N, D, L)
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    starts = start_grid() if starts is None else np.atleast_2d(starts)
    if len(starts) > refine:
        starts = starts[np.argsort(_grid_values(starts, logN, logD, logL))[:refine]]
    best = None
    for start in starts:
        result = optimize.minimize(_objective, start, args=(logN, logD, logL), jac=True,
                                   method="L-BFGS-B",
                                   options=dict(ftol=1e-13, gtol=1e-10, maxiter=5000))
        if np.all(np.isfinite(result.x)) and (best is None or result.fun < best.fun):
            best = result
    a, b, e, alpha, beta = best.x
    return LossLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(alpha),
                   beta=float(beta), name=name, flops_per_param_token=flops_per_param_token)


def _theta(law: LossLaw) -> np.ndarray:
    return np.array([math.log(law.A), math.log(law.B), math.log(law.E), law.alpha, law.beta])


def bootstrap(law: LossLaw, N: Sequence[float], D: Sequence[float], loss: Sequence[float],
              budgets: Sequence[float], samples: int = 100, seed: int = 0
              ) -> np.ndarray:
    """Predicted optimal loss per budget for `samples` refits on resampled runs: [S, C]."""
    N, D, L = (np.asarray(x, float) for x in (N, D, loss))
    rng = np.random.default_rng(seed)
    start = _theta(law)
    out = []
    for _ in range(samples):
        pick = rng.integers(0, len(N), len(N))
        if len(np.unique(N[pick])) < 2 or len(np.unique(D[pick])) < 2:
            continue  # a resample without two sizes and two budgets has no law
        refit = fit(N[pick], D[pick], L[pick], starts=start,
                    flops_per_param_token=law.flops_per_param_token)
        out.append([refit.optimal(c)[2] for c in budgets])
    return np.array(out).reshape(-1, len(budgets))


def poorly_determined(law: LossLaw) -> list[str]:
    """Why a fitted law should not be trusted (empty when nothing stands out): exponents
    outside what any published fit found, or an irreducible loss that collapsed to zero."""
    reasons = []
    for name, value in (("alpha", law.alpha), ("beta", law.beta)):
        if not 0.05 <= value <= 2.0:
            reasons.append(f"{name} = {value:.3g} is outside 0.05–2")
    if law.E < 1e-3:
        reasons.append(f"E = {law.E:.3g}: the runs show no loss floor")
    return reasons


def extrapolation(flops: float, run_flops: Sequence[float]) -> float:
    """How many times the budget exceeds the largest run's FLOPs (< 1: inside the runs)."""
    return float(flops / max(run_flops))


def count_params(model: dict) -> tuple[int, int]:
    """(all parameters, non-embedding parameters) of a resolved `model` section, counted from
    the model's own arrays (shapes only: nothing is allocated).

    Hoffmann et al. count all; Kaplan et al. leave out the token and position embeddings."""
    import jax
    from flax import nnx

    from llm.model import ModelConfig, Transformer

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in model.items() if k in fields})
    abstract = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(params=0)))
    total = embedding = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(abstract, nnx.Param))[0]:
        size = math.prod(leaf.shape)
        total += size
        if "embed" in str(getattr(path[0], "key", path[0])):
            embedding += size
    return total, total - embedding
