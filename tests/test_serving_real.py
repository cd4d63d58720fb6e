"""The scheduler on the emulated devices (serving/emulated.py): real processes, real tokens, real
KV hand-offs from PREFILL to DECODER replicas, and an adapter that makes no decision."""

import pytest

from e2llm_lite.devices import default_cluster
from e2llm_lite.generation import greedy_decode, stages_forward
from e2llm_lite.planning import make_plan
from e2llm_lite.planning.ga import GAConfig
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.serving.emulated import serve_requests
from e2llm_lite.serving.events import Arrival
from e2llm_lite.serving.prompts import prompt_ids
from e2llm_lite.serving.scheduler import Scheduler
from e2llm_lite.stage import load_stages
from e2llm_lite.traces import Request


@pytest.fixture(scope="module")
def served(tokenizer, folder):
    cluster = default_cluster(4)
    plan = make_plan(cluster, "e2llm", "conv", 0.5, roles=("prefill", "decoder"),
                     config=GAConfig(population=12, generations=6, patience=3))
    requests = [Request(i, 0.15 * i, 12 + 9 * i, 3 + i % 3) for i in range(7)]
    prompts = {r.id: prompt_ids(tokenizer, r.prompt_tokens, r.id) for r in requests}
    streamed = []
    with EmulatedCluster(cluster, dilation=1.0, timeout_s=60) as rt:
        pipes = rt.load_plan(plan)
        result = serve_requests(rt, pipes, plan, cluster, requests, prompts,
                                on_token=lambda r, t: streamed.append((r, t)))
    local = load_stages([(0, 30)], folder)
    reference = {}
    for r in requests:
        local[0].free()
        reference[r.id] = greedy_decode(stages_forward(local), prompts[r.id], r.output_tokens).tokens
    return plan, cluster, requests, result, reference, streamed


def test_every_request_finishes_with_the_single_process_tokens(served):
    plan, _, requests, result, reference, streamed = served
    assert {r.role for r in plan.replicas} == {"prefill", "decoder"}
    assert len(result.records) == len(requests)                     # count in = count out
    assert all(rec.done and not rec.rejected for rec in result.records.values())
    assert result.tokens == reference
    assert sorted(streamed) == sorted((r, t) for r, ts in reference.items() for t in ts)
    assert result.handoffs and all(e > s for _, _, _, s, e in result.handoffs)
    m = result.metrics()   # the simulator's metrics, from the same records
    assert m["requests_in"] == m["requests_done"] == len(requests) and not m["rejected"]
    assert m["summary"]["ttft_s"]["mean"] > 0 and m["summary"]["tbt_s"]["mean"] > 0


def test_the_adapter_makes_no_scheduling_decision(served):
    """The same event sequence fed to a fresh scheduler answers the same actions."""
    plan, cluster, _, result, _, _ = served
    fresh = Scheduler(plan, cluster)
    assert len(result.events) == len(result.actions) > 0
    for event, actions in zip(result.events, result.actions):
        assert fresh.on(event) == actions
    assert sum(isinstance(e, Arrival) for e in result.events) == len(result.records)


def test_a_worker_dying_mid_serve_ends_the_run_with_one_clear_error(tokenizer):
    """A decoder's worker SIGKILLed after the first token: ServeFailed names the device and lists
    the unfinished requests; the records say why; no worker process is left."""
    import os
    import signal

    import psutil

    from e2llm_lite.serving.emulated import ServeFailed

    cluster = default_cluster(4)
    plan = make_plan(cluster, "e2llm", "conv", 0.5, roles=("prefill", "decoder"),
                     config=GAConfig(population=12, generations=6, patience=3))
    requests = [Request(i, 0.05 * i, 20, 8) for i in range(5)]
    prompts = {r.id: prompt_ids(tokenizer, r.prompt_tokens, r.id) for r in requests}
    victim = next(r for r in plan.replicas if r.role == "decoder").stages[0][0]
    with EmulatedCluster(cluster, dilation=1.0, timeout_s=60) as rt:
        pipes = rt.load_plan(plan)
        pid = rt.procs[rt.rank(victim) - 1].pid
        killed = []

        def kill_once(rid, tok):
            if not killed:
                killed.append(rid)
                os.kill(pid, signal.SIGKILL)

        with pytest.raises(ServeFailed, match=victim) as err:
            serve_requests(rt, pipes, plan, cluster, requests, prompts, on_token=kill_once)
        procs = list(rt.procs)
    assert "unfinished requests" in str(err.value)
    unfinished = [rid for rid, rec in err.value.result.records.items() if not rec.done]
    assert unfinished and all(err.value.result.records[r].rejected for r in unfinished)
    assert all(not psutil.pid_exists(p.pid) or p.poll() is not None for p in procs)


