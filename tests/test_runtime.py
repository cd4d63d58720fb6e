"""Emulated devices: real worker processes, same tokens, memory refusals, deaths, multi-host."""

import json
import os
import subprocess
import sys
import time

import psutil
import pytest
import torch

from e2llm_lite import cli
from e2llm_lite.devices import Cluster, default_cluster
from e2llm_lite.errors import DeviceOOM, WorkerDied
from e2llm_lite.runtime.driver import EmulatedCluster, free_port
from e2llm_lite.runtime.throttle import HostFactor

KINDS = ["rpi4-4gb", "rpi5-8gb", "jetson-nano-4gb", "jetson-orin-nano-8gb", "nuc-16gb", "laptop-16gb"]
SPLITS = [
    [(0, 30)],
    [(0, 13), (13, 30)],
    [(0, 4), (4, 21), (21, 30)],
    [(0, 8), (8, 15), (15, 22), (22, 30)],
    [(0, 1), (1, 9), (9, 10), (10, 28), (28, 30)],
    [(0, 2), (2, 9), (9, 14), (14, 20), (20, 29), (29, 30)],
]


def mixed_cluster(memory_mib=2048.0, n=6):
    """Six devices of different catalog kinds on two sites (LAN + WAN), roomy memory."""
    devices = [{"name": f"d{i}-{k}", "kind": k, "memory_mib": memory_mib,
                "site": "home" if i % 2 else "lab"} for i, k in enumerate(KINDS[:n])]
    return Cluster.from_dict({
        "format": "e2llm-lite/cluster", "version": 1, "name": "mixed-test", "devices": devices,
        "links": {"lan": {"home": {"bandwidth_mbps": 200, "latency_ms": 1.0},
                          "lab": {"bandwidth_mbps": 1000, "latency_ms": 0.2}},
                  "wan": {"bandwidth_mbps": 100, "latency_ms": 2.0}}})


@pytest.fixture(scope="module")
def mixed():
    # dilation 1: devices faster than the host just run at host speed (overruns), which keeps
    # this correctness test fast; fidelity is measured in benchmarks/emulation_fidelity.py
    with EmulatedCluster(mixed_cluster(), dilation=1.0, timeout_s=60) as rt:
        yield rt


def children():
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("n", range(1, 7))
def test_tokens_through_n_emulated_devices_equal_single_process(n, mixed, haiku_ids,
                                                                reference_tokens, tokenizer):
    names = mixed.cluster.names[::-1][:n]          # different kinds each time
    pipe = mixed.pipeline([(d, a, b) for d, (a, b) in zip(names, SPLITS[n - 1])])
    try:
        gen = pipe.generate(haiku_ids, 20, [tokenizer.eos_token_id], request=n)
    finally:
        pipe.release()
    assert gen.tokens == reference_tokens


def test_kv_hand_off_between_replicas_with_different_splits(mixed, haiku_ids, reference_tokens):
    names = mixed.cluster.names
    prefill = mixed.pipeline([(names[0], 0, 17), (names[1], 17, 30)], "prefill")
    decode = mixed.pipeline([(names[2], 0, 5), (names[3], 5, 12), (names[4], 12, 30)], "decode")
    try:
        logits = prefill.forward(haiku_ids, request=42, phase="prefill")
        moved = mixed.move_kv(42, prefill, decode)
        assert moved == len(haiku_ids) * 30 * 1536
        tokens = [int(logits.argmax())]
        while len(tokens) < 20:
            tokens.append(int(decode.forward([tokens[-1]], 42, "decode").argmax()))
        assert tokens == reference_tokens
        stats = mixed.stats()
        assert stats[names[0]]["kv_bytes"] == 0            # freed on the prefill side
        kv = {n: stats[n]["kv_bytes"] for n in names[2:5]}
        assert kv == {n: stats[n]["kv_bytes_real"] for n in names[2:5]}   # ledger == tensors
        assert sum(kv.values()) == (len(haiku_ids) + 19) * 30 * 1536
    finally:
        mixed.free(42)
        prefill.release()
        decode.release()


