"""The GA, the exhaustive referee (checked against brute force) and random search."""

from __future__ import annotations

from itertools import product

import pytest

from e2llm_lite.devices import make_cluster, preset
from e2llm_lite.planning import SearchProblem, baselines, exhaustive_search, make_plan, random_search
from e2llm_lite.planning.ga import GAConfig, decode, encode, ga_search
from e2llm_lite.planning.problem import canonical, random_grouping
from e2llm_lite.planning.synthetic import synthetic_cluster

import numpy as np


def same(f, opt):
    return f <= opt * (1 + 1e-4) + 1e-4


@pytest.fixture(scope="module")
def tiny():
    """4 devices: the fog server holds the model alone, the laptops together."""
    cluster = make_cluster(["fog-server-64gb", "laptop-16gb", "laptop-16gb", "nuc-16gb"], name="tiny4")
    return SearchProblem(cluster, "conv", 2.0)


def test_exhaustive_matches_brute_force(tiny):
    n = tiny.n
    seen = {}
    for labels in product(range(-1, n), repeat=n):  # every device: a group label or unused
        groups = {}
        for d, k in enumerate(labels):
            if k >= 0:
                groups.setdefault(k, []).append(d)
        members = list(groups.values())
        for roles in product(tiny.roles, repeat=len(members)):
            g = canonical(zip(members, roles))
            if g and g not in seen and all(tiny.can_serve(d, r) for d, r in g):
                seen[g] = tiny.score(g)
    best = min(seen.values())
    g, f, info = exhaustive_search(tiny)
    assert f == best and seen[g] == best
    assert info["groupings"] == len(seen)


def test_encode_decode_round_trip(tiny):
    rng = np.random.default_rng(0)
    for _ in range(20):
        g = random_grouping(tiny, rng)
        genes, roles = encode(g, tiny.n)
        assert decode(genes, roles) == g
        assert all(tiny.can_serve(d, r) for d, r in g)


def test_ga_is_reproducible():
    cluster = preset("mixed8")
    runs = []
    for _ in range(2):
        p = SearchProblem(cluster, "conv", 2.5)
        runs.append(ga_search(p, GAConfig(population=20, patience=10), seed=7, progress=False,
                              seeds=baselines.seed_groupings))
    (g1, f1, h1), (g2, f2, h2) = runs
    assert g1 == g2 and f1 == f2 and h1.best == h2.best and h1.evaluations == h2.evaluations
    assert h1.best == sorted(h1.best, reverse=True)  # best so far never gets worse
    assert h1.evaluations == sorted(h1.evaluations)


@pytest.mark.parametrize("n, seed, workload", [(6, 600, "conv"), (6, 601, "code"), (7, 700, "conv")])
def test_ga_reaches_the_exhaustive_optimum(n, seed, workload):
    cluster = synthetic_cluster(n, seed=seed, sites=1 + seed % 3, fog_every=n if seed % 2 == 0 else None)
    ref = SearchProblem(cluster, workload, 1.0)
    cap = baselines.colocated_plan(ref).predicted["capacity_rps"]
    prob = SearchProblem(cluster, workload, round(0.8 * cap, 3), planner=ref.planner)
    _, opt, _ = exhaustive_search(prob)
    hits = 0
    for s in range(3):
        p = SearchProblem(cluster, workload, prob.rate, planner=ref.planner)
        _, f, _ = ga_search(p, seed=s, progress=False, seeds=baselines.seed_groupings)
        assert f >= opt * (1 - 1e-12)  # nothing beats the referee
        hits += same(f, opt)
    assert hits >= 2


def test_ga_at_least_as_good_as_the_baselines():
    cluster = preset("mixed8")
    problem = SearchProblem(cluster, "conv", 3.0)
    plan = make_plan(cluster, "e2llm", problem=problem, progress=False)
    plan.validate(cluster)
    best_baseline = min(make_plan(cluster, s, problem=problem).predicted["fitness"]
                        for s in ("splitwise", "colocated", "pipeline"))
    assert plan.predicted["fitness"] <= best_baseline
    assert plan.search["evaluations"] > 0 and plan.search["generations"] > 0
    assert len(plan.search["history"]["best"]) == plan.search["generations"] + 1


def test_strict_roles_and_random_search():
    cluster = preset("mixed8")
    p = SearchProblem(cluster, "code", 2.0, roles=("prefill", "decoder"))
    g, f, _ = ga_search(p, GAConfig(population=20, patience=10), seed=0, progress=False,
                        seeds=baselines.seed_groupings)
    assert {r for _, r in g} <= {"prefill", "decoder"}
    q = SearchProblem(cluster, "code", 2.0, roles=("prefill", "decoder"))
    gr, fr, trace = random_search(q, 100, seed=0)
    assert q.evaluations == 100 and len(trace) == 100 and trace[-1] == fr
    assert {r for _, r in gr} <= {"prefill", "decoder"}


def test_baseline_seeds_join_the_first_population():
    cluster = preset("mixed8")
    seeded = SearchProblem(cluster, "conv", 2.5)
    sw = seeded.score(baselines.splitwise_grouping(seeded))
    _, _, hist = ga_search(seeded, GAConfig(population=20, generations=0), seed=1, progress=False,
                           seeds=baselines.seed_groupings)
    assert hist.best[0] <= sw  # generation 0 already holds Splitwise's grouping
    calls = []
    _, _, plain = ga_search(SearchProblem(cluster, "conv", 2.5), GAConfig(population=20, generations=0),
                            seed=1, progress=False, seeds=lambda p: calls.append(p) or [])
    assert len(calls) == 1 and plain.evaluations[0] <= 20  # no seed scored anything
