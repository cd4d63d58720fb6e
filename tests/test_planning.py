"""Replica planning, the evaluator, plan.json, the baselines and the `plan` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from e2llm_lite.cli import main
from e2llm_lite.devices import make_cluster, preset
from e2llm_lite.errors import ConfigError, InfeasiblePlan
from e2llm_lite.model import ANATOMY
from e2llm_lite.planning import (Plan, ReplicaPlanner, SearchProblem, make_plan, plan_replica,
                                 workload_stats)
from e2llm_lite.planning import baselines
from e2llm_lite.planning.dp import partition
from e2llm_lite.planning.dp_batched import partition_arrays
from e2llm_lite.memory import stage_need_bytes
from e2llm_lite.planning.queueing import PENALTY_S, erlang_c, predict
from e2llm_lite.planning.replica_plan import ROLES
from e2llm_lite.planning.synthetic import synthetic_cluster

MIB = 2 ** 20


@pytest.fixture(scope="module")
def conv():
    return workload_stats("conv")


@pytest.fixture(scope="module")
def mixed8_planner(conv):
    return ReplicaPlanner(preset("mixed8"), stats=conv)


def check_replica(rp, cluster):
    """Stages cover 0..30 contiguously, on distinct devices of the cluster, within memory."""
    assert rp.stages[0][1] == 0 and rp.stages[-1][2] == ANATOMY.n_layers
    for (_, _, e), (_, s, _) in zip(rp.stages, rp.stages[1:]):
        assert e == s
    assert len(set(rp.devices)) == len(rp.devices)
    for d, s, e in rp.stages:
        need = stage_need_bytes(s, e, rp.kv_tokens, rp.act_tokens, rp.logit_rows)
        assert need <= cluster.device(d).memory_mib * MIB


# ---------------------------------------------------------------- workload figures and replicas

def test_workload_stats(conv):
    code = workload_stats("code")
    assert code.mean_prompt > conv.mean_prompt and code.mean_output < conv.mean_output
    # the quadratic attention term makes the mean prefill longer than the mean prompt's
    assert conv.prefill_tokens > conv.mean_prompt
    assert conv.design_prompt > conv.mean_prompt  # the 90th percentile
    assert conv.arrival_scv == 1.0 and 0 < conv.prefill_scv < code.prefill_scv


def test_replica_roles_on_home4(conv):
    cluster = preset("home4")
    for role in ROLES:
        rp = plan_replica(cluster, cluster.names, role, workload_stats=conv)
        check_replica(rp, cluster)
        assert rp.role == role
        if role == "prefill":
            assert rp.batch == 1 and rp.decode_step_s is None and rp.prefill_period_s > 0
        else:
            assert rp.batch >= 1 and rp.decode_step_s > 0 and rp.tokens_per_s > 0
        if role != "decoder":
            assert rp.prefill_latency_s >= rp.prefill_period_s
    with pytest.raises(InfeasiblePlan, match="cannot hold the model"):
        plan_replica(cluster, ["pi5", "orin"], "prefill", workload_stats=conv)


def test_fits_memory_is_exact(mixed8_planner):
    """The DP-free memory test agrees with the DP's feasibility."""
    pl = mixed8_planner
    rng = np.random.default_rng(0)
    for _ in range(60):
        idx = np.sort(rng.choice(8, int(rng.integers(1, 6)), replace=False))
        for role in ROLES:
            batch = 1 if role == "prefill" else int(rng.integers(1, 5))
            try:
                partition(**pl.dp_inputs(idx, role, batch).kwargs())
                ok = True
            except InfeasiblePlan:
                ok = False
            assert pl.fits_memory(idx, role, batch) == ok
            if batch == 1:
                assert pl.fits_memory(tuple(int(i) for i in idx), role) == ok


def test_batched_dp_equals_dp():
    rng = np.random.default_rng(3)
    for n in range(1, 8):
        for objective in ("bottleneck", "latency"):
            L = int(rng.integers(n, 12))
            speed = rng.uniform(0.1, 1, n)
            compute = rng.uniform(0.5, 1.5, L)[None, :] / speed[:, None]
            layer_mem = rng.uniform(0.5, 1.5, L)
            device_mem = rng.uniform(0.5, 6, n)
            comm = rng.uniform(0, 2, (n, n))
            ef, el = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
            try:
                a = partition(compute, layer_mem, device_mem, comm, objective, extra_first_mem=0.3,
                              extra_last_mem=0.4, extra_first_ms=ef, extra_last_ms=el)
            except InfeasiblePlan:
                a = None
            try:
                b = partition_arrays(compute, layer_mem, device_mem, comm, objective, 0.3, 0.4, ef, el)
            except InfeasiblePlan:
                b = None
            assert (a is None) == (b is None)
            if a is not None:
                assert a.stages == b.stages and a.cost == b.cost