@pytest.mark.filterwarnings("ignore:after calibration")  # dilation 1 here: overruns are expected
def test_calibration_measures_this_host_and_scales_each_phase_by_it(mixed, haiku_ids,
                                                                   reference_tokens, tokenizer):
    from e2llm_lite.costmodel import CostModel

    names = mixed.cluster.names
    with pytest.raises(ValueError, match="holds no layers"):
        mixed.calibrate([names[0]])
    pipe = mixed.pipeline([(names[0], 0, 12), (names[1], 12, 30)])
    try:
        with pytest.raises(ValueError, match="repeats >= 1"):
            mixed.calibrate(repeats=0)
        with pytest.raises(ValueError, match="ints >= 1"):
            mixed.calibrate(tokens=())
        cal = mixed.calibrate(tokens=(8, 32), batches=(1, 3), contexts=(8, 64), repeats=2,
                              prefill_idle_ms=0, decode_idle_ms=0)
        cm = CostModel.load()
        assert set(cal) == set(names[:2])
        for n, (a, b) in zip(names[:2], [(0, 12), (12, 30)]):
            pre, dec = cal[n]["prefill"]["points"], cal[n]["decode"]["points"]
            assert [p["tokens"] for p in pre] == [8, 32]
            assert [(p["context"], p["batch"]) for p in dec] == [(8, 1), (8, 3), (64, 1), (64, 3)]
            for p in pre:
                assert p["predicted_ms"] == pytest.approx(
                    cm.host_stage_ms(a, b, "prefill", tokens=p["tokens"]))
            for p in dec:  # decode probes run at each calibration context
                assert p["predicted_ms"] == pytest.approx(
                    cm.host_stage_ms(a, b, "decode", batch=p["batch"], context=p["context"]))
            for p in pre + dec:  # a real measurement of this host, within any plausible range
                assert p["host_ms"] > 0 and p["factor"] == pytest.approx(p["host_ms"] / p["predicted_ms"])
                assert 0.1 < p["factor"] < 10
        mixed.free(reset_stats=True)
        gen = pipe.generate(haiku_ids, 5, [tokenizer.eos_token_id], request=7)
        assert gen.tokens == reference_tokens[:5]          # calibration leaves no KV behind
        for r in mixed.timeline():  # each step's target = cpu / (speed * factor at its size)
            dev = mixed.cluster.device(r["device"])
            speed = dev.prefill_speed if r["phase"] == "prefill" else dev.decode_speed
            factor = HostFactor()
            for p in cal[r["device"]][r["phase"]]["points"]:
                factor.add(int(r["phase"] == "decode"), p.get("tokens", p.get("batch")), p["factor"],
                           p.get("context", 0))
            size = r["tokens"] if r["phase"] == "prefill" else 1
            assert r["target_ms"] == pytest.approx(
                r["cpu_ms"] / (speed * factor.at(int(r["phase"] == "decode"), size, r["context"])),
                rel=1e-6)
        for n in names[:2]:   # a decode step's context: the tokens cached before it (5 tokens: 4 steps)
            assert sorted(r["context"] for r in mixed.timeline() if r["device"] == n
                          and r["phase"] == "decode") == [len(haiku_ids) + k for k in range(4)]
        report = mixed.report()
        assert report[names[0]]["host_factor"]["decode"] == cal[names[0]]["decode"]["factor"]
        assert report[names[2]]["host_factor"] is None
    finally:
        pipe.release()
        mixed.free(reset_stats=True)
    pipe = mixed.pipeline([(names[0], 0, 30)])              # a new placement starts uncalibrated
    try:
        assert names[0] not in mixed.calibration
    finally:
        pipe.release()
    fast = mixed.cluster.device(names[5])                  # a laptop: ~10x a host thread
    assert fast.prefill_speed > 2 * mixed.dilation
    pipe = mixed.pipeline([(fast.name, 0, 30)])
    try:
        with pytest.warns(RuntimeWarning, match="will overrun"):
            mixed.calibrate(tokens=8, batches=1, repeats=1, prefill_idle_ms=0, decode_idle_ms=0)
    finally:
        pipe.release()


def test_slice_over_budget_is_refused_before_loading_weights():
    cluster = mixed_cluster(memory_mib=100.0, n=2)
    with EmulatedCluster(cluster, dilation=1.0) as rt:
        with pytest.raises(DeviceOOM, match=r"d0-rpi4-4gb.*layers \[0,8\) need 216\.\d MiB.*budget is 100\.0 MiB"):
            rt.pipeline([("d0-rpi4-4gb", 0, 8), ("d1-rpi5-8gb", 8, 30)])
        stats = rt.stats()
        assert stats["d0-rpi4-4gb"]["weights_loaded"] == 0.0


