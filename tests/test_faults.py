"""Devices that fail and join, workloads that shift: the scheduler re-queues, re-plans and rolls a
new plan in, in the simulator (issue: faults and shifts). Nothing is lost, arrival times are
kept, a cluster that can no longer hold the model stops with one clear reason."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from e2llm_lite import cli
from e2llm_lite.devices import Cluster, DeviceSpec, Link, preset
from e2llm_lite.errors import ConfigError
from e2llm_lite.planning import make_plan
from e2llm_lite.planning.ga import GAConfig
from e2llm_lite.serving.adapt import (AdaptConfig, ArrivalWindow, drift, newest_differ, welch_t,
                                     worth_adopting)
from e2llm_lite.serving.events import LoadReplica, Replan, RunIteration, UnloadReplica
from e2llm_lite.serving.scheduler import Scheduler
from e2llm_lite.serving.simulator import simulate_requests
from e2llm_lite.workload import Request, workload_from_spec

QUICK = GAConfig(population=20, generations=60, patience=15)


@pytest.fixture(scope="module")
def mixed8():
    cluster = preset("mixed8")
    wl = workload_from_spec("conv", 2.5, seed=1)
    plan = make_plan(cluster, "e2llm", wl, 2.5, config=QUICK)
    return cluster, plan, wl.generate(200)


def recording(monkeypatch):
    """Every action the scheduler answers, in order."""
    seen = []
    original = Scheduler.on

    def on(self, event):
        out = original(self, event)
        seen.extend(out)
        return out

    monkeypatch.setattr(Scheduler, "on", on)
    return seen


# ---- the rules of adapt.py ---------------------------------------------------------------------
def test_window_rate_and_means():
    w = ArrivalWindow(3)
    assert w.stats() is None
    for t, p, o in ((0.0, 10, 1), (1.0, 20, 3), (2.0, 30, 5), (4.0, 40, 7)):
        w.add(t, p, o)
    st = w.stats()
    assert w.full and st.n == 3 and st.prompts == (20, 30, 40)
    assert st.rate_rps == pytest.approx(2 / 3) and st.mean_prompt == 30 and st.mean_output == 5
    new = w.stats(2)                       # the newest two only
    assert new.n == 2 and new.prompts == (30, 40) and new.rate_rps == pytest.approx(0.5)
    assert AdaptConfig().newest == AdaptConfig().check_every and AdaptConfig(recent=40).newest == 40


def test_drift_is_the_largest_relative_change():
    w = ArrivalWindow(2)
    w.add(0.0, 100, 10)
    w.add(1.0, 100, 30)              # rate 1, prompt 100, output 20
    assert drift(w.stats(), 1.0, 100, 20) == 0
    assert drift(w.stats(), 2.0, 100, 20) == pytest.approx(0.5)
    assert drift(w.stats(), 1.0, 100, 10) == pytest.approx(1.0)


def test_adoption_needs_the_gain_and_a_plan_that_serves():
    assert worth_adopting(1.3, 1.0, 0.2) and not worth_adopting(1.2, 1.0, 0.2)
    assert not worth_adopting(1.0, math.inf, 0.2) and worth_adopting(math.inf, 5.0, 0.2)


@pytest.mark.parametrize("bad", [dict(window=1), dict(check_every=0), dict(drift=-1),
                                 dict(gain=float("nan")), dict(cooldown=True), dict(recent=1),
                                 dict(window=50, recent=51)])
def test_bad_adapt_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        AdaptConfig(**bad)


# ---- a device fails ----------------------------------------------------------------------------
def test_a_failure_re_queues_its_requests_and_nothing_is_lost(mixed8, monkeypatch):
    cluster, plan, reqs = mixed8
    actions = recording(monkeypatch)
    victim = max(plan.replicas, key=lambda r: len(r.stages)).devices[-1]           # a device of the long pipeline
    res = simulate_requests(plan, cluster, reqs, fail=[(victim, 40.0)])
    recs = res.records
    assert len(recs) == len(reqs) and all(r.done and not r.rejected for r in recs.values())
    assert all(r.tokens == r.output_tokens for r in recs.values())
    again = [r for r in recs.values() if r.restarts]
    assert again, "the failure hit no request: pick a busier moment"
    arrival = {q.id: q.arrival_s for q in reqs}
    assert all(r.arrival_s == arrival[r.id] for r in again)   # metrics count from the first arrival
    # a request that had decoded k tokens re-prefills prompt + k, then goes on
    redo = [r for r in again if r.redo > 0]
    assert redo
    prefills = {(rid, n) for a in actions if isinstance(a, RunIteration) for rid, n, c in a.prefill if c == 0}
    assert all((r.id, r.prompt_tokens + r.redo) in prefills for r in redo)
    # the re-plan: asked at the failure, adopted, the broken replica unloaded, a new one loaded
    assert [m[1] for m in res.marks][:2] == ["failure", "replan"]
    assert res.replans[0]["adopted"] and res.replans[0]["reason"] == "failure"
    loads = [a for a in actions if isinstance(a, LoadReplica)]
    assert loads and all(victim not in a.replica.devices for a in loads)
    assert any(isinstance(a, UnloadReplica) for a in actions)
    assert any(name.startswith("g1-") for r in recs.values()
               for name in (r.prefill_replica, r.decode_replica))   # the new replica serves


def test_the_waiting_penalty_of_a_failure(mixed8):
    """The same stream with and without the failure: the fault costs waiting, deterministically."""
    cluster, plan, reqs = mixed8
    victim = max(plan.replicas, key=lambda r: len(r.stages)).devices[-1]
    calm = simulate_requests(plan, cluster, reqs).metrics()["summary"]["waiting_s"]["mean"]
    runs = [simulate_requests(plan, cluster, reqs, fail=[(victim, 40.0)]).metrics() for _ in range(2)]
    hit = runs[0]["summary"]["waiting_s"]["mean"]
    assert hit > calm and hit == runs[1]["summary"]["waiting_s"]["mean"]
    assert runs[0]["requests_done"] == len(reqs)


def lonely_cluster() -> Cluster:
    """One device that holds the model and one that cannot hold half of it."""
    devs = [DeviceSpec(name="big", kind="host", prefill_speed=1.0, decode_speed=1.0, memory_mib=2048,
                       site="s"),
            DeviceSpec(name="small", kind="host", prefill_speed=1.0, decode_speed=1.0, memory_mib=128,
                       site="s")]
    return Cluster(name="lonely", devices=devs, lan={"s": Link(1000.0, 0.1)})


def test_losing_the_last_device_that_holds_a_layer_stops_with_one_clear_reason():
    cluster = lonely_cluster()
    plan = make_plan(cluster.subset(["big"]), "colocated", "conv", 1.0)
    reqs = [Request(i, 2.0 * i, 100, 10) for i in range(40)]
    res = simulate_requests(plan, cluster, reqs, fail=[("big", 30.0)])
    recs = res.records.values()
    assert len(recs) == 40 and sum(r.done for r in recs) + sum(bool(r.rejected) for r in recs) == 40
    stopped = [r for r in recs if r.rejected]
    assert stopped and sum(r.done for r in recs) > 0
    assert all("the service stopped" in r.rejected and "cannot hold the model" in r.rejected
               for r in stopped)
    assert res.replans[0]["error"] and not res.replans[0]["adopted"]
    assert [m[1] for m in res.marks][-1] == "stopped"


def test_without_re_planning_the_survivors_serve_what_they_can(mixed8):
    cluster, plan, reqs = mixed8
    victim = max(plan.replicas, key=lambda r: len(r.stages)).devices[-1]
    res = simulate_requests(plan, cluster, reqs, fail=[(victim, 40.0)], replan=False)
    assert all(r.done for r in res.records.values()) and not res.replans
    assert any(r.restarts for r in res.records.values())


def test_bad_fault_scripts_are_one_clear_error(mixed8):
    cluster, plan, reqs = mixed8
    with pytest.raises(ConfigError, match="no device 'nope'"):
        simulate_requests(plan, cluster, reqs[:5], fail=[("nope", 1.0)])
    with pytest.raises(ConfigError, match="seconds >= 0"):
        simulate_requests(plan, cluster, reqs[:5], join=[("fog", -1.0)])
    with pytest.raises(ConfigError, match="cannot be in the starting plan"):
        simulate_requests(plan, cluster, reqs[:5], join=[(plan.replicas[0].devices[0], 1.0)])


# ---- a device joins ----------------------------------------------------------------------------
def test_a_joining_device_is_taken_into_the_next_plan():
    cluster = preset("mixed8")
    others = [n for n in cluster.names if n != "fog"]
    wl = workload_from_spec("conv", 1.0, seed=2)
    plan = make_plan(cluster.subset(others), "e2llm", wl, 1.0, config=QUICK)
    reqs = wl.generate(150)
    res = simulate_requests(plan, cluster, reqs, join=[("fog", 20.0)])
    assert all(r.done for r in res.records.values())
    assert res.replans[0]["reason"] == "join" and res.replans[0]["adopted"]
    assert any("fog" in devs for name, devs in res.replica_devices.items() if name.startswith("g1-"))


# ---- the workload shifts ------------------------------------------------------------------------
def test_a_replica_too_small_for_the_new_prompts_does_not_score_the_plan_as_broken(mixed8):
    """Prompts grow past what one replica holds: the current plan is scored by the replicas that
    hold them (finite, pessimistic), not as a plan that cannot serve (10^10 s)."""
    from e2llm_lite.planning.problem import SearchProblem
    from e2llm_lite.planning.replan import replan
    from e2llm_lite.planning.workload_stats import workload_stats
    from e2llm_lite.workload import LengthDist

    cluster, plan, _ = mixed8
    prompts, outputs = [6000] * 20, [50] * 20
    stats = workload_stats(LengthDist.from_pairs(prompts, outputs, name="big"), None, name="big")
    problem = SearchProblem(cluster, stats, 2.5)
    index = {n: i for i, n in enumerate(problem.names)}
    holds = [problem.planner.cached_plan(tuple(index[d] for d in r.devices), r.role) is not None
             for r in plan.replicas]
    assert any(holds) and not all(holds), holds           # the case this test is about
    out = replan(cluster, cluster.names, plan, rate_rps=2.5, prompts=prompts, outputs=outputs)
    assert math.isfinite(out.current_s) and out.current_s < 1e9


def test_a_steady_workload_does_not_flap(mixed8, monkeypatch):
    """Hysteresis: a stationary stream may ask for a re-plan now and then (a window's means
    wander), but never adopts one, so the plan and its roles stay."""
    cluster, plan, _ = mixed8
    actions = recording(monkeypatch)
    reqs = workload_from_spec("conv", 2.5, seed=7).generate(500)
    res = simulate_requests(plan, cluster, reqs, adapt=AdaptConfig())
    assert all(r.done for r in res.records.values())
    assert not [r for r in res.replans if r["adopted"]]
    assert not any(isinstance(a, (LoadReplica, UnloadReplica)) for a in actions)
    assert len([a for a in actions if isinstance(a, Replan)]) <= 500 // AdaptConfig().cooldown


def test_a_workload_re_plan_plans_for_the_newest_arrivals_after_a_shift(mixed8, monkeypatch):
    """After a shift the window is a mixture; the Replan carries only its newest ``recent``
    arrivals (all of the new workload here). (Without a shift -- the steady test above -- it
    carries the whole window.)"""
    cluster, plan, _ = mixed8
    actions = recording(monkeypatch)
    old = workload_from_spec("conv", 2.5, seed=3).generate(100)
    t = old[-1].arrival_s
    new = [Request(1000 + i, t + 0.4 * (i + 1), 3000, 8) for i in range(60)]   # long prompts, short outputs
    cfg = AdaptConfig(window=100, check_every=20, cooldown=100)
    simulate_requests(plan, cluster, old + new, adapt=cfg)
    asked = [a for a in actions if isinstance(a, Replan) and a.reason == "workload"]
    assert asked, "the shift asked for no re-plan"
    w = asked[0].window
    assert w.n == cfg.newest == 20 and set(w.prompts) == {3000} and set(w.outputs) == {8}
    assert asked[0].rate_rps == pytest.approx(2.5)


def test_the_newest_arrivals_differ_only_beyond_chance():
    rng = np.random.default_rng(0)
    steady = [(0.4 * i, int(p), int(o)) for i, (p, o) in
              enumerate(zip(rng.lognormal(7, 1, 100), rng.lognormal(5, 1, 100)))]
    assert welch_t([1, 2, 3], [1, 2, 3]) == 0 and welch_t([1], [2, 3]) == 0
    assert welch_t([1.0, 1.0], [2.0, 2.0]) == math.inf
    assert not newest_differ(steady, 25, 4.0)
    shifted = steady[:75] + [(t, p, o * 20) for t, p, o in steady[75:]]     # outputs 20x longer
    assert newest_differ(shifted, 25, 4.0)
    faster = steady[:75] + [(steady[74][0] + 0.04 * (i + 1), p, o) for i, (_, p, o) in enumerate(steady[75:])]
    assert newest_differ(faster, 25, 4.0)                                    # the rate went up 10x
    assert not newest_differ(steady[:3], 25, 4.0)


def test_a_switched_plan_is_rolled_in_at_its_time(mixed8):
    """SwitchPlan (the oracle's tool): the other plan is loaded from that moment, one replica at a
    time, and serves; nothing is lost; a plan on a device that is down is refused."""
    cluster, plan, reqs = mixed8
    other = make_plan(cluster, "e2llm", workload_from_spec("code", 2.5, seed=1), 2.5, config=QUICK)
    res = simulate_requests(plan, cluster, reqs, switch=[(30.0, other)])
    assert all(r.done for r in res.records.values())    # none rejected while the change rolls in
    assert res.marks[0][:3] == (30.0, "plan", "switched")
    assert not res.replans                               # no planner asked
    served_new = {r.prefill_replica for r in res.records.values() if r.arrival_s > 60} | \
                 {r.decode_replica for r in res.records.values() if r.arrival_s > 60}
    assert any(name.startswith("g1-") for name in served_new)
    for bad in ([(float("nan"), other)], [("soon", other)], [30.0]):
        with pytest.raises(ConfigError, match="switch"):
            simulate_requests(plan, cluster, reqs, switch=bad)
    with pytest.raises(ConfigError, match="not up"):
        simulate_requests(plan, cluster, reqs, fail=[(other.used_devices[0], 10.0)],
                          replan=False, switch=[(30.0, other)])


def test_simulate_cli_marks_the_failure_and_the_re_plan(tmp_path, capsys, mixed8):
    cluster, plan, _ = mixed8
    path = tmp_path / "plan.json"
    plan.save(path)
    victim = max(plan.replicas, key=lambda r: len(r.stages)).devices[-1]
    rc = cli.main(["simulate", "--plan", str(path), "--requests", "150", "--rate", "2.5", "--seed", "1",
                   "--fail", f"{victim}@40", "--plot", str(tmp_path / "w.png"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests_in"] == out["requests_done"] == 150 and out["unfinished"] == []
    kinds = [m["kind"] for m in out["marks"]]
    assert kinds[:2] == ["failure", "replan"] and "loaded" in kinds
    assert out["replans"][0]["adopted"] and out["restarted"] >= 1
    assert (tmp_path / "w.png").stat().st_size > 10_000
    with pytest.raises(SystemExit) as exc:
        cli.main(["simulate", "--plan", str(path), "--fail", "fog@x"])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "DEVICE@SECONDS" in err[-1]
    for cmd in ("simulate", "serve"):   # serve: refused before a worker starts
        rc = cli.main([cmd, "--plan", str(path), "--fail", "nope@3"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1 and "no device 'nope'" in err[0]


def test_requests_keep_their_ids_and_arrivals_in_every_outcome(mixed8):
    cluster, plan, reqs = mixed8
    res = simulate_requests(plan, cluster, reqs, fail=[(d, 30.0 + 5 * i) for i, d in
                                                      enumerate(max(plan.replicas, key=lambda r: len(r.stages)).devices[:2])])
    got = sorted((r.id, r.arrival_s) for r in res.records.values())
    assert got == sorted((q.id, q.arrival_s) for q in reqs)
    assert all(r.done or r.rejected for r in res.records.values())
    assert np.isfinite([r.end_s for r in res.records.values() if r.done]).all()


def test_a_phased_stream_keeps_its_rate_and_changes_its_lengths():
    from e2llm_lite.compare.adaptation import phased_requests

    reqs, starts = phased_requests([("code", 400), ("conv", 400)], 2.0, seed=3)
    assert [r.id for r in reqs] == list(range(800)) and starts[0] == 0 and starts[1] == reqs[399].arrival_s
    code, conv = reqs[:400], reqs[400:]
    ratio = lambda part: np.mean([r.prompt_tokens for r in part]) / np.mean([r.output_tokens for r in part])
    assert ratio(code) > 3 * ratio(conv)                      # prompt-heavy, then decode-heavy
    gaps = np.diff([r.arrival_s for r in reqs])
    assert abs(gaps.mean() * 2.0 - 1) < 0.1
    with pytest.raises(ValueError):
        phased_requests([("chat", 5)], 1.0)


def test_a_shift_is_followed_and_nothing_is_lost():
    """code -> conv on mixed8 with adapt: a re-plan in the phase after the shift, rolled in while
    serving; every request served or rejected with its reason; the fixed plan is the baseline."""
    from e2llm_lite.compare.adaptation import adaptation

    r = adaptation(preset("mixed8"), [("code", 200), ("conv", 300)], 2.0, seed=0,
                   adapt=AdaptConfig(window=50, check_every=10, cooldown=50))
    assert r["replans_per_phase"][1] >= 1
    res = r["results"]["adaptive"]
    assert all(x.done or x.rejected for x in res.records.values())
    assert len(res.records) == r["done"]["in"] == 500
    assert all(w is not None and w >= 0 for ws in r["waiting"].values() for w in ws)
    # the oracle at detection rolls the conv plan in when the first workload re-plan of the
    # conv phase was ready, and serves everything
    first = min(x["ready_s"] for x in res.replans
                if x["reason"] == "workload" and x["asked_s"] >= r["phases"][1]["start_s"])
    assert r["detected_s"] == [None, first] and first > r["phases"][1]["start_s"]
    late = r["results"]["oracle_at_detection"]
    switched = [m[0] for m in late.marks if m[1:] == ("plan", "switched")]
    assert r["done"]["oracle_at_detection"] == 500 and switched == [first]
