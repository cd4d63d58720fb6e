"""Every two processes talk over a gloo group of their own (runtime/protocol.Mesh): a peer that
dies in the middle of a message breaks its own pair only.

Until 2026-12-04 the devices up at the start shared one group, and the driver took every reply
off it with one receiver. A worker killed between a header and its payload left that receiver
waiting for the payload (up to the group's timeout) while the other workers' replies queued
behind it, and then gloo broke the whole group: once in CI, real serving stopped with
ServeFailed instead of surviving the death. This test builds that moment on purpose."""

import os
import queue
import subprocess
import sys
import time

from e2llm_lite.runtime.protocol import (Postbox, Receiver, make_group, pair_meeting, side_by_side,
                                         start_pairs)

# a process that pairs up with rank 0 and then either dies between a header and its payload
# ("half") or sends five small messages, one every 0.3 s ("talk")
PEER = r"""
import os, sys, time, torch
from e2llm_lite.runtime.protocol import Op, make_group, pair_meeting, send
rank, pair_dir, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
_, pg = make_group(1, 2, 30.0, connect_timeout_s=60, **pair_meeting(0, rank, pair_dir))

class DiesMidMessage:          # the real send; the process dies before the payload's gloo send
    def __init__(self, pg):
        self.pg, self.sends = pg, 0
    def send(self, tensors, dst, tag):
        self.sends += 1
        if self.sends == 2:
            os._exit(9)
        return self.pg.send(tensors, dst, tag)

if mode == "half":
    send(DiesMidMessage(pg), 0, Op.RESULT, rank, request=7, payload=torch.zeros(1 << 16))
for i in range(5):
    time.sleep(0.3)
    send(pg, 0, Op.ACK, rank, request=i)
time.sleep(30)
"""


def test_the_pairs_of_the_start_name_each_pair_once_from_both_ends():
    members = [0, 1, 2, 4]
    pairs = {m: start_pairs(m, members) for m in members}
    assert pairs[2] == [(0, 2), (1, 2), (2, 4)]
    every = [p for m in members for p in pairs[m]]
    assert sorted(set(every)) == sorted({(a, b) for a in members for b in members if a < b})
    assert all(every.count(p) == 2 for p in every)   # both ends form it, under one name
    assert pair_meeting(1, 2, "/x")["store_file"] == os.path.join("/x", "pair-2-1")

    class Store:
        def clone(self):
            return "a client of its own"

    assert pair_meeting(0, 3, store=Store()) == dict(store="a client of its own", prefix="e2llm/pair/3-0/")


def test_a_peer_that_dies_mid_message_breaks_only_its_own_pair(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    procs = {r: subprocess.Popen([sys.executable, "-c", PEER, str(r), str(tmp_path), mode], env=env)
             for r, mode in ((1, "talk"), (2, "half"))}
    groups, box, broke = {}, Postbox(), {}
    try:
        groups, failed = side_by_side(
            {r: lambda r=r: make_group(0, 2, 30.0, connect_timeout_s=60,
                                       **pair_meeting(0, r, str(tmp_path)))[1] for r in procs}, 90)
        assert set(groups) == {1, 2} and not failed, failed
        for r, pg in groups.items():
            Receiver(pg, box, world=3, members=[0, r], report=False,
                     on_error=lambda e, r=r: broke.setdefault(r, e))
        got, t0 = [], time.monotonic()
        while len([m for m in got if m.src == 1]) < 5 and time.monotonic() - t0 < 20:
            try:
                got.append(box.get(1.0))
            except queue.Empty:
                pass
        took = time.monotonic() - t0
        assert [m.request for m in got if m.src == 1] == list(range(5)), got
        assert took < 6, f"the live peer's messages waited {took:.1f} s behind the dead one's"
        assert not [m for m in got if m.src == 2]       # half a message is never delivered
        assert procs[2].wait(timeout=10) == 9
        assert 1 not in broke                            # the live pair never broke
    finally:
        for pg in groups.values():
            pg.shutdown()
        for p in procs.values():
            p.kill()
            p.wait(timeout=10)


def test_side_by_side_runs_jobs_at_once_and_names_each_that_failed():
    def boom():
        raise ConnectionError("refused\nsecond line")

    t0 = time.monotonic()
    made, failed = side_by_side({1: lambda: time.sleep(0.3) or "a", 2: lambda: time.sleep(0.3) or "b",
                                 3: boom, **{k: lambda: time.sleep(5) for k in (4, 5, 6)}}, wait_s=1.0)
    assert made == {1: "a", 2: "b"}
    assert failed[3] == "ConnectionError: refused"           # one line
    assert failed[4] == failed[5] == failed[6] == "no answer within 1 s"
    assert time.monotonic() - t0 < 2.5       # at once, and 1 s in all (one after the other: 3 s)