def test_identical_groups_share_one_dp(conv):
    cluster = make_cluster(["rpi5-8gb", "nuc-16gb", "rpi5-8gb", "nuc-16gb"])
    pl = ReplicaPlanner(cluster, stats=conv)
    a = pl.plan([cluster.names[0], cluster.names[1]], "decoder")
    runs = pl.dp_runs
    b = pl.plan([cluster.names[2], cluster.names[3]], "decoder")
    assert pl.dp_runs == runs  # same kinds, same site, same links: cached
    assert set(b.devices) <= {cluster.names[2], cluster.names[3]}
    assert [s[1:] for s in a.stages] == [s[1:] for s in b.stages]


def test_retime_for_another_workload(conv, mixed8_planner):
    rp = mixed8_planner.plan(["fog"], "both")
    code = ReplicaPlanner(preset("mixed8"), stats=workload_stats("code"))
    again = code.retime(rp)
    assert again.stages == rp.stages and again.prefill_period_s > rp.prefill_period_s


# ---------------------------------------------------------------- evaluator

def test_erlang_c_large_servers_match_recursion():
    def ref(c, a):
        b = 1.0
        for k in range(1, c + 1):
            b = a * b / (k + a * b)
        return c * b / (c - a * (1 - b))

    for c, a in [(1, 0.5), (10, 9.0), (64, 60.0), (300, 280.0)]:
        assert erlang_c(c, a) == pytest.approx(ref(c, a), rel=1e-9)


def test_evaluator_sanity(conv, mixed8_planner):
    pl = mixed8_planner
    pre = pl.plan(["office-nuc", "office-orin", "office-pi5", "home-laptop"], "prefill", "r0")
    dec = pl.plan(["fog"], "decoder", "r1")
    both = pl.plan(["fog"], "both", "r1")
    one = predict([pre, dec], conv, 1.0)
    assert one.feasible and 0 < one.mean_wait_s < one.ttft_s
    # more prefill replicas at the same rate: less waiting
    pre2 = pl.plan(["home-pi5", "home-pi4", "home-nano", "office-nuc"], "prefill", "r2")
    pre1 = pl.plan(["home-laptop", "office-pi5", "office-orin"], "prefill", "r0")
    assert predict([pre1, pre2, dec], conv, 1.0).mean_wait_s < predict([pre1, dec], conv, 1.0).mean_wait_s
    # monotone in the rate, then overloaded with a penalty that grows with the overload
    waits = [predict([pre, dec], conv, r).fitness for r in (0.2, 0.5, 1.0, 1.5)]
    assert waits == sorted(waits)
    cap = one.capacity_rps
    over = [predict([pre, dec], conv, cap * k) for k in (1.01, 2.0)]
    assert not over[0].feasible and over[0].fitness > PENALTY_S
    assert over[1].fitness > over[0].fitness
    assert predict([pre, dec], conv, cap * 0.99).fitness < PENALTY_S
    # a prefill replica with no decoder, or a decoder alone, cannot serve
    assert not predict([pre], conv, 0.1).feasible
    assert not predict([dec], conv, 0.1).feasible
    # colocated: capacity 1 / (prefill period + decode time per request)
    d = conv.mean_output * both.decode_step_s / both.batch
    assert predict([both], conv, 0.1).capacity_rps == pytest.approx(1 / (both.prefill_period_s + d))
    with_handoff = predict([pre, dec], conv, 1.0, cluster=preset("mixed8"))
    assert with_handoff.kv_handoff_s > 0 and with_handoff.ttft_s > one.ttft_s


# ---------------------------------------------------------------- plan.json

@pytest.fixture(scope="module")
def mixed8_plan():
    return make_plan(preset("mixed8"), "splitwise", "conv", 2.0)


def test_plan_round_trip(tmp_path, mixed8_plan):
    path = tmp_path / "plan.json"
    mixed8_plan.save(path)
    d = json.loads(path.read_text())
    assert d["format"] == "e2llm-lite/plan" and d["version"] == 1
    back = Plan.load(path, preset("mixed8"))
    assert back.to_dict() == mixed8_plan.to_dict()
    assert back.replicas == mixed8_plan.replicas


def _broken(plan, **edit):
    d = plan.to_dict()
    r = d["replicas"][0]
    for k, v in edit.items():
        r[k] = v
    return Plan.from_dict(d)


def test_plan_validate_errors(mixed8_plan):
    cluster = preset("mixed8")
    mixed8_plan.validate(cluster)
    stages = mixed8_plan.to_dict()["replicas"][0]["stages"]
    cases = {
        "does not have": _broken(mixed8_plan, stages=[{"device": "ghost", "start": 0, "end": 30}]),
        "not the model's 0..30": _broken(mixed8_plan, stages=[dict(stages[0], start=0, end=29)]),
        "contiguous": _broken(mixed8_plan, stages=[dict(stages[0], start=1)] + stages[1:]),
        "needs": _broken(mixed8_plan, kv_tokens=10 ** 6),
    }
    second = mixed8_plan.to_dict()["replicas"][1]["stages"][0]["device"]
    cases["appears twice"] = _broken(mixed8_plan, stages=stages[:-1] + [dict(stages[-1], device=second)])
    for needle, plan in cases.items():
        with pytest.raises(ConfigError, match=needle):
            plan.validate(cluster)
    with pytest.raises(ConfigError, match="does not have"):
        mixed8_plan.validate(preset("home4"))
    with pytest.raises(ConfigError, match="unsupported plan version"):
        Plan.from_dict(dict(mixed8_plan.to_dict(), version=2))


