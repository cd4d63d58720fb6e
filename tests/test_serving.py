"""The scheduler driven by the simulator: queueing sanity (M/D/1), nothing lost, memory never
over budget, FIFO queues, batches within the plan, determinism, and the ``simulate`` command."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from e2llm_lite import cli
from e2llm_lite.devices import default_cluster, preset
from e2llm_lite.errors import ConfigError
from e2llm_lite.planning import make_plan
from e2llm_lite.planning.ga import GAConfig
from e2llm_lite.serving.events import Arrival, IterationDone, RunIteration
from e2llm_lite.serving.scheduler import Scheduler
from e2llm_lite.serving.simulator import simulate_requests
from e2llm_lite.workload import Request, workload_from_spec

QUICK = GAConfig(population=12, generations=8, patience=4)


def poisson_requests(n: int, rate: float, prompt: int, output: int, seed: int = 0) -> list[Request]:
    t = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))
    return [Request(i, float(x), prompt, output) for i, x in enumerate(t)]


@pytest.fixture(scope="module")
def one_device():
    cluster = default_cluster(1)
    plan = make_plan(cluster, "pipeline", "conv", 1.0)
    return cluster, plan


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_one_device_matches_md1(one_device, rho):
    """Constant prompts, one output token, Poisson arrivals, one prompt per iteration: an M/D/1
    queue, whose mean wait is rho D / (2 (1 - rho))."""
    cluster, plan = one_device
    prompt = 200
    probe = simulate_requests(plan, cluster, [Request(0, 0.0, prompt, 1)], max_batch_tokens=prompt)
    service = probe.records[0].first_token_s          # D: one prompt alone
    n = 20_000 if rho == 0.5 else 60_000
    reqs = poisson_requests(n, rho / service, prompt, 1, seed=1)
    res = simulate_requests(plan, cluster, reqs, max_batch_tokens=prompt)
    waits = [r.prefill_start_s - r.arrival_s for r in res.records.values()]
    expected = rho * service / (2 * (1 - rho))
    assert abs(np.mean(waits) / expected - 1) < 0.05, (np.mean(waits), expected)


@pytest.fixture(scope="module")
def plans():
    out = {}
    for name, rate in (("mixed8", 2.0), ("edge16", 1.0)):
        cluster = preset(name)
        for strategy in ("e2llm", "splitwise", "colocated"):
            out[name, strategy] = (cluster, make_plan(cluster, strategy, "conv", rate, config=QUICK,
                                                      roles=("prefill", "decoder", "both")))
    # E2LLM's strict roles, so a hand-off happens for sure
    cluster = preset("mixed8")
    out["mixed8", "roles"] = (cluster, make_plan(cluster, "e2llm", "conv", 2.0, config=QUICK,
                                                 roles=("prefill", "decoder")))
    return out


def overload_requests(plan, factor: float, n: int, seed: int = 0):
    cap = plan.predicted.get("capacity_rps") or plan.rate
    return workload_from_spec("conv", cap * factor, seed=seed).generate(n=n)


@pytest.mark.parametrize("key", [("mixed8", "e2llm"), ("mixed8", "splitwise"), ("mixed8", "colocated"),
                                 ("mixed8", "roles"), ("edge16", "e2llm"), ("edge16", "splitwise")],
                         ids=lambda k: "-".join(k))
def test_nothing_is_lost_and_memory_holds(plans, key):
    """Under 1.5x the planned capacity, with requests that can never fit mixed in: every request
    ends finished or rejected with a reason; the simulator's own ledgers (checked at every step)
    never see a device over budget (MemoryViolation would raise)."""
    cluster, plan = plans[key]
    reqs = overload_requests(plan, 1.5, 400)
    t = reqs[-1].arrival_s
    reqs += [Request(1000, t / 2, 8000, 500), Request(1001, t / 3, 100, 8100)]
    res = simulate_requests(plan, cluster, reqs, timeline=True)
    recs = res.records
    assert len(recs) == len(reqs)
    assert all(r.done != bool(r.rejected) for r in recs.values())
    assert "context" in recs[1000].rejected and "context" in recs[1001].rejected
    done = [r for r in recs.values() if r.done]
    assert len(done) == len(reqs) - 2   # long prompts are prefilled in chunks, not refused
    for r in done:
        assert r.tokens == r.output_tokens
        assert r.arrival_s <= r.prefill_start_s < r.first_token_s <= r.end_s
    for dev, peak in res.peak_bytes.items():
        assert peak <= res.budget_bytes[dev]
    batch = {r.name: r.batch for r in plan.replicas}
    assert all(decodes <= batch[rep] for rep, _, _, _, decodes in res.iterations)


def test_roles_hand_off_kv(plans):
    cluster, plan = plans["mixed8", "roles"]
    assert {r.role for r in plan.replicas} == {"prefill", "decoder"}
    res = simulate_requests(plan, cluster, overload_requests(plan, 0.5, 200), timeline=True)
    moved = [r for r in res.records.values() if r.output_tokens > 1 and r.done]
    roles = {r.name: r.role for r in plan.replicas}
    handed = [r for r in moved if r.prefill_replica != r.decode_replica]
    assert handed and all(roles[r.prefill_replica] == "prefill" and roles[r.decode_replica] == "decoder"
                          and r.handoff_s > 0 for r in handed)
    # the rest: prompts no PREFILL replica could hold at all, done by a DECODER that can
    assert all(roles[r.decode_replica] == "decoder" and r.prompt_tokens > 3000
               for r in moved if r not in handed)
    single = [r for r in res.records.values() if r.output_tokens == 1 and r.done]
    assert all(r.decode_replica == "" and r.handoff_s == 0 for r in single)
    assert len(res.handoffs) == len(handed)


@pytest.mark.parametrize("key", [("mixed8", "e2llm"), ("mixed8", "splitwise"), ("mixed8", "roles")],
                         ids=lambda k: "-".join(k))
def test_each_prefill_queue_is_fifo(plans, key):
    """Within each replica, prompts start in arrival order (the central queue and Splitwise's
    per-instance queues are FIFO; a prompt blocked on memory blocks those behind it)."""
    cluster, plan = plans[key]
    res = simulate_requests(plan, cluster, overload_requests(plan, 1.2, 400))
    for rep in plan.replicas:
        mine = sorted((r for r in res.records.values() if r.prefill_replica == rep.name),
                      key=lambda r: (r.arrival_s, r.id))
        starts = [r.prefill_start_s for r in mine]
        assert starts == sorted(starts), rep.name


def test_a_run_is_deterministic(plans):
    cluster, plan = plans["mixed8", "splitwise"]
    reqs = overload_requests(plan, 0.9, 300)
    a = simulate_requests(plan, cluster, reqs).metrics()
    b = simulate_requests(plan, cluster, reqs).metrics()
    assert a == b


def test_the_scheduler_is_driven_by_events_alone(plans):
    """Fed by hand: an arrival gives a prefill iteration; its completion gives the next actions."""
    cluster, plan = plans["mixed8", "roles"]
    s = Scheduler(plan, cluster)
    acts = s.on(Arrival(0.0, Request(7, 0.0, 300, 3)))
    assert len(acts) == 1 and isinstance(acts[0], RunIteration) and acts[0].prefill == ((7, 300, 0),)
    acts = s.on(IterationDone(1.0, acts[0].replica, acts[0].iteration, 0.5))
    assert [type(a).__name__ for a in acts] == ["MoveKV"]
    assert s.records[7].first_token_s == 1.0 and s.records[7].prefill_start_s == 0.5
    with pytest.raises(TypeError):
        s.on("not an event")


def test_a_plan_for_another_cluster_is_refused(plans):
    cluster, plan = plans["mixed8", "e2llm"]
    with pytest.raises(ConfigError):
        Scheduler(plan, preset("home4"))


def test_utilisation_and_slos_are_reported(plans):
    cluster, plan = plans["mixed8", "e2llm"]
    m = simulate_requests(plan, cluster, overload_requests(plan, 0.5, 300)).metrics()
    assert set(m["utilisation"]) == {r.name for r in plan.replicas}
    assert all(0 <= u["mean"] <= u["busiest"] <= 1 for u in m["utilisation"].values())
    assert m["slo"]["ttft_s"]["slowdown"]["p50"] >= 0.999   # nobody beats their unloaded self
    for k in ("waiting_s", "ttft_s", "tbt_s", "e2e_s"):
        s = m["summary"][k]
        assert s["p50"] <= s["p90"] <= s["p99"]


# ---- the command -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plan_file(tmp_path_factory, plans):
    d = tmp_path_factory.mktemp("sim")
    cluster, plan = plans["mixed8", "roles"]
    plan.save(d / "plan.json")
    (d / "empty.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    (d / "columns.csv").write_text("when,prompt,out\n1,2,3\n")
    return d


def run(capsys, argv):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_simulate_json_schema(plan_file, capsys):
    out_csv = plan_file / "requests.csv"
    code, out, _ = run(capsys, ["simulate", "--plan", str(plan_file / "plan.json"), "--requests", "200",
                                "--rate", "1", "--json", "--requests-out", str(out_csv)])
    assert code == 0
    d = json.loads(out)
    for k in ("requests_in", "requests_done", "rejected", "duration_s", "throughput_rps", "summary"):
        assert k in d
    assert d["requests_in"] == 200 == d["requests_done"] + len(d["rejected"])
    for m in ("waiting_s", "ttft_s", "tbt_s", "e2e_s"):
        assert set(d["summary"][m]) >= {"mean", "p50", "p90", "p99"}
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 200
    assert set(rows[0]) >= {"request", "arrival_s", "prompt_tokens", "output_tokens", "waiting_s",
                            "ttft_s", "e2e_s", "prefill_replica", "decode_replica"}


def test_simulate_replays_a_trace(plan_file, capsys, tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,5\n1,200,1\n2.5,50,20\n")
    code, out, _ = run(capsys, ["simulate", "--plan", str(plan_file / "plan.json"), "--workload",
                                str(trace), "--time-scale", "2", "--json", "--requests-out",
                                str(tmp_path / "r.csv")])
    assert code == 0 and json.loads(out)["requests_done"] == 3
    arrivals = [float(r["arrival_s"]) for r in csv.DictReader((tmp_path / "r.csv").open())]
    assert arrivals == [0.0, 2.0, 5.0]


@pytest.mark.parametrize("extra,words", [
    (["--cluster", "home4"], "home4"),
    (["--workload", "{d}/empty.csv"], "empty.csv"),
    (["--workload", "{d}/columns.csv"], "columns.csv"),
    (["--rate", "0"], "--rate"),
    (["--rate", "nan"], "--rate"),
    (["--duration", "0"], "--duration"),
    (["--duration", "-3"], "--duration"),
    (["--requests", "0"], "--requests"),
    (["--workload", "conv", "--time-scale", "2"], "--time-scale"),
], ids=["other-cluster", "empty-trace", "bad-columns", "rate-0", "rate-nan", "duration-0",
        "duration-negative", "requests-0", "time-scale-on-profile"])
def test_simulate_bad_input_is_one_line(plan_file, capsys, extra, words):
    extra = [x.format(d=plan_file) for x in extra]
    code, _, err = run(capsys, ["simulate", "--plan", str(plan_file / "plan.json"), *extra])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("e2llm-lite: error:"), lines
    assert words in lines[0] and "Traceback" not in err


def test_a_prompt_too_large_for_one_step_is_prefilled_in_chunks(plans):
    """The planner reserves a prefill stage's working memory for the 90th-percentile prompt; a
    longer one goes through in chunks: same first token, KV of the whole prompt, memory held."""
    cluster, plan = plans["mixed8", "roles"]
    res = simulate_requests(plan, cluster, [Request(0, 0.0, 2800, 4), Request(1, 0.1, 300, 2)],
                            timeline=True)
    assert all(r.done for r in res.records.values())
    roles = {r.name: r.role for r in plan.replicas}
    assert roles[res.records[0].prefill_replica] == "prefill"
    prompt_iterations = [it for it in res.iterations if it[3] == 1 and it[0] == res.records[0].prefill_replica]
    assert len(prompt_iterations) > 2       # several chunks of request 0
    assert res.records[0].first_token_s > res.records[0].prefill_start_s


def test_refine_by_simulation_keeps_the_best_simulated_candidate():
    from e2llm_lite.planning import SearchProblem, plan_e2llm
    from e2llm_lite.serving.refine import refine_by_simulation

    cluster = preset("mixed8")
    problem = SearchProblem(cluster, "conv", 2.0)
    _, hist = plan_e2llm(problem, config=QUICK)
    assert len(hist.final) >= 3 and hist.final == sorted(hist.final, key=lambda gf: (gf[1], gf[0]))
    reqs = workload_from_spec("conv", 2.0, seed=3).generate(n=150)
    plan, table = refine_by_simulation(problem, hist.final, reqs, 3)
    assert len(table) == 3
    waits = [row["simulated_waiting_s"] for row in table]
    assert plan.search["refine_sim"]["chosen"] == int(np.argmin(waits))


def test_refine_sim_needs_the_ga(capsys):
    code, _, err = run(capsys, ["plan", "--cluster", "mixed8", "--rate", "1", "--strategy",
                                "splitwise", "--refine-sim", "3"])
    assert code == 2 and "--refine-sim" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("key", [("mixed8", "roles"), ("edge16", "splitwise"), ("edge16", "e2llm")],
                         ids=lambda k: "-".join(k))
def test_streaming_the_kv_shortens_hand_offs(plans, key):
    """With the KV streamed layer by layer during the prefill, a hand-off ends no later than it
    would after the prefill; nothing is lost and memory holds."""
    cluster, plan = plans[key]
    reqs = overload_requests(plan, 0.5, 300, seed=5)
    off = simulate_requests(plan, cluster, reqs)
    on = simulate_requests(plan, cluster, reqs, stream_kv=True)
    assert all(r.done for r in on.records.values())
    h_off = [r.handoff_s for r in off.records.values() if r.handoff_s]
    h_on = [r.handoff_s for r in on.records.values() if r.handoff_s or r.prefill_replica != r.decode_replica]
    assert h_off and np.mean(h_on) < np.mean(h_off)


@pytest.mark.parametrize("key", [("edge16", "e2llm"), ("mixed8", "roles"), ("mixed8", "splitwise")],
                         ids=lambda k: "-".join(k))
def test_only_changed_replicas_need_a_look(plans, key, monkeypatch):
    """The scheduler starts iterations only on replicas an event changed (a speed-up); offering
    every replica a start after every event gives the very same run."""
    cluster, plan = plans[key]
    reqs = overload_requests(plan, 1.1, 300, seed=2)
    fast = simulate_requests(plan, cluster, reqs).metrics()
    original = Scheduler._dispatch

    def every_replica(self, out):
        self._touched = set(self.replicas)
        original(self, out)

    monkeypatch.setattr(Scheduler, "_dispatch", every_replica)
    assert simulate_requests(plan, cluster, reqs).metrics() == fast


def test_the_memory_check_catches_a_scheduler_that_overcommits(plans, monkeypatch):
    """The simulator's own memory check is live: a scheduler that admits without looking at
    memory is caught at the step that overflows a device."""
    from e2llm_lite.serving.scheduler import ReplicaState
    from e2llm_lite.serving.simulator import MemoryViolation

    cluster, plan = plans["mixed8", "roles"]
    monkeypatch.setattr(ReplicaState, "room", lambda self, *a: True)
    with pytest.raises(MemoryViolation, match="needs"):
        simulate_requests(plan, cluster, overload_requests(plan, 3.0, 400))


def most_at_once(intervals) -> int:
    """The most intervals [s, e) open at one time (a sweep: ends before starts at a tie)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_decode_microbatches_overlap_on_a_multi_stage_decoder(plans):
    """k micro-batches: up to min(k, stages) decode iterations of one replica overlap in time;
    everything still finishes and memory holds."""
    cluster, plan = plans["edge16", "e2llm"]
    deep = [r for r in plan.replicas if r.role in ("decoder", "both") and len(r.stages) >= 2]
    assert deep
    reqs = overload_requests(plan, 0.8, 300, seed=4)
    res = simulate_requests(plan, cluster, reqs, decode_microbatches=3, timeline=True)
    assert all(r.done for r in res.records.values())
    for rep in deep:
        its = [(s, e) for name, s, e, _, d in res.iterations if name == rep.name and d]
        assert 2 <= most_at_once(its) <= min(3, len(rep.stages))
    one = simulate_requests(plan, cluster, reqs, timeline=True)
    for rep in deep:
        its = sorted((s, e) for name, s, e, _, d in one.iterations if name == rep.name and d)
        assert all(e1 <= s2 + 1e-9 for (_, e1), (s2, _) in zip(its, its[1:]))


