"""The scaling-law fit recovers a known law; the planner's optimum matches the closed form."""

import numpy as np
import pytest

from llm import scaling

TRUE = scaling.PUBLISHED["hoffmann"]


def law_points(seed: int):
    """Losses from Hoffmann et al.'s law at 5 sizes × 5 token budgets (100× each), σ = 0.01."""
    N_grid, D_grid = np.meshgrid(np.geomspace(1e6, 1e8, 5), np.geomspace(1e8, 1e10, 5))
    N, D = N_grid.ravel(), D_grid.ravel()
    noise = np.random.default_rng(seed).normal(0.0, 0.01, N.shape)
    return N, D, TRUE.loss(N, D) * np.exp(noise)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_exponents_and_compute_optimal_size(seed):
    N, D, L = law_points(seed)
    fitted = scaling.fit(N, D, L)
    assert fitted.alpha == pytest.approx(TRUE.alpha, rel=0.05)
    assert fitted.beta == pytest.approx(TRUE.beta, rel=0.05)
    for budget in (1e16, 1e17, 1e18):
        assert fitted.optimal(budget)[0] == pytest.approx(TRUE.optimal(budget)[0], rel=0.10)
