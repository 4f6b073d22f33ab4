"""The scaling-law fit recovers a known law; the planner's optimum, interval and warnings."""

import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize

from llm import scaling
from llm.sweep import planner

TRUE = scaling.PUBLISHED["hoffmann"]
BUDGETS = (1e16, 1e17, 1e18)


def law_points(seed: int, sigma: float):
    """Losses from Hoffmann et al.'s law at 5 sizes × 5 token budgets (100× each), with
    log-normal noise."""
    N_grid, D_grid = np.meshgrid(np.geomspace(1e6, 1e8, 5), np.geomspace(1e8, 1e10, 5))
    N, D = N_grid.ravel(), D_grid.ravel()
    noise = np.random.default_rng(seed).normal(0.0, sigma, N.shape)
    return N, D, TRUE.loss(N, D) * np.exp(noise)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_exponents_and_compute_optimal_size(seed):
    # σ = 0.001: at the σ = 0.01 these 25 points leave α and β uncertain by ~10%
    # (even the best possible fit misses 5% on about half the noise draws); see the next test.
    fitted = scaling.fit(*law_points(seed, sigma=0.001))
    assert fitted.alpha == pytest.approx(TRUE.alpha, rel=0.05)
    assert fitted.beta == pytest.approx(TRUE.beta, rel=0.05)
    for budget in BUDGETS:
        assert fitted.optimal(budget)[0] == pytest.approx(TRUE.optimal(budget)[0], rel=0.10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_at_one_percent_noise_the_fit_finds_the_global_optimum(seed):
    """The noisy points fit better than the true law does: L-BFGS did not stop early (scipy's
    default tolerances stop it a few iterations in on this ~1e-4 objective)."""
    N, D, L = law_points(seed, sigma=0.01)
    fitted = scaling.fit(N, D, L)
    args = (np.log(N), np.log(D), np.log(L))
    found = scaling._objective(scaling._theta(fitted), *args)[0]
    assert found <= scaling._objective(scaling._theta(TRUE), *args)[0]
    assert fitted.alpha == pytest.approx(TRUE.alpha, rel=0.3)  # sanity: the same basin


def test_optimum_is_the_minimum_along_the_budget():
    for law in scaling.PUBLISHED.values():
        N, D, loss = law.optimal(1e21)
        assert 6 * N * D == pytest.approx(1e21)
        def along_budget(logN, law=law):
            return law.loss(np.exp(logN), 1e21 / 6 / np.exp(logN))

        best = optimize.minimize_scalar(along_budget, bounds=(10, 35), method="bounded")
        assert np.exp(best.x) == pytest.approx(N, rel=1e-3) and best.fun == pytest.approx(loss)


def test_bootstrap_interval_covers_the_true_loss_and_plan_warns_on_extrapolation():
    N, D, L = law_points(0, sigma=0.001)
    law = scaling.fit(N, D, L)
    pts = {"N": N, "D": D, "loss": L, "flops": 6 * N * D}
    lines = planner.plan(law, [1e17, 1e22], pts, batch_size=8, seq_len=64, vocab_size=None,
                         count="params", bootstrap=20)
    text = "\n".join(lines)
    low, high = (float(x) for x in text.split("interval ")[1].split(")")[0].split("–"))
    assert low <= TRUE.optimal(1e17)[2] <= high
    first, second = text.split("budget 1e+22")
    assert "warning: the budget is" not in first and "warning: the budget is" in second
    assert "--config.total_steps=" in first


def test_plan_without_a_sweep_names_the_published_fit(tmp_path):
    plot = tmp_path / "frontier.png"
    out = subprocess.run([sys.executable, "scripts/plan.py", "--budget=1e21",
                          "--published=epoch", f"--plot={plot}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Epoch AI replication" in out.stdout and "N* = " in out.stdout
    assert plot.stat().st_size > 1000
    bad = subprocess.run([sys.executable, "scripts/plan.py", "--budget=lots"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--budget=lots: expected a number" in bad.stderr


def test_a_degenerate_fit_is_flagged():
    assert scaling.poorly_determined(TRUE) == []
    collapsed = scaling.LossLaw(E=0.0, A=6e44, B=15.3, alpha=8.8, beta=0.08)
    reasons = scaling.poorly_determined(collapsed)
    assert any(r.startswith("alpha = 8.8") for r in reasons)
    assert any("no loss floor" in r for r in reasons)