def test_saturation_rate_is_the_burst_throughput_deterministic_and_checked():
    from e2llm_lite.devices import default_cluster
    from e2llm_lite.planning import make_plan
    from e2llm_lite.serving.saturation import BURST_RATE, burst_throughput_rps
    from e2llm_lite.serving.simulator import simulate_requests
    from e2llm_lite.workload import workload_from_spec

    cluster = default_cluster(2)
    plan = make_plan(cluster, "splitwise", "conv", 1.0)
    wl = workload_from_spec("conv", 0.5, seed=3, prompt_scale=0.1, output_scale=0.1)
    sat = burst_throughput_rps(plan, cluster, wl, n=30)
    burst = workload_from_spec("conv", BURST_RATE, seed=3, prompt_scale=0.1,
                               output_scale=0.1).generate(n=30)
    assert sat == simulate_requests(plan, cluster, burst).metrics()["throughput_rps"] > 0
    assert burst_throughput_rps(plan, cluster, wl, n=30) == sat                 # deterministic
    # below its saturation rate the plan keeps up; well above it, it cannot
    calm = simulate_requests(plan, cluster, wl.__class__(wl.lengths, 0.3 * sat, seed=3).generate(n=30))
    assert calm.metrics()["throughput_rps"] == pytest.approx(0.3 * sat, rel=0.5)
    with pytest.raises(ValueError, match="at least 2"):
        burst_throughput_rps(plan, cluster, wl, n=1)