def test_kv_overflow_is_refused_before_compute_and_the_device_keeps_serving(haiku_ids,
                                                                            reference_tokens,
                                                                            tokenizer):
    cluster = default_cluster(3)
    d = cluster.to_dict()
    d["devices"][1]["memory_mib"] = 140.0       # layers [10,20) take 135.04 MiB of weights
    cluster = Cluster.from_dict(d)
    with EmulatedCluster(cluster, dilation=1.0) as rt:
        pipe = rt.pipeline([("host-0", 0, 10), ("host-1", 10, 20), ("host-2", 20, 30)])
        with pytest.raises(DeviceOOM, match=r"'host-1': request 9 needs .* budget is 140\.0 MiB"):
            pipe.forward(list(range(200, 600)), request=9)
        rt.free(9)
        gen = pipe.generate(haiku_ids, 20, [tokenizer.eos_token_id], request=10)
        assert gen.tokens == reference_tokens
        assert rt.stats()["host-1"]["overruns"] >= 0


def test_a_killed_worker_is_detected_within_5_s_and_nothing_is_left(haiku_ids):
    before = {p.pid for p in children()}
    rt = EmulatedCluster(default_cluster(3), dilation=1.0, timeout_s=60).start()
    pids = [p.pid for p in rt.procs]
    try:
        pipe = rt.pipeline([("host-0", 0, 10), ("host-1", 10, 20), ("host-2", 20, 30)])
        rt.procs[1].kill()
        t0 = time.monotonic()
        with pytest.raises(WorkerDied, match="host-1"):
            pipe.generate(haiku_ids, 5)
        assert time.monotonic() - t0 < 5.0
    finally:
        rt.stop()
    assert all(p.poll() is not None for p in rt.procs)
    assert not ({p.pid for p in children()} - before) & set(pids)


def test_ctrl_c_stops_every_worker():
    with pytest.raises(KeyboardInterrupt):
        with EmulatedCluster(default_cluster(2), dilation=1.0) as rt:
            raise KeyboardInterrupt
    assert all(p.poll() is not None for p in rt.procs)


def test_multi_host_path_with_separately_started_workers(tmp_path, reference_tokens):
    """Driver and workers as separate `e2llm-lite` processes meeting at MASTER_ADDR:PORT."""
    port, world = free_port(), 3
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world))
    exe = os.path.join(os.path.dirname(sys.executable), "e2llm-lite")
    default_cluster(2).save(tmp_path / "two.json")
    driver = subprocess.Popen([exe, "generate", "--prompt", "Write a haiku about distributed computing.",
                               "--max-new-tokens", "20", "--cluster", str(tmp_path / "two.json"),
                               "--split", "0,16,30", "--external", "--dilation", "1", "--json"],
                              env=env, stdout=subprocess.PIPE, text=True)
    workers = [subprocess.Popen([exe, "worker"], env={**env, "RANK": str(r)}) for r in (1, 2)]
    try:
        out, _ = driver.communicate(timeout=120)
        assert driver.returncode == 0
        result = json.loads(out)
        assert result["tokens"] == reference_tokens
        assert set(result["devices"]) == {"host-0", "host-1"}
        for w in workers:
            assert w.wait(timeout=10) == 0          # STOP ends them
    finally:
        for p in [driver, *workers]:
            p.kill()


