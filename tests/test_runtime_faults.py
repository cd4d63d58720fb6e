"""A device whose worker dies while others serve: only what touches it fails (issue 16)."""

import os
import signal
import time

import psutil
import pytest

from e2llm_lite.devices import default_cluster
from e2llm_lite.errors import WorkerDied
from e2llm_lite.runtime.driver import EmulatedCluster


def _load(rt, *replicas):
    """Load the replicas side by side (submit_load), wait for all."""
    pipes = [rt.submit_load(stages, name=f"P{i}") for i, stages in enumerate(replicas)]
    done = []
    while len(done) < len(pipes):
        done += rt.poll(30)
    assert sorted(c.request for c in done) == sorted(p.load_op for p in pipes)
    assert all(c.ok and c.kind == "load" for c in done)
    return pipes


def _drain(rt, seconds=10.0):
    got, t0 = [], time.monotonic()
    while (rt.outstanding or not got) and time.monotonic() - t0 < seconds:
        got += rt.poll(0.5)
    return got


def test_a_dead_worker_fails_only_what_touches_it(haiku_ids):
    """Two pipelines; a worker of A SIGKILLed with forwards in flight on A and B:
    one "died" completion names the device (first, within 2 s), A's forwards fail naming it,
    B's come back with the right token; afterwards B serves on, A refuses at once, the counters
    cover the live devices, a new replica loads on A's survivors, and every worker is gone
    after stop (the live ones having exited by themselves)."""
    cluster = default_cluster(4)
    n = cluster.names
    with EmulatedCluster(cluster, dilation=1.0, timeout_s=60) as rt:
        a, b = _load(rt, [(n[0], 0, 15), (n[1], 15, 30)], [(n[2], 0, 15), (n[3], 15, 30)])
        expected = b.forward(haiku_ids, 900, logits=False)
        rt.free(900)
        for r in range(3):
            a.submit(haiku_ids * 6, 10 + r)
            b.submit(haiku_ids, 20 + r)
        rt.kill(n[1])
        t0 = time.monotonic()
        got = _drain(rt)
        died = [c for c in got if c.kind == "died"]
        assert len(died) == 1 and died[0].pipeline == n[1] and got[0] is died[0]
        assert time.monotonic() - t0 < 10
        on_a = [c for c in got if c.requests and c.requests[0] < 20]
        on_b = [c for c in got if c.requests and c.requests[0] >= 20]
        assert sorted(c.request for c in on_b) == [20, 21, 22]
        assert all(c.ok and c.token == expected for c in on_b)
        assert len(on_a) == 3 and all(not c.ok and isinstance(c.error, WorkerDied)
                                      and n[1] in str(c.error) for c in on_a)
        # afterwards
        rt.free()
        assert b.forward(haiku_ids, 30, logits=False) == expected
        with pytest.raises(WorkerDied, match=n[1]):
            a.submit(haiku_ids, 31)
        assert set(rt.stats()) == {n[0], n[2], n[3]}
        a.release()
        c = rt.submit_load([(n[0], 0, 30)], name="A2")
        done = rt.wait(c.load_op)
        assert done.ok and done.kind == "load"
        assert c.forward(haiku_ids, 32, logits=False) == expected
        procs = list(rt.procs)
    assert all(p.poll() is not None for p in procs)
    assert [p.returncode for p in procs] == [0, -signal.SIGKILL, 0, 0]   # the live ones stopped politely
    assert not any(psutil.pid_exists(p.pid) and psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE
                   for p in procs)


def test_a_death_is_noticed_while_replies_keep_coming(haiku_ids):
    """poll keeps looking for dead workers even when it never waits idle (a busy replica next
    to the dead one): the death is reported within 2 s."""
    cluster = default_cluster(3)
    n = cluster.names
    with EmulatedCluster(cluster, dilation=1.0, timeout_s=60) as rt:
        a, _, busy = _load(rt, [(n[0], 0, 30)], [(n[1], 0, 30)], [(n[2], 0, 30)])
        nxt = [100]

        def more():
            busy.submit(haiku_ids[:4], nxt[0], "prefill")
            nxt[0] += 1

        for _ in range(4):
            more()
        os.kill(rt.procs[rt.rank(n[1]) - 1].pid, signal.SIGKILL)
        t0, died = time.monotonic(), None
        while died is None and time.monotonic() - t0 < 5:
            for c in rt.poll(0.01):
                if c.kind == "died":
                    died = time.monotonic() - t0
                elif c.ok:
                    more()
        assert died is not None and died < 2.0
        assert a.forward(haiku_ids, 1, logits=False) > 0