# ---------------------------------------------------------------- baselines

def test_baselines_are_valid_plans():
    cluster = preset("mixed8")
    problem = SearchProblem(cluster, "conv", 2.0)
    plans = {s: make_plan(cluster, s, problem=problem) for s in ("splitwise", "pipeline", "exo", "colocated")}
    for plan in plans.values():
        plan.validate(cluster)
    assert {r.role for r in plans["colocated"].replicas} == {"both"}
    assert len(plans["pipeline"].replicas) == 1 and len(plans["exo"].replicas) == 1
    # exo: memory-proportional, the ring started where the shares fit (rotation 0 = exo's order)
    mem = [d.memory_mib for d in cluster.devices]
    ring = baselines.exo_stages(mem, 30, cluster.names)
    assert cluster.names[ring[0][0]] == "fog"  # rotation 0: the largest device first
    rotations = [[(cluster.names[d], s, e) for d, s, e in baselines.exo_stages(mem, 30, cluster.names, r)]
                 for r in range(8)]
    assert list(plans["exo"].replicas[0].stages) in rotations
    # Splitwise's provisioning tries every pool split, including "no mixed pool"
    pure = baselines.splitwise_grouping(problem, mixed_pool=False)
    assert {r for _, r in pure} <= {"prefill", "decoder", "both"}
    assert problem.score(baselines.splitwise_grouping(problem)) <= problem.score(pure)
    # one group only: Splitwise degenerates to one colocated replica
    home = SearchProblem(preset("home4"), "conv", 0.2)
    assert [r for _, r in baselines.splitwise_grouping(home)] == ["both"]


def test_infeasible_cluster_is_one_clear_error():
    cluster = make_cluster(["rpi4-4gb", "rpi4-4gb"], name="tiny")
    with pytest.raises(InfeasiblePlan, match="cannot hold the model.*MiB"):
        make_plan(cluster, "e2llm", "conv", 1.0)


# ---------------------------------------------------------------- CLI

def test_cli_plan_happy_path(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--cluster", "home4", "--workload", "conv", "--rate", "0.3", "--quick",
                 "--json", "--out", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "e2llm-lite/plan" and d["cluster"] == "home4" and d["predicted"]["feasible"]
    Plan.load(out, preset("home4"))
    assert main(["plan", "--cluster", "home4", "--strategy", "splitwise", "--rate", "0.3"]) == 0
    assert "splitwise plan for cluster 'home4'" in capsys.readouterr().out
    assert main(["plan", "--cluster", "home4", "--check", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predicted"]["feasible"]


def test_cli_plan_errors(tmp_path, capsys):
    tiny = tmp_path / "tiny.json"
    make_cluster(["rpi4-4gb", "rpi4-4gb"], name="tiny").save(tiny)
    assert main(["plan", "--cluster", str(tiny), "--workload", "conv", "--rate", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot hold the model" in err[0]
    plan = tmp_path / "plan.json"
    make_plan(preset("home4"), "colocated", "conv", 0.3).save(plan)
    assert main(["plan", "--cluster", "mixed8", "--check", str(plan)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "which cluster 'mixed8'" in err[0] and "made for cluster 'home4'" in err[0]


def test_synthetic_cluster_is_seeded():
    a, b = synthetic_cluster(20, seed=4), synthetic_cluster(20, seed=4)
    assert a.to_dict() == b.to_dict() and len(a) == 20
    assert sum(d.kind == "fog-server-64gb" for d in a.devices) == 1
    assert not math.isnan(len(synthetic_cluster(5, seed=1, fog_every=None)))


def test_plan_plots(mixed8_plan):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from e2llm_lite import viz
    from e2llm_lite.planning.ga import History

    fig = viz.plot_plan(mixed8_plan)
    assert len(fig.axes[0].get_yticklabels()) == len(mixed8_plan.replicas)
    h = History(best=[3.0, 2.0, 1.0], mean=[9.0, 5.0, 4.0], median=[5.0, 3.0, 2.0], evaluations=[10, 20, 30])
    fig = viz.plot_convergence(h, random_trace=[4.0, 3.0, 3.0])
    assert len(fig.axes[0].lines) >= 3
    fig = viz.plot_wait_vs_rate({"a": ([1, 2, 3], [0.1, 0.5, None])})
    assert len(fig.axes[0].lines) == 1
    plt.close("all")
