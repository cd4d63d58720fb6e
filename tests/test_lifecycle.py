"""The runtime's life cycle: no worker outlives its driver, nothing hangs, nothing listens off loopback.

Each driver run here is tagged with an environment variable its workers inherit, so the test finds
exactly its own worker processes in /proc, whoever their parent is by then.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import psutil
import pytest

from e2llm_lite.devices import default_cluster
from e2llm_lite.errors import WorkerDied
from e2llm_lite.runtime.driver import EmulatedCluster
from proc_tags import tagged

GRACE_S = 5.0   # a worker may outlive its driver by at most this long; so may a stop


def wait_gone(tag: str, timeout_s: float) -> float:
    """Seconds until no process of ``tag`` is left; fails (and kills them) after ``timeout_s``."""
    t0 = time.monotonic()
    while tagged(tag):
        if time.monotonic() - t0 > timeout_s:
            left = tagged(tag)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"{len(left)} process(es) outlived the driver by more than {timeout_s:g} s")
        time.sleep(0.1)
    return time.monotonic() - t0


def driver(tag: str) -> subprocess.Popen:
    env = dict(os.environ, E2LLM_TEST_TAG=tag)
    return subprocess.Popen(
        [sys.executable, "-m", "e2llm_lite.cli", "generate", "--prompt", "Tell me a long story.",
         "--devices", "2", "--max-new-tokens", "200"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=_as_in_a_terminal)


def _as_in_a_terminal():
    """Ctrl-C's default action, as for a command run in a terminal: a test run started in the
    background of a shell (``cmd &``) inherits SIGINT *ignored*, and so would the driver."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
@pytest.mark.parametrize("after_s", [0.3, 2.0, 6.0], ids=lambda t: f"{t:g}s")
def test_no_worker_outlives_its_driver(sig, after_s):
    """0.3 s: before the workers spawn; 2 s: while they import torch; 6 s: loading or generating."""
    tag = uuid.uuid4().hex
    proc = driver(tag)
    time.sleep(after_s)
    if sig == signal.SIGINT:  # Ctrl-C in a terminal: the whole process group
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    t0 = time.monotonic()
    try:
        proc.wait(timeout=GRACE_S + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the driver did not exit within {GRACE_S + 10:g} s of {sig.name}")
    exited = time.monotonic() - t0
    err = proc.stderr.read().decode(errors="replace")
    wait_gone(tag, GRACE_S)
    if sig == signal.SIGINT:
        assert exited <= GRACE_S, f"Ctrl-C took {exited:.1f} s"
        assert "Traceback" not in err, err[-2000:]
        assert proc.returncode != 0


def test_with_exit_after_a_worker_is_killed_is_quick():
    cluster = default_cluster(2)
    with EmulatedCluster(cluster) as rt:
        rt.pipeline([(cluster.names[0], 0, 15), (cluster.names[1], 15, 30)])
        victim = rt.procs[1]
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
        t0 = time.monotonic()
    assert time.monotonic() - t0 <= GRACE_S
    assert all(p.poll() is not None for p in rt.procs)


def test_a_worker_killed_mid_generation_is_reported_and_the_exit_is_quick(tokenizer):
    from e2llm_lite.model import chat_ids

    cluster = default_cluster(2)
    ids = chat_ids(tokenizer, "Tell me a long story.")
    t_exit = None
    with pytest.raises(WorkerDied):
        with EmulatedCluster(cluster) as rt:
            pipe = rt.pipeline([(cluster.names[0], 0, 15), (cluster.names[1], 15, 30)])
            threading.Timer(1.5, lambda: rt.procs[1].send_signal(signal.SIGKILL)).start()
            try:
                pipe.generate(ids, 400)
            finally:
                t_exit = time.monotonic()
    assert time.monotonic() - t_exit <= GRACE_S
    assert all(p.poll() is not None for p in rt.procs)


def test_nothing_listens_beyond_loopback():
    cluster = default_cluster(2)
    with EmulatedCluster(cluster) as rt:
        rt.pipeline([(cluster.names[0], 0, 15), (cluster.names[1], 15, 30)])
        procs = [psutil.Process()] + [psutil.Process(p.pid) for p in rt.procs]
        listening = [(p.pid, c.laddr) for p in procs for c in p.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
    assert listening, "expected the group's sockets to listen somewhere"
    off_loopback = [(pid, addr) for pid, addr in listening if addr.ip not in ("127.0.0.1", "::1")]
    assert not off_loopback, f"listening beyond loopback: {off_loopback}"


@pytest.mark.parametrize("after_s", [0.5, 4.0], ids=lambda t: f"{t:g}s")
def test_a_killed_worker_ends_the_run_quickly(after_s):
    """A worker SIGKILLed ``after_s`` after the workers spawned (0.5 s: importing torch; 4 s:
    loading or generating): the driver reports it in one line and exits; no worker is left."""
    tag = uuid.uuid4().hex
    env = dict(os.environ, E2LLM_TEST_TAG=tag)
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2llm_lite.cli", "generate", "--prompt", "hi", "--cluster", "home4",
         "--max-new-tokens", "100"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len([p for p in tagged(tag) if p != proc.pid]) < 4:
        assert time.monotonic() < deadline and proc.poll() is None, "the workers did not start"
        time.sleep(0.05)
    time.sleep(after_s)
    workers = [p for p in tagged(tag) if p != proc.pid]
    os.kill(max(workers), signal.SIGKILL)   # the last one spawned: the laptop
    t0 = time.monotonic()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the driver did not exit within 60 s of a worker's death")
    took = time.monotonic() - t0
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
    wait_gone(tag, GRACE_S)
    assert took <= GRACE_S + 2, f"the run took {took:.1f} s to end after the worker died"
    assert proc.returncode == 2 and err and err[-1].startswith("e2llm-lite: error:"), err[-5:]
    assert "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("argv", [
    ["generate", "--prompt", "hi", "--devices", "2", "--dilation", "inf"],
    ["generate", "--prompt", "hi", "--devices", "2", "--dilation", "1e30"],
    ["plan", "--cluster", "home4", "--workload", "conv", "--rate", "1", "--quick", "--out", "/tmp"],
], ids=["dilation-inf", "dilation-1e30", "plan-out-a-directory"])
def test_bad_input_is_one_line_and_exit_2(argv, capsys):
    from e2llm_lite import cli

    try:
        code = cli.main(argv)
    except SystemExit as e:  # an argument refused by the parser
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("e2llm-lite: error:"), err
    assert "dilation" in err[0] or "/tmp" in err[0]