def test_worker_command_without_env_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert cli.main(["worker"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RANK" in err[0]


BAD_CLUSTERS = {
    "malformed": '{"format": "e2llm-lite/cluster", "version": 1, "devices": [',
    "unknown kind": {"devices": [{"name": "a", "kind": "toaster"}]},
    "zero speed": {"devices": [{"name": "a", "kind": "host", "prefill_speed": 0}]},
    "negative speed": {"devices": [{"name": "a", "kind": "host", "decode_speed": -1}]},
    "zero bandwidth": {"devices": [{"name": "a", "kind": "host", "site": "x"}],
                       "links": {"lan": {"x": {"bandwidth_mbps": 0, "latency_ms": 1}}}},
    "duplicate names": {"devices": [{"name": "a", "kind": "host"}, {"name": "a", "kind": "host"}]},
}


@pytest.mark.parametrize("case", sorted(BAD_CLUSTERS))
def test_bad_cluster_files_give_one_line_and_nonzero_exit(case, tmp_path, capsys):
    body = BAD_CLUSTERS[case]
    if isinstance(body, dict):
        body = json.dumps({"format": "e2llm-lite/cluster", "version": 1, "name": "bad",
                           "links": {"lan": {"host": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}},
                           **body})
    path = tmp_path / "cluster.json"
    path.write_text(body)
    assert cli.main(["generate", "--prompt", "hi", "--cluster", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("e2llm-lite: error:"), err


def test_external_workers_stop_when_the_driver_is_killed():
    port = free_port()
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="3")
    exe = os.path.join(os.path.dirname(sys.executable), "e2llm-lite")
    workers = [subprocess.Popen([exe, "worker"], env={**env, "RANK": str(r)},
                                stderr=subprocess.DEVNULL) for r in (1, 2)]
    driver = subprocess.Popen([sys.executable, "-c", (
        "from e2llm_lite.devices import default_cluster\n"
        "from e2llm_lite.runtime.driver import EmulatedCluster\n"
        "import time\n"
        f"rt = EmulatedCluster(default_cluster(2), dilation=1.0, port={port}, spawn=False).start()\n"
        "print('up', flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "up"
        driver.kill()
        for w in workers:
            assert w.wait(timeout=5) == 0
    finally:
        for p in [driver, *workers]:
            p.kill()


@pytest.mark.filterwarnings("ignore:after calibration")  # dilation 1 here: overruns are expected
def test_cli_generate_calibrated_reports_each_device_host_factor(capsys):
    rc = cli.main(["generate", "--prompt", "Name a colour.", "--max-new-tokens", "3",
                   "--devices", "2", "--dilation", "1", "--calibrate", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(out["tokens"]) == 3
    for d in out["devices"].values():  # EmulatedCluster(calibrate=True) calibrated every stage
        assert set(d["host_factor"]) == {"prefill", "decode"}
        assert all(0.1 < f < 10 for f in d["host_factor"].values())


def test_cli_calibrate_without_emulated_devices_is_one_line(capsys):
    assert cli.main(["generate", "--prompt", "hi", "--calibrate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--calibrate applies to emulated devices" in err[0]


def test_two_threads_share_a_pipeline_and_each_gets_its_own_tokens(mixed, haiku_ids, reference_tokens,
                                                                    tokenizer):
    """Issue 13's trap: two callers at once must neither interleave a header with another's
    payload on the wire nor take each other's results (one send lock, replies routed by request)."""
    import threading

    names = mixed.cluster.names[:3]
    pipe = mixed.pipeline([(d, a, b) for d, (a, b) in zip(names, SPLITS[2])])
    other = tokenizer.encode("Write one sentence about the sea.")
    out, errors = {}, []

    def run(rid, ids):
        try:
            out[rid] = pipe.generate(ids, 20, [tokenizer.eos_token_id], request=rid).tokens
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        alone = pipe.generate(other, 20, [tokenizer.eos_token_id], request=40).tokens
        threads = [threading.Thread(target=run, args=(41, haiku_ids)),
                   threading.Thread(target=run, args=(42, other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        pipe.release()
    assert not errors, errors
    assert out[41] == reference_tokens and out[42] == alone


def test_stats_while_a_step_is_in_flight(mixed, haiku_ids, reference_tokens, tokenizer):
    """A STATS reply and a RESULT arriving together go to their own waiters."""
    import threading

    names = mixed.cluster.names[3:5]
    pipe = mixed.pipeline([(d, a, b) for d, (a, b) in zip(names, SPLITS[1])])
    box = {}
    t = threading.Thread(target=lambda: box.update(
        gen=pipe.generate(haiku_ids, 20, [tokenizer.eos_token_id], request=43)))
    try:
        t.start()
        polls = 0
        while t.is_alive() and polls < 200:
            assert set(mixed.stats()) == set(mixed.cluster.names)
            polls += 1
        t.join(120)
    finally:
        pipe.release()
    assert polls >= 2 and box["gen"].tokens == reference_tokens


def generate_concurrently(rt, pipe, prompts: dict, steps: int, first_request: int) -> dict:
    """Greedy generation of several prompts at once with submit/poll: every request's next
    step is submitted as soon as its previous one completed."""
    tokens = {r: [] for r in prompts}
    rid = {r: first_request + i for i, r in enumerate(prompts)}
    back = {v: k for k, v in rid.items()}
    for r, ids in prompts.items():
        pipe.submit(ids, rid[r], "prefill")
    while rt.outstanding:
        for c in rt.poll(60):
            assert c.ok, c.error
            r = back[c.request]
            tokens[r].append(c.token)
            if len(tokens[r]) < steps:
                pipe.submit([c.token], c.request, "decode")
    return tokens


def test_eight_prompts_at_once_through_three_stages_give_the_same_tokens(mixed, tokenizer):
    names = mixed.cluster.names[:3]
    pipe = mixed.pipeline([(d, a, b) for d, (a, b) in zip(names, SPLITS[2])])
    prompts = {i: tokenizer.encode(f"Tell me fact number {i} about the moon.") for i in range(8)}
    try:
        at_once = generate_concurrently(mixed, pipe, prompts, 6, first_request=200)
        one_by_one = {i: pipe.generate(ids, 6, request=300 + i).tokens for i, ids in prompts.items()}
    finally:
        pipe.release()
        mixed.free()
    assert at_once == one_by_one


def test_a_worker_killed_with_forwards_outstanding_fails_each_of_them(haiku_ids):
    """>= 4 forwards in flight, a worker SIGKILLed: every one comes back failed with WorkerDied
    naming the device, within 5 s; then the cluster stops cleanly."""
    import signal

    cluster = default_cluster(3)
    with EmulatedCluster(cluster, dilation=1.0) as rt:
        pipe = rt.pipeline([(cluster.names[0], 0, 10), (cluster.names[1], 10, 20),
                            (cluster.names[2], 20, 30)])
        long = (haiku_ids * 40)[:1500]
        for r in range(6):
            pipe.submit(long, 500 + r, "prefill")
        os.kill(rt.procs[1].pid, signal.SIGKILL)   # the middle stage, with the queue full
        t0 = time.monotonic()
        got = []
        while rt.outstanding and time.monotonic() - t0 < 10:
            got += rt.poll(1.0)
        took = time.monotonic() - t0
        died = [c for c in got if c.kind == "died"]
        assert len(died) == 1 and died[0].pipeline == cluster.names[1]   # told once, first
        assert got.index(died[0]) < min(got.index(c) for c in got if not c.ok and c.kind != "died")
        got = [c for c in got if c.kind != "died"]
        failed = [c for c in got if not c.ok]
        # those whose result was already back succeed; every other one fails, none is lost
        assert len(got) == 6 and len({c.request for c in got}) == 6
        assert len(failed) >= 4 and took <= 5
        assert all(isinstance(c.error, WorkerDied) and cluster.names[1] in str(c.error) for c in failed)


@pytest.fixture(scope="module")
def whole(folder):
    """The whole model in this process: one-at-a-time single-process generation."""
    from e2llm_lite.stage import load_stages

    return load_stages([(0, 30)], folder)[0]


_ONE_AT_A_TIME: dict = {}   # batch -> (prompts, single-process greedy tokens of each)


@pytest.mark.parametrize("n", [1, 3, 5])
@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_batched_decode_through_emulated_devices(mixed, whole, n, batch):
    """B sequences whose contexts differ by >= 100 tokens decode in one batched step per token
    through n worker processes: the same greedy tokens as one-at-a-time single-process
    generation (the whole model in this process, one request at a time)."""
    names = mixed.cluster.names[::-1][:n]
    pipe = mixed.pipeline([(d, a, b) for d, (a, b) in zip(names, SPLITS[n - 1])])
    rt = mixed
    steps = 3
    if batch not in _ONE_AT_A_TIME:   # the same prompts for every n: the reference once per batch
        g = torch.Generator().manual_seed(batch)
        prompts = [torch.randint(100, 20000, (3 + 110 * i,), generator=g).tolist() for i in range(batch)]
        one = {}   # the reference: each prompt alone, then one greedy step at a time
        for i, p in enumerate(prompts):
            whole.free()
            toks = [int(whole(torch.tensor([p]), request_id=0)[0, -1].argmax())]
            for _ in range(steps):
                toks.append(int(whole(torch.tensor([[toks[-1]]]), request_id=0)[0, -1].argmax()))
            one[i] = toks
        whole.free()
        _ONE_AT_A_TIME[batch] = prompts, one
    prompts, one = _ONE_AT_A_TIME[batch]
    try:
        for i, p in enumerate(prompts):   # all in flight at once: they pipeline through the stages
            pipe.submit(p, request=800 + i, phase="prefill")
        many = {}
        while len(many) < batch:
            done = rt.poll(60.0)
            assert done, "no completion within 60 s"
            for c in done:
                assert c.error is None, c.error
                many[c.request] = c.token
        assert [many[800 + i] for i in range(batch)] == [one[i][0] for i in range(batch)]
        for k in range(steps):
            many = pipe.decode(many)
            assert [many[800 + i] for i in range(batch)] == [one[i][k + 1] for i in range(batch)]
    finally:
        pipe.release()
        mixed.free()


def test_a_decode_batch_over_memory_is_refused_before_computing(haiku_ids):
    """A device whose budget holds three prompts and their one-at-a-time steps, but not the
    working memory of a 16-sequence batch: DeviceOOM before computing, and the ledger as it was
    (the next single step still works)."""
    from e2llm_lite.devices import LOOPBACK, DeviceSpec
    from e2llm_lite.memory import MIB, stage_need_bytes, working_bytes

    T = len(haiku_ids)
    assert working_bytes(16, 16, True) > working_bytes(T, 1, True) + 16 * 46080
    room = stage_need_bytes(0, 30, 3 * T + 16, T, 1) + 1024
    dev = DeviceSpec(name="tight", kind="host", prefill_speed=1.0, decode_speed=1.0,
                     memory_mib=room / MIB, site="host")
    cluster = Cluster(name="tight", devices=[dev], lan={"host": LOOPBACK})
    with EmulatedCluster(cluster, dilation=1.0) as rt:
        pipe = rt.pipeline([("tight", 0, 30)])
        first = {r: pipe.forward(haiku_ids, request=r, logits=False) for r in range(3)}
        before = rt.stats()["tight"]["kv_bytes"]
        batch = {r: first.get(r, 1) for r in range(16)}
        with pytest.raises(DeviceOOM, match="decode batch of 16"):
            pipe.decode(batch)
        assert rt.stats()["tight"]["kv_bytes"] == before
        assert pipe.forward([first[0]], request=0, phase="decode", logits=False) >= 0


def test_load_plan_places_every_replica_with_its_role(haiku_ids, reference_tokens, tokenizer):
    """A strict-roles plan of mixed8 on its emulated devices: each replica's layers on its devices,
    with its role and batch; a prompt prefilled on the PREFILL replica and decoded on the DECODER
    after the KV hand-off gives the single-process tokens. A plan for another cluster is refused
    before anything loads."""
    from e2llm_lite.devices import preset
    from e2llm_lite.errors import ConfigError
    from e2llm_lite.planning import make_plan
    from e2llm_lite.planning.ga import GAConfig

    cluster = preset("mixed8")
    plan = make_plan(cluster, "e2llm", "conv", 0.3, roles=("prefill", "decoder"),
                     config=GAConfig(population=12, generations=8, patience=4))
    with EmulatedCluster(cluster, dilation=1.0) as rt:   # correctness, not timing: no dilation
        with pytest.raises(ConfigError):
            rt.load_plan(make_plan(preset("home4"), "colocated", "conv", 0.3))
        assert rt.placements == {}
        pipes = rt.load_plan(plan)
        assert {n: (p.role, p.batch) for n, p in pipes.items()} == {
            r.name: (r.role, r.batch) for r in plan.replicas}
        for r in plan.replicas:
            for dev, a, b in r.stages:
                assert (rt.placements[dev].start, rt.placements[dev].end) == (a, b)
        pre = next(p for p in pipes.values() if p.role == "prefill")
        dec = next(p for p in pipes.values() if p.role == "decoder")
        tokens = [pre.forward(haiku_ids, request=1, logits=False)]
        rt.move_kv(1, pre, dec)
        while len(tokens) < len(reference_tokens):
            tokens.append(dec.forward([tokens[-1]], request=1, phase="decode", logits=False))
        assert tokens == reference_tokens
