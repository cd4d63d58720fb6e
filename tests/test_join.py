"""A device that joins a running cluster: a new worker process pairs up with every live one
(issue 16: "a new `e2llm-lite worker` in the real runtime")."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from e2llm_lite.devices import default_cluster
from e2llm_lite.errors import ConfigError, WorkerDied
from e2llm_lite.runtime.driver import EmulatedCluster, free_port


def _gone(procs) -> bool:
    return not any(psutil.pid_exists(p.pid) and psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE
                   for p in procs)


def test_a_device_absent_at_the_start_joins_with_a_new_worker_process(haiku_ids, reference_tokens,
                                                                        tokenizer):
    """The joining device has no worker until join(): then a new process comes up, takes a
    middle stage between two devices of the first group (hidden states go over the new pairs),
    and the tokens are the single-process ones. Killing it afterwards is found like any death;
    nothing is left running."""
    cl = default_cluster(3)
    first, late, last = cl.names
    eos = [tokenizer.eos_token_id]
    with EmulatedCluster(cl, dilation=1.0, timeout_s=60, absent=[late]) as rt:
        assert rt.up_ranks == [1, 3] and len(rt.procs) == 2
        before = rt.pipeline([(first, 0, 15), (last, 15, 30)])
        assert before.generate(haiku_ids, 20, eos).tokens == reference_tokens
        with pytest.raises(ValueError, match="has no worker"):
            rt.kill(late)
        before.release()
        rt.join(late)
        assert rt.up_ranks == [1, 2, 3] and len(rt.procs) == 3
        with pytest.raises(ValueError, match="up already"):
            rt.join(late)
        pipe = rt.pipeline([(first, 0, 10), (late, 10, 20), (last, 20, 30)])
        assert pipe.generate(haiku_ids, 20, eos).tokens == reference_tokens
        assert set(rt.stats()) == {first, late, last}
        joined = rt.procs[-1]
        os.kill(joined.pid, signal.SIGKILL)
        deaths, t0 = [], time.monotonic()
        while not deaths and time.monotonic() - t0 < 10:
            deaths = [c for c in rt.poll(0.5) if c.kind == "died"]
        assert [c.pipeline for c in deaths] == [late] and isinstance(deaths[0].error, WorkerDied)
        procs = list(rt.procs)
    assert all(p.poll() is not None for p in procs)
    assert [p.returncode for p in procs] == [0, 0, -signal.SIGKILL]
    assert _gone(procs)


def test_join_refuses_unknown_devices_and_a_cluster_with_nobody_up():
    cl = default_cluster(2)
    with pytest.raises(ConfigError, match="no device 'nobody'"):
        EmulatedCluster(cl, absent=["nobody"])
    with pytest.raises(ValueError, match="at least one device"):
        EmulatedCluster(cl, absent=cl.names)


def test_a_hand_started_worker_joins_a_multi_host_run_on_loopback(haiku_ids, reference_tokens,
                                                                  tokenizer):
    """Multi-host: workers started by hand (`e2llm-lite worker`) form the group of the devices
    up at the start (the driver publishes which); one started with `--join` waits in the
    driver's store until join() lets it in; a worker started without --join for an absent
    device is told so in one line."""
    cl = default_cluster(3)
    first, late, last = cl.names
    port = free_port()
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="4",
               E2LLM_BIND_ADDR="127.0.0.1")
    exe = os.path.join(os.path.dirname(sys.executable), "e2llm-lite")

    def worker(rank, *extra):
        return subprocess.Popen([exe, "worker", "--connect-timeout", "60", *extra],
                                env={**env, "RANK": str(rank)}, stderr=subprocess.PIPE, text=True)

    procs = [worker(1), worker(3)]
    try:
        with EmulatedCluster(cl, dilation=1.0, timeout_s=60, port=port, spawn=False,
                             absent=[late]) as rt:
            wrong = worker(2)                                   # absent, but no --join
            assert wrong.wait(timeout=60) != 0
            assert "start it with `e2llm-lite worker --join`" in wrong.stderr.read()
            procs.append(worker(2, "--join"))
            rt.join(late)
            pipe = rt.pipeline([(first, 0, 10), (late, 10, 20), (last, 20, 30)])
            assert pipe.generate(haiku_ids, 20, [tokenizer.eos_token_id]).tokens == reference_tokens
        for p in procs:
            assert p.wait(timeout=10) == 0
        # let go at stop (rt is still referenced here): the driver's TCPStore listens on
        # every interface for as long as anything holds it
        listening = [c.laddr for c in psutil.Process().net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert not listening, f"the driver's store still listens after stop: {listening}"
    finally:
        for p in procs:
            p.kill()


def test_a_device_joins_while_another_one_dies(haiku_ids, reference_tokens, tokenizer):
    """A worker SIGKILLed just before a join (found dead or not yet): the join goes on without
    it (its pair is left out, bounded by the connect timeout), and a pipeline of the survivor
    and the new device gives the single-process tokens."""
    cl = default_cluster(3)
    first, late, last = cl.names
    with EmulatedCluster(cl, dilation=1.0, timeout_s=60, absent=[late], connect_timeout_s=10) as rt:
        rt.kill(last)
        t0 = time.monotonic()
        rt.join(late)
        assert time.monotonic() - t0 < 20
        pipe = rt.pipeline([(first, 0, 15), (late, 15, 30)])
        assert pipe.generate(haiku_ids, 20, [tokenizer.eos_token_id]).tokens == reference_tokens
        assert last in rt.dead
        procs = list(rt.procs)
    assert _gone(procs)
