"""Searches over the reference predictor and Jetson tables: valid, feasible, non-dominated, never hanging."""

from __future__ import annotations

import numpy as np
import pytest

from dynadnn.errors import UserError
from dynadnn.family import pick_spread
from dynadnn.predict import reference_predictor, reference_table
from dynadnn.search import (BudgetError, EvolutionSweep, NicheConfig, NSGA2Config, NSGA2Search, PolishConfig,
                            SearchProblem, hypervolume, niche, pareto_mask)
from dynadnn.search.niche import best_changes, linear_scores, repair, slot_values
from dynadnn.space import load_space

W12 = load_space("ofa_mbv3_w1.2")


@pytest.fixture(scope="module")
def predictors(reference):
    acc = reference_predictor(reference, W12)
    tables = {c: reference_table(reference, c, W12) for c in ("jetson_gpu", "jetson_cpu")}
    return acc, tables


def problem(predictors):
    return SearchProblem.from_predictors(*predictors)


def test_nsga2_archive_is_valid_non_dominated_and_meets_budgets(predictors):
    p = problem(predictors)
    budgets = {"jetson_gpu": [17.5, 24.0], "jetson_cpu": [1200.0]}
    res = NSGA2Search(nsga2=NSGA2Config(population=40, generations=10), niche=NicheConfig(generations=5),
                      budgets=budgets).search(p)
    assert len(res.genes) > 10 and pareto_mask(res.accuracy, res.latency).all()
    for arch in res.archs():
        W12.validate(arch)
        assert 160 <= arch.r <= 224
    acc, lat = p.evaluate(res.genes)  # stored objectives are the predictors' values
    np.testing.assert_allclose(acc, res.accuracy)
    np.testing.assert_allclose(lat, res.latency)
    for (ctx, budget), row in res.picks.items():
        assert res.latency[row, res.contexts.index(ctx)] <= budget


def test_pymoo_engine_gives_a_comparable_front(predictors):
    no_niche = NicheConfig(generations=0)
    fast = NSGA2Search(nsga2=NSGA2Config(population=40, generations=8), niche=no_niche).search(problem(predictors))
    slow = NSGA2Search(nsga2=NSGA2Config(population=40, generations=8, engine="pymoo"),
                       niche=no_niche).search(problem(predictors))
    ref = (70.0, [40.0, 3500.0])
    assert hypervolume(slow.accuracy, slow.latency, *ref) > 0
    assert hypervolume(fast.accuracy, fast.latency, *ref) > 0.8 * hypervolume(slow.accuracy, slow.latency, *ref)


def test_sweep_meets_its_budget_and_ranks_looser_budgets_higher(predictors):
    sweep = EvolutionSweep({"jetson_gpu": [17.0, 26.0]}, generations=15)
    res = sweep.search(problem(predictors))
    lo, hi = res.picks[("jetson_gpu", 17.0)], res.picks[("jetson_gpu", 26.0)]
    assert res.latency[lo, 0] <= 17.0 and res.latency[hi, 0] <= 26.0
    assert res.accuracy[hi] > res.accuracy[lo]


def test_impossible_budget_names_the_fastest_latency_and_returns(predictors):
    p = problem(predictors)
    with pytest.raises(BudgetError, match=r"fastest architecture of the space takes 15\.9\d* ms"):
        EvolutionSweep({"jetson_gpu": [10.0]}, generations=5).search(p)
    # a budget just above the fastest member: random sampling almost never meets it, the retry cap ends it
    tight = p.fastest["jetson_gpu"] + 1e-6
    try:
        res = EvolutionSweep({"jetson_gpu": [tight]}, generations=3, max_retries=5).search(p)
        assert res.latency[0, 0] <= tight
    except UserError as exc:
        assert "fastest possible" in str(exc)


def test_hypervolume_grows_when_a_dominating_point_is_added():
    acc, lat = np.array([80.0, 82.0]), np.array([[20.0], [25.0]])
    hv = hypervolume(acc, lat, 70.0, [30.0])
    assert hv == pytest.approx(10 * 10 + 2 * 5)
    assert hypervolume(np.append(acc, 83.0), np.vstack([lat, [[21.0]]]), 70.0, [30.0]) > hv


def test_pick_spread_covers_the_front_not_neighbours():
    lat = np.linspace(1, 100, 200)
    idx = pick_spread(lat, lat, 5)
    assert idx[0] == 0 and idx[-1] == 199 and len(set(idx)) == 5
    assert np.all(np.diff(np.log(lat[idx])) > 0.5)


def test_polish_keeps_picks_within_budget_and_never_loses_accuracy(predictors):
    budgets = {"jetson_cpu": [1100.0, 1500.0]}
    short = dict(nsga2=NSGA2Config(population=30, generations=5), niche=NicheConfig(generations=0), budgets=budgets)
    base = NSGA2Search(**short).search(problem(predictors))  # the default polish (2 rounds)
    pol = NSGA2Search(**short, polish=PolishConfig(rounds=3)).search(problem(predictors))
    for b in budgets["jetson_cpu"]:
        row, acc = pol.best_within("jetson_cpu", b)
        assert pol.latency[row, pol.contexts.index("jetson_cpu")] <= b
        assert acc >= base.best_within("jetson_cpu", b)[1] - 1e-9


