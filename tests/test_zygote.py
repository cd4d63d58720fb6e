"""The worker zygote: workers forked from one warm process, with the same life-cycle guarantees.

(``tests/test_lifecycle.py`` kills drivers that use it at several moments; here: who forks whom,
what a dead zygote means for its workers and the driver, and the fresh-interpreter fallback.)
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from e2llm_lite.devices import default_cluster
from e2llm_lite.errors import WorkerDied
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.runtime.zygote import ForkedProcess, shared_zygote


def wait_until(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_workers_are_forked_from_one_zygote_and_reaped(haiku_ids, reference_tokens, tokenizer):
    z = shared_zygote()
    pids = []
    for _ in range(2):  # two clusters in a row: the same zygote forks both
        with EmulatedCluster(default_cluster(2), dilation=1.0, timeout_s=60) as rt:
            assert all(isinstance(p, ForkedProcess) for p in rt.procs)
            assert {psutil.Process(p.pid).ppid() for p in rt.procs} == {z.proc.pid}
            assert [psutil.Process(p.pid).name() for p in rt.procs] == ["e2llm-w1", "e2llm-w2"]
            pipe = rt.pipeline([(rt.cluster.names[0], 0, 12), (rt.cluster.names[1], 12, 30)])
            gen = pipe.generate(haiku_ids, 20, [tokenizer.eos_token_id])
            assert gen.tokens == reference_tokens  # a forked worker computes what a fresh one does
            pids += [p.pid for p in rt.procs]
        assert shared_zygote() is z
    assert wait_until(lambda: all(gone(p) for p in pids), 5.0)   # exited and reaped
    assert [ForkedProcess(z, p).returncode for p in pids] == [0] * len(pids)  # STOPped politely


def test_a_dead_zygote_takes_its_workers_and_the_next_cluster_starts_a_new_one():
    with EmulatedCluster(default_cluster(2), dilation=1.0, timeout_s=60) as rt:
        old = shared_zygote()
        old.proc.send_signal(signal.SIGKILL)
        # its workers die with it (PR_SET_PDEATHSIG), and the driver hears of it
        assert wait_until(lambda: all(gone(p.pid) for p in rt.procs), 5.0)
        assert wait_until(lambda: all(p.poll() is not None for p in rt.procs), 5.0)
        died = [c for c in rt.poll(1.0) if c.kind == "died"]
        assert sorted(c.pipeline for c in died) == sorted(rt.cluster.names)
        with pytest.raises(WorkerDied):
            rt.pipeline([(rt.cluster.names[0], 0, 30)])
    with EmulatedCluster(default_cluster(2), dilation=1.0, timeout_s=60) as rt:
        assert shared_zygote() is not old
        assert {psutil.Process(p.pid).ppid() for p in rt.procs} == {shared_zygote().proc.pid}


def test_without_the_zygote_every_worker_is_a_fresh_interpreter(monkeypatch):
    monkeypatch.setenv("E2LLM_ZYGOTE", "0")
    with EmulatedCluster(default_cluster(1), dilation=1.0, timeout_s=60) as rt:
        (proc,) = rt.procs
        assert not isinstance(proc, ForkedProcess)
        assert psutil.Process(proc.pid).ppid() == os.getpid()
        assert "e2llm_lite.runtime.worker" in psutil.Process(proc.pid).cmdline()
    assert proc.returncode == 0