@pytest.mark.filterwarnings("ignore:after calibration")  # dilation 1 here: overruns are expected
def test_serve_cli_prints_json_with_the_simulation_beside(tmp_path, capsys):
    import json

    from e2llm_lite import cli

    cluster = default_cluster(4)
    plan = make_plan(cluster, "e2llm", "conv", 0.5, roles=("prefill", "decoder"),
                     config=GAConfig(population=12, generations=6, patience=3))
    cluster.save(tmp_path / "c.json")
    plan.save(tmp_path / "p.json")
    assert cli.main(["serve", "--plan", str(tmp_path / "p.json"), "--cluster", str(tmp_path / "c.json"),
                     "--requests", "3", "--rate", "2", "--prompt-scale", "0.03", "--dilation", "1",
                     "--no-calibrate", "--with-sim", "--json", "--requests-out", str(tmp_path / "r.csv"),
                     "--plot", str(tmp_path / "w.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests_in"] == out["requests_done"] == 3 and out["sim"]["requests_done"] == 3
    assert out["calibrated"] is False
    assert set(out["summary"]) == set(out["sim"]["summary"])        # the same schema
    assert (tmp_path / "r.csv").read_text().count("\n") == 4
    assert (tmp_path / "w.png").stat().st_size > 10_000                # the waiting-over-time plot
    assert cli.main(["serve", "--plan", str(tmp_path / "p.json"), "--cluster",
                     str(tmp_path / "c.json"), "--prompt-scale", "2"]) != 0


@pytest.mark.filterwarnings("ignore:after calibration")
def test_serve_cli_join_starts_the_device_worker_at_its_time(tmp_path, capsys):
    """`serve --join DEVICE@S`: the device has no worker until S; then one starts, joins, and
    the re-plan it triggers is in the JSON beside the join mark; every request is served."""
    import json

    from e2llm_lite import cli

    cluster = default_cluster(3)
    plan = make_plan(cluster.subset(cluster.names[:2]), "colocated", "conv", 0.5)
    cluster.save(tmp_path / "c.json")
    plan.save(tmp_path / "p.json")
    assert cli.main(["serve", "--plan", str(tmp_path / "p.json"), "--cluster", str(tmp_path / "c.json"),
                     "--requests", "4", "--rate", "2", "--prompt-scale", "0.03", "--dilation", "1",
                     "--no-calibrate", "--json", "--join", f"{cluster.names[2]}@0.3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests_in"] == out["requests_done"] == 4
    assert [m["detail"] for m in out["marks"] if m["kind"] == "join"] == [cluster.names[2]]
    assert any(r["reason"] == "join" for r in out["replans"])


def test_a_worker_killed_mid_serve_is_survived_with_the_same_tokens(tokenizer, folder):
    """replan on: a decoder's worker SIGKILLed while it decodes -> the runtime reports it, the
    scheduler re-queues its requests (a decoding one re-prefills its prompt + the tokens it had
    produced), a plan of the devices left is rolled in; every request finishes with the
    single-process greedy tokens, the re-queued ones keep their arrival time; the adapter made
    no decision of its own (the events replayed give the same actions)."""
    from e2llm_lite.serving.events import DeviceFailed, PlanReady

    cluster = default_cluster(4)
    plan = make_plan(cluster, "e2llm", "conv", 0.5, roles=("prefill", "decoder"),
                     config=GAConfig(population=12, generations=6, patience=3))
    requests = [Request(i, 0.05 * i, 14 + 3 * i, 6) for i in range(5)]
    prompts = {r.id: prompt_ids(tokenizer, r.prompt_tokens, r.id) for r in requests}
    decoder = next(r for r in plan.replicas if r.role == "decoder")
    victim = decoder.stages[-1][0]
    killed = []
    with EmulatedCluster(cluster, dilation=1.0, timeout_s=60) as rt:
        pipes = rt.load_plan(plan)

        def kill_after_two(rid, tok):   # a request with 2 tokens is decoding on the decoder
            seen[rid] = seen.get(rid, 0) + 1
            if not killed and seen[rid] >= 2:
                killed.append(rid)
                rt.kill(victim)

        seen: dict = {}
        result = serve_requests(rt, pipes, plan, cluster, requests, prompts, replan=True,
                                on_token=kill_after_two)
        procs = list(rt.procs)
    local = load_stages([(0, 30)], folder)
    for r in requests:
        local[0].free()
        assert result.tokens[r.id] == greedy_decode(stages_forward(local), prompts[r.id],
                                                    r.output_tokens).tokens, r.id
    assert killed and [d["device"] for d in result.deaths] == [victim]
    recs = result.records
    assert all(rec.done and not rec.rejected for rec in recs.values())
    assert sum(rec.restarts for rec in recs.values()) >= 1
    assert all(recs[r.id].arrival_s == r.arrival_s for r in requests)
    assert result.replans and result.replans[0]["reason"] == "failure"
    assert any(isinstance(e, DeviceFailed) for e in result.events)
    assert any(isinstance(e, PlanReady) for e in result.events)
    fresh = Scheduler(plan, cluster, replan=True)
    for event, actions in zip(result.events, result.actions):
        assert fresh.on(event) == actions
    assert all(p.poll() is not None for p in procs)


def test_a_device_that_joins_is_loaded_into_the_next_plan(tokenizer, folder):
    """A device absent from the start (no worker) joins mid-serve: a new worker process starts
    and pairs up with the live ones; another one's worker dies before the first request arrives
    (nothing in flight: the death is still found): the re-plans take both into account, the new
    replicas are loaded (on the new process too), and every request finishes."""
    cluster = default_cluster(4)
    late, gone = cluster.names[3], cluster.names[0]
    plan = make_plan(cluster.subset(cluster.names[:3]), "e2llm", "conv", 0.5,
                     config=GAConfig(population=12, generations=6, patience=3))
    requests = [Request(i, 0.3 + 0.1 * i, 12 + 2 * i, 4) for i in range(8)]
    prompts = {r.id: prompt_ids(tokenizer, r.prompt_tokens, r.id) for r in requests}
    with EmulatedCluster(cluster, dilation=1.0, timeout_s=60, absent=[late]) as rt:
        assert len(rt.procs) == 3
        pipes = rt.load_plan(plan)
        result = serve_requests(rt, pipes, plan, cluster, requests, prompts,
                                fail=[(gone, 0.0)], join=[(late, 0.6)])
        assert len(rt.procs) == 4 and late not in rt.absent
        procs = list(rt.procs)
    assert all(p.poll() is not None for p in procs)
    assert all(rec.done and not rec.rejected for rec in result.records.values())
    assert [d["device"] for d in result.deaths] == [gone]
    reasons = [r["reason"] for r in result.replans if r.get("adopted")]
    assert "failure" in reasons and "join" in reasons
    final = [devs for name, devs in result.replica_devices.items() if name.startswith("g")]
    assert any(late in devs for devs in final) and not any(gone in devs for devs in final)
    assert any(kind == "loaded" for _, kind, _ in result.marks)
    local = load_stages([(0, 30)], folder)
    for r in requests:
        local[0].free()
        assert result.tokens[r.id] == greedy_decode(stages_forward(local), prompts[r.id],
                                                    r.output_tokens).tokens, r.id


def test_losing_the_last_device_that_holds_a_layer_stops_the_real_service(tokenizer, folder):
    """Real runtime: the only device that can hold the model is SIGKILLed mid-serve; the
    re-plan finds that the device left cannot hold it, and the service stops with that one
    reason: the requests served before keep their tokens, every unfinished one is rejected
    with the reason (none dropped), and no worker process is left."""
    from e2llm_lite.devices import Cluster, DeviceSpec, Link

    cluster = Cluster(name="lonely", lan={"s": Link(1000.0, 0.1)}, devices=[
        DeviceSpec(name="big", kind="host", prefill_speed=1.0, decode_speed=1.0, memory_mib=2048, site="s"),
        DeviceSpec(name="small", kind="host", prefill_speed=1.0, decode_speed=1.0, memory_mib=128, site="s")])
    plan = make_plan(cluster.subset(["big"]), "colocated", "conv", 1.0)
    requests = [Request(i, 0.6 * i, 10 + i, 3) for i in range(6)]
    prompts = {r.id: prompt_ids(tokenizer, r.prompt_tokens, r.id) for r in requests}
    with EmulatedCluster(cluster, dilation=1.0, timeout_s=60) as rt:
        pipes = rt.load_plan(plan)
        result = serve_requests(rt, pipes, plan, cluster, requests, prompts, fail=[("big", 1.0)])
        procs = list(rt.procs)
    recs = result.records
    done = [r for r in recs.values() if r.done]
    stopped = [r for r in recs.values() if r.rejected]
    assert len(recs) == len(requests) == len(done) + len(stopped)        # count in == count out
    assert done and stopped
    assert {r.rejected for r in stopped} == {stopped[0].rejected}        # one reason for all
    assert "the service stopped" in stopped[0].rejected and "cannot hold the model" in stopped[0].rejected
    assert [d["device"] for d in result.deaths] == ["big"]
    assert result.replans[0]["error"] and not result.replans[0]["adopted"]
    assert any(kind == "stopped" for _, kind, _ in result.marks)
    local = load_stages([(0, 30)], folder)
    for r in done:
        local[0].free()
        assert result.tokens[r.id] == greedy_decode(stages_forward(local), prompts[r.id],
                                                    r.output_tokens).tokens
    assert all(p.poll() is not None for p in procs)


def test_serve_adapt_re_plans_for_a_shift_and_rolls_the_plan_in_for_real(tokenizer, folder):
    """Real runtime with ``adapt`` (a tiny window, so that a few requests make a shift): long
    prompts with short answers, then short prompts with long answers. The scheduler asks for a
    workload re-plan; the planner here answers with the other plan of this cluster (a rolling
    change is what is tested, not the GA), it is loaded replica by replica on the running
    workers, and every request finishes with the single-process tokens."""
    from e2llm_lite.planning.replan import Replanned
    from e2llm_lite.serving.adapt import AdaptConfig

    cluster = default_cluster(4)
    quick = GAConfig(population=12, generations=6, patience=3)
    start = make_plan(cluster, "e2llm", "conv", 0.5, roles=("prefill", "decoder"), config=quick)
    other = make_plan(cluster, "colocated", "conv", 0.5)
    asked = []

    def replanner(cl, devices, pl, **k):
        asked.append(k)
        return Replanned(other, predicted_s=0.01, current_s=1.0, how="test")

    requests = [Request(i, 0.3 * i, 40, 2) for i in range(4)] + \
               [Request(4 + i, 1.2 + 0.3 * i, 8, 6) for i in range(4)]
    prompts = {r.id: prompt_ids(tokenizer, r.prompt_tokens, r.id) for r in requests}
    cfg = AdaptConfig(window=4, check_every=2, cooldown=8, recent=2)
    with EmulatedCluster(cluster, dilation=1.0, timeout_s=60) as rt:
        pipes = rt.load_plan(start)
        result = serve_requests(rt, pipes, start, cluster, requests, prompts, adapt=cfg,
                                replanner=replanner)
        procs = list(rt.procs)
    assert all(rec.done and not rec.rejected for rec in result.records.values())
    rp = result.replans[0]
    assert rp["reason"] == "workload" and rp["adopted"] and asked[0]["prompts"]
    assert any(kind == "loaded" for _, kind, _ in result.marks)
    loaded = [n for n in result.replica_devices if n.startswith("g1-")]
    assert loaded
    assert any(result.records[r.id].prefill_replica in loaded or result.records[r.id].decode_replica in loaded
               for r in requests)                                            # the new plan served
    local = load_stages([(0, 30)], folder)
    for r in requests:
        local[0].free()
        assert result.tokens[r.id] == greedy_decode(stages_forward(local), prompts[r.id],
                                                    r.output_tokens).tokens, r.id
    assert all(p.poll() is not None for p in procs)