def test_niche_phase_predicts_only_fresh_children_that_meet_a_budget(predictors):
    p = problem(predictors)
    rng = np.random.default_rng(0)
    init = p.coding.canonical(p.coding.random(rng, 300))
    acc, lat = p.evaluate(init)
    niches = [(0, 22.0), (1, 1400.0)]  # (context column, budget)
    cfg = NicheConfig(generations=6, children=20)
    before = p.evaluations
    genes, a, l = niche.evolve(p, init, acc, lat, niches, cfg, rng)
    kids = genes[len(init):]
    assert 0 < len(kids) == p.evaluations - before <= 6 * 2 * 20  # at most cfg.children per niche and generation
    assert np.all((l[len(init):, 0] <= 22.0) | (l[len(init):, 1] <= 1400.0))  # screened on latency first
    assert len(np.unique(np.concatenate([init, kids]), axis=0)) == len(genes)  # nothing predicted twice
    np.testing.assert_allclose(a[len(init):], p.evaluate(kids)[0])  # the surrogate only ranks; stored = predictor
    for c, b in niches:  # each niche's best can only improve
        assert a[l[:, c] <= b].max() >= acc[lat[:, c] <= b].max()


def _changes_at(coding, g, costs, values):
    """`best_changes` of per-row costs and values, at each row's current choices."""
    cur = coding.slot_choices(g)[..., None]
    return tuple(np.take_along_axis(t, cur, 2)[..., 0] for t in best_changes(costs, values))


def test_repair_changes_few_active_kernels_and_expands_and_saves_what_the_costs_say(predictors):
    p = problem(predictors)
    coding, nb = p.coding, p.coding.nb
    rng = np.random.default_rng(3)
    g = coding.canonical(coding.random(rng, 400))
    lat = p.latencies(g)[:, 1]  # jetson_cpu
    excess = lat * rng.uniform(-0.02, 0.08, size=len(g))  # a few rows already within budget
    costs = p.slot_costs["jetson_cpu"](g)
    values = slot_values(coding, rng.normal(size=(len(g), coding.space.encoding_size)))
    fixed = repair(coding, g, _changes_at(coding, g, costs, values), excess, moves=3)
    np.testing.assert_array_equal(fixed[:, 2 * nb:], g[:, 2 * nb:])  # depths and resolution kept
    changed = (fixed[:, :nb] != g[:, :nb]) | (fixed[:, nb:2 * nb] != g[:, nb:2 * nb])
    assert not (changed & ~coding.block_mask(g)).any()  # only slots that run
    assert changed.sum(1).max() <= 3
    assert not changed[excess <= 0].any()  # nothing to fix, nothing changed
    new_lat = p.latencies(fixed)[:, 1]
    saved = (costs[np.arange(len(g))[:, None], np.arange(nb)[None, :], g[:, :nb] * 3 + g[:, nb:2 * nb]]
             - costs[np.arange(len(g))[:, None], np.arange(nb)[None, :], fixed[:, :nb] * 3 + fixed[:, nb:2 * nb]])
    np.testing.assert_allclose(lat - new_lat, saved.sum(1), atol=1e-9)
    assert np.all(new_lat <= lat + 1e-9)
    over = excess > 0
    assert (new_lat[over] <= (lat - excess)[over]).mean() > 0.5  # most near-budget rows now fit


def test_repair_takes_the_change_that_loses_least_per_ms():
    from dynadnn.predict.genes import GeneCoding

    coding = GeneCoding(W12, (224,))
    g = np.zeros((1, coding.n_genes), dtype=np.int64)
    g[0, 2 * coding.nb:2 * coding.nb + coding.ns] = 2  # every slot runs
    g[0, :coding.nb], g[0, coding.nb:2 * coding.nb] = 2, 2  # kernel 7, expand 6 everywhere (choice 8)
    costs = np.tile(np.arange(9, dtype=float), (1, coding.nb, 1))  # choice c costs c ms in every slot
    values = np.zeros((1, coding.nb, 9))
    values[0, :, :8] = -1.0  # leaving choice 8 loses 1 point per slot...
    values[0, 5, 7] = -0.1  # ...except slot 5's move to choice 7: 0.1 per ms
    fixed = repair(coding, g, _changes_at(coding, g, costs, values), np.array([0.5]), moves=3)
    changed = np.flatnonzero((fixed[0, :coding.nb] != 2) | (fixed[0, coding.nb:2 * coding.nb] != 2))
    assert changed.tolist() == [5] and fixed[0, 5] * 3 + fixed[0, coding.nb + 5] == 7


def test_niche_phase_repairs_only_when_every_context_has_slot_costs(predictors, monkeypatch):
    calls = []
    real = niche.repair
    monkeypatch.setattr(niche, "repair", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(0)
    for costs, expect in ((True, True), (False, False)):
        p = problem(predictors)
        if not costs:
            p.slot_costs = {"jetson_cpu": p.slot_costs["jetson_cpu"]}  # one context lacks them
        init = p.coding.canonical(p.coding.random(rng, 300))
        acc, lat = p.evaluate(init)
        calls.clear()
        niche.evolve(p, init, acc, lat, [(0, 22.0), (1, 1400.0)], NicheConfig(generations=4), rng)
        assert bool(calls) == expect


def test_linear_scores_equal_the_dot_product_with_the_one_hot_rows(predictors):
    coding = problem(predictors).coding
    rng = np.random.default_rng(5)
    g = coding.canonical(coding.random(rng, 500))
    weights = rng.normal(size=(7, coding.space.encoding_size)).astype(np.float32)
    model = rng.integers(0, 7, size=500)
    expected = np.einsum("ij,ij->i", coding.onehot(g), weights[model])
    np.testing.assert_allclose(linear_scores(coding, g, model, slot_values(coding, weights), weights), expected,
                               atol=1e-4)
