"""One emulated device: a process with one torch thread, one layer slice and its KV caches.

The worker joins the gloo group as rank ``r`` (the driver is rank 0) and serves messages until
``STOP``: it loads its slice (refusing one that does not fit its budget before reading any
weight), runs forward steps at its device's speed for the step's phase, forwards hidden states
to the next stage over an emulated link, and exports / imports per-request KV caches. Any error
in a step is reported to the driver as an ``ERROR`` message; the worker keeps serving.

It stops by itself when the driver goes away. A worker the driver spawned (``--local``) asks the
kernel to kill it when its parent exits (``PR_SET_PDEATHSIG``), leaves Ctrl-C to the driver and
checks that its parent is still the driver — all *before* importing torch, which takes seconds —
then keeps checking its parent twice a second. A multi-host worker checks once a second that the
driver's TCPStore still answers. Joining the group is bounded by ``--connect-timeout`` seconds.
"""

from __future__ import annotations

import os
import sys

from .guard import die_with_parent  # noqa: E402  (imports nothing heavy)

if __name__ == "__main__" and "--local" in sys.argv:   # a spawned worker: before importing torch
    die_with_parent(int(sys.argv[sys.argv.index("--parent") + 1]) if "--parent" in sys.argv else None)

import datetime  # noqa: E402
import math  # noqa: E402
import queue  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # torch's C++ stack dumps are not for users

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..devices import transfer_ms  # noqa: E402
from ..errors import DeviceOOM  # noqa: E402
from ..memory import MemoryLedger  # noqa: E402
from ..stage import Stage  # noqa: E402
from .limits import CONNECT_TIMEOUT_S  # noqa: E402
from .protocol import (TRACE_COLS, BadMessage, ErrorKind, Mesh, Message, Op,  # noqa: E402
                       Outbox, Postbox, Receiver, as_payload, group_members, make_group,
                       message_bytes, pair_meeting, side_by_side, start_pairs, text_payload)
from .throttle import HostFactor, Throttle  # noqa: E402

PHASES = ("prefill", "decode")


class _Router:
    """Where the receiver puts a message: KV hand-offs to the DMA thread's postbox, everything
    else (and errors) to the main thread's."""

    DMA_OPS = (Op.KV_SEND, Op.KV_PUT)

    def __init__(self, inbox: Postbox, dma: Postbox):
        self.inbox, self.dma = inbox, dma

    def put(self, item, at: float = 0.0) -> None:
        box = self.dma if isinstance(item, Message) and item.op in self.DMA_OPS else self.inbox
        box.put(item, at)


class Worker:
    """The state of one device worker. Times in seconds; sizes in bytes."""

    def __init__(self, rank: int, world: int, timeout_s: float, parent: int | None = None,
                 members=None, peers=None, pair_dir: str | None = None, **group):
        """``members``: the global ranks up at the start (default: all ``world``); this device
        pairs up with each of them in a group of two (:class:`Mesh`). ``peers``: instead, this
        device joins a running cluster and pairs up with each of these ranks (the driver first).
        Pairs meet through files of ``pair_dir`` (:func:`pair_meeting`; workers the driver
        spawned) or the driver's store at ``group``'s addr/port (started by hand; the driver
        names the members). ``peers="ask"``: a worker started by hand waits in the driver's store
        until the driver lets its device join (:meth:`EmulatedCluster.join`) and names them."""
        self.rank, self.world, self.parent = rank, world, parent
        self.timeout_s = timeout_s
        self.connect_timeout_s = group.get("connect_timeout_s", CONNECT_TIMEOUT_S)
        self.bind = group.get("bind", "127.0.0.1")
        if parent is not None:  # watch the driver from the start: joining the group can block
            threading.Thread(target=self.watch_parent, name="e2llm-parent", daemon=True).start()
        self.serving = False                   # receivers start with serve()
        self.group_lock = threading.Lock()
        self.mesh = Mesh()
        self.groups: list[tuple] = []          # (process group, members, a broken one is fatal)
        self.store = None
        if pair_dir is None:   # started by hand: every pair meets in the driver's store
            if peers is None:
                self.store, members = group_members(group["addr"], group["port"], rank,
                                                    self.connect_timeout_s)
            else:
                import torch.distributed as dist

                self.store = dist.TCPStore(group["addr"], group["port"], is_master=False,
                                           timeout=datetime.timedelta(seconds=self.connect_timeout_s))
        if peers is None:   # up at the start: every pair must form
            members = list(range(world)) if members is None else [int(r) for r in members]
            self._pair_up(start_pairs(rank, members), pair_dir, required=True)
        else:
            if peers == "ask":   # started by hand: wait for the driver to let this device in
                self.store.set(f"e2llm/join/{rank}/ask", "1")
                key = f"e2llm/join/{rank}/peers"
                self.store.wait([key], datetime.timedelta(seconds=self.connect_timeout_s))
                peers = [int(x) for x in self.store.get(key).decode().split(",")]
            peers = [int(p) for p in peers]
            # the driver first (it tells the others to pair up), then the others side by side;
            # a pair that does not form (that device died meanwhile) is left out
            self._pair_up([(peers[0], rank)], pair_dir, required=True)
            self._pair_up([(p, rank) for p in peers[1:]], pair_dir, required=False)
        self.name = f"rank{rank}"
        self.throttle = Throttle()
        self.links = np.zeros((world, 2))      # (Mbit/s, ms) to each rank; 0 Mbit/s = free
        self.stage = None
        self.account: MemoryLedger | None = None
        self.speeds = (1.0, 1.0)               # prefill, decode (relative to one host thread)
        self.host_factor = HostFactor()        # this host's ms / the cost model's ms (calibration)
        self.step_context = 0.0                # the timed step's mean context (decode), for the trace
        self.next_rank = 0
        self.home_rank = 0
        self.trace: list[list[float]] = []
        self.batches: dict[int, list[int]] = {}   # batch id -> its request ids (Op.BATCH)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.link_s = 0.0
        self.link_free: dict[int, float] = {}     # rank -> when its link finishes what is booked
        self.clock_offset = 0.0                   # the driver's monotonic clock - ours (s)
        self.inbox = Postbox()
        self.dma = Postbox()                      # KV hand-offs, stored beside the compute
        self.lock = threading.RLock()             # link bookings, counters, the memory ledger
        self.outbox = Outbox(self.mesh, rank)

    def _pair(self, first: int, second: int, pair_dir: str | None):
        """The group of two of global ranks ``first`` (group rank 0) and ``second`` (1), one of
        them this device (:func:`pair_meeting`)."""
        kw = pair_meeting(first, second, pair_dir, self.store)
        return make_group(int(second == self.rank), 2, self.timeout_s,
                          connect_timeout_s=self.connect_timeout_s, bind=self.bind, **kw)[1]

    def _pair_up(self, pairs: list[tuple[int, int]], pair_dir: str | None, required: bool) -> None:
        """Form ``pairs`` ((first, second) global ranks) side by side, each bounded by the
        connect timeout. A pair with the driver is fatal once broken (the driver is gone), one
        with a device only dropped. ``required``: a pair that does not form raises
        ConnectionError naming its peer; else it is left out (that device died meanwhile)."""
        def pair(first, second):
            peer = first if second == self.rank else second
            return lambda: self._add_group(self._pair(first, second, pair_dir), [first, second],
                                           fatal=peer == 0)

        _, failed = side_by_side({(f if s == self.rank else s): pair(f, s) for f, s in pairs},
                                 self.connect_timeout_s + 5.0)
        for peer, why in sorted(failed.items()):
            if required:
                raise ConnectionError(f"no pair with rank {peer} ({why})")
            print(f"e2llm-lite worker {self.rank}: no pair with rank {peer} ({why})", file=sys.stderr)

    def _add_group(self, pg, members: list[int], fatal: bool) -> None:
        """Reach ``members`` through ``pg``; once serving, also listen on it (thread-safe)."""
        with self.group_lock:
            self.mesh.add(pg, members)
            self.groups.append((pg, members, fatal))
            if self.serving:
                self._listen(pg, members, fatal)

    def _listen(self, pg, members: list[int], fatal: bool) -> None:
        """A receiver thread for ``pg``: a broken group of this device's start, or its pair with
        the driver, ends the worker (the driver is gone); a pair with a device that died is
        only dropped."""
        Receiver(pg, _Router(self.inbox, self.dma), on_error=lambda e: e, world=self.world,
                 local_time=lambda us: us / 1e6 - self.clock_offset, members=members,
                 report=fatal)

    # ---- plumbing ------------------------------------------------------------------------------
    def post(self, dst: int, op: Op, link: int | None = None, since: float | None = None,
             **kw) -> None:
        """Queue a message for rank ``dst`` and return at once (one sender thread per destination
        keeps its messages in order; this thread goes on computing).

        ``link``: the rank whose emulated link the message travels over (default: none, it is
        due on arrival). The link is booked now: the message leaves once the link has finished
        the messages before it (its bandwidth is shared), occupies it for ``bytes / bandwidth``
        and is delivered ``latency`` after that; the receiver holds it until then (header ``t``),
        so the real transport is inside the emulated delay. ``since``: when the message was ready
        (a step's end; default now), so that this process's own bookkeeping after the step is not
        added to the link's delay."""
        payload = as_payload(kw.pop("payload", None))
        nbytes = message_bytes(payload)
        with self.lock:
            self.bytes_sent += nbytes
            at = 0.0 if link is None else self.book_link(link, nbytes, since)
            t = int(round((at + self.clock_offset) * 1e6)) if at else 0
            self.outbox.put(dst, op, t=t, payload=payload, **kw)

    def flush(self, timeout_s: float = 2.0) -> None:
        """Let the sender threads send what is queued (bounded) before the process ends."""
        self.outbox.close(timeout_s)

    def book_link(self, dst: int, nbytes: int, since: float | None = None) -> float:
        """Book the emulated link to rank ``dst`` for ``nbytes`` from ``since`` (default now;
        this process's monotonic s); returns when the message is delivered (0: no emulated link)
        and counts its device time."""
        bw, lat = self.links[dst]
        if dst == self.rank or (bw <= 0 and lat <= 0):
            return 0.0
        bw = bw if bw > 0 else math.inf
        D = self.throttle.dilation
        start = max(time.monotonic() if since is None else since, self.link_free.get(dst, 0.0))
        self.link_free[dst] = start + D * transfer_ms(nbytes, 0.0, bw) / 1e3   # on the wire
        seconds = transfer_ms(nbytes, lat, bw) / 1e3
        self.link_s += seconds
        return start + D * seconds

    def reply_error(self, request: int, exc: BaseException, op: int = 0, opid: int = 0) -> None:
        """Report a failed ``op`` (0: none) of operation ``opid`` for ``request`` to the driver."""
        kind = (ErrorKind.DEVICE_OOM if isinstance(exc, DeviceOOM)
                else ErrorKind.VALUE if isinstance(exc, (ValueError, KeyError)) else ErrorKind.OTHER)
        text = str(exc) if isinstance(exc, (DeviceOOM, ValueError)) else f"{type(exc).__name__}: {exc}"
        self.post(0, Op.ERROR, request=request, a=int(kind), b=int(op), e=opid,
                  payload=text_payload(text))

    def driver_us(self, local_s: float) -> int:
        """This process's monotonic time (s) on the driver's clock (us)."""
        return int(round((local_s + self.clock_offset) * 1e6))

    def watch_driver(self) -> None:
        """Exit the process once the driver's rendezvous store stops answering (checked every 1 s)."""
        while True:
            time.sleep(1.0)
            try:
                self.store.check(["e2llm/driver"])
            except Exception:
                print(f"e2llm-lite worker {self.rank}: the driver is gone, stopping", file=sys.stderr)
                os._exit(0)

    def watch_parent(self) -> None:
        """Exit the process as soon as the driver (our parent) is gone (checked twice a second)."""
        while True:
            if os.getppid() != self.parent:
                os._exit(0)
            time.sleep(0.5)

    def serve(self) -> None:
        """Serve messages in delivery order until STOP. A receiver thread takes them off the
        wire at once (a sender never waits for this worker to finish a step) and holds each one
        until its delivery time; this thread computes."""
        if self.parent is None:  # a multi-host worker: watch the driver's store
            threading.Thread(target=self.watch_driver, name="e2llm-watchdog", daemon=True).start()
        with self.group_lock:
            self.serving = True
            for pg, members, fatal in self.groups:
                self._listen(pg, members, fatal)
        threading.Thread(target=self.serve_dma, name="e2llm-dma", daemon=True).start()
        while True:
            try:
                msg = self.inbox.get(1.0)
            except queue.Empty:
                continue
            if isinstance(msg, BaseException):
                if isinstance(msg, BadMessage):  # the stream cannot be trusted any more
                    self.reply_error(-1, msg)
                    self.flush(1.0)
                raise msg
            if msg.op == Op.STOP:
                self.post(0, Op.STOP)  # lets the driver's receiver thread end before shutdown
                self.flush()
                return
            self.handle(msg)

    def serve_dma(self) -> None:
        """Store and send KV hand-offs (``KV_SEND``, ``KV_PUT``) on a thread of their own, in
        delivery order, while the main thread computes: a device's network and memory move a
        cache beside its compute (the emulated link already delays it), so a hand-off does not
        wait for the step in progress. Only other requests' caches are touched meanwhile."""
        while True:
            try:
                self.handle(self.dma.get(1.0))
            except queue.Empty:
                continue

    def handle(self, msg: Message) -> None:
        """Run ``msg``'s handler; a failure is reported to the driver, and serving goes on."""
        if msg.payload is not None:
            with self.lock:
                self.bytes_received += msg.payload.numel() * msg.payload.element_size()
        try:
            handler = getattr(self, f"on_{msg.op.name.lower()}", None)
            if handler is None:
                raise ValueError(f"device {self.name!r} does not take {msg.op.name} messages")
            handler(msg)
        except Exception as e:  # report, keep serving
            self.reply_error(msg.request, e, msg.op, msg.e)

    # ---- handlers ------------------------------------------------------------------------------
    def on_setup(self, m: Message) -> None:
        """``a``: the dilation (micro-units); ``b``: the driver's clock (us) when it sent this;
        ``c``: 1 if the driver shares this host's monotonic clock (spawned workers), else the
        offset is taken from ``b`` (off by the one-way transport time, well under a ms on a LAN)."""
        self.name = m.text
        self.throttle = Throttle(dilation=m.a / 1e6)
        self.clock_offset = 0.0 if m.c else m.b / 1e6 - time.monotonic()
        self.post(0, Op.ACK, a=int(Op.SETUP))

    def on_peer(self, m: Message) -> None:
        """Device ``m.a`` joins: pair up with it (on a thread of its own: the pair forms when the
        new worker gets to it, and this one goes on serving meanwhile), then ACK."""
        if not 0 < m.a < self.world or m.a == self.rank:
            raise ValueError(f"device {self.name!r}: cannot pair up with rank {m.a}")
        pair_dir = m.text.strip() or None

        def pair():
            try:
                self._pair_up([(self.rank, m.a)], pair_dir, required=True)
                self.post(0, Op.ACK, a=int(Op.PEER), b=m.a, e=m.e)
            except Exception as e:  # noqa: BLE001 - reported to the driver
                self.reply_error(m.request, e, m.op, m.e)

        threading.Thread(target=pair, name=f"e2llm-pair-{m.a}", daemon=True).start()

    def on_links(self, m: Message) -> None:
        self.links = m.payload.numpy().reshape(self.world, 2).copy()
        self.link_free.clear()
        self.post(0, Op.ACK, a=int(Op.LINKS))

    def on_load(self, m: Message) -> None:
        prefill_speed, decode_speed, budget = m.payload.tolist()
        account = MemoryLedger(self.name, int(budget), m.a, m.b)
        account.check_weights()                     # refuse before reading a single weight
        self.stage = None
        self.stage = Stage.load(m.a, m.b)
        self.account, self.speeds = account, (prefill_speed, decode_speed)
        self.host_factor = HostFactor()
        self.next_rank, self.home_rank = m.c, m.d
        self._warm_up()
        self.post(0, Op.ACK, a=int(Op.LOAD), b=self.stage.weight_bytes, e=m.e)

    def _probe_input(self, tokens: int) -> torch.Tensor:
        """A ``tokens``-long input for this stage: token ids on the first stage, else hidden states."""
        if self.stage.first:
            return torch.tensor([[100 + i % 1000 for i in range(tokens)]])
        return torch.zeros(1, tokens, self.stage.anatomy.hidden)

    def _warm_up(self) -> None:
        """One prefill and two decode steps on a scratch request, so timed steps start warm."""
        x = self._probe_input(16)
        self.stage(x, request_id=-1)
        for _ in range(2):
            self.stage(x[:, :1], request_id=-1)
        self.stage.free(-1)

    def on_calibrate(self, m: Message) -> None:
        """Time this stage on one probe, ``m.b`` times, each run after an idle gap of ``m.c`` ms
        like a real step (the first after a further delay, payload[1] ms, so that devices
        probed at once take turns): a prompt of ``m.a`` tokens (``m.d`` = 0), or a decode step of
        a batch of ``m.d`` sequences at context ``m.a``. The median divided by the cost model's
        prediction (payload[0]) becomes a point of ``host_factor``: how much slower (> 1) or
        faster this host runs such a step now than the profile says. Later steps run at
        ``speed * host_factor.at(phase, size)`` so that their device time is what the profile
        predicts for the device, whatever this host's speed today."""
        if self.stage is None:
            raise ValueError(f"device {self.name!r} has no layers loaded")
        predicted, delay_ms = m.payload.tolist()
        if not predicted > 0 or not delay_ms >= 0 or m.a < 1 or m.b < 1 or m.d < 0:
            raise ValueError(f"bad calibration request: tokens={m.a} repeats={m.b} batch={m.d} "
                             f"predicted={predicted}")
        time.sleep(delay_ms / 1e3)
        x = self._probe_input(m.a)
        times = []
        rids = [-2 - i for i in range(max(1, m.d))]
        try:
            if m.d:                  # decode: B caches of m.a tokens, untimed (one computed, copied)
                self.stage(x, request_id=rids[0])
                kv, pos = self.stage.export_kv(rids[0])
                for r in rids[1:]:
                    self.stage.import_kv(r, kv, pos)
                step = self._probe_input(1).expand(len(rids), *[-1] * (x.dim() - 1)).contiguous()
            for _ in range(m.b):
                time.sleep(m.c / 1e3)
                c0 = time.thread_time()
                if m.d:
                    self.stage.forward_batch(step, rids)
                else:
                    self.stage(x, request_id=rids[0])
                times.append((time.thread_time() - c0) * 1e3)
                if not m.d:
                    self.stage.free(rids[0])
        finally:
            for r in rids:
                self.stage.free(r)
        measured = float(np.median(times))
        factor = measured / predicted
        self.host_factor.add(int(m.d > 0), m.d or m.a, factor, context=m.a if m.d else 0)
        self.post(0, Op.ACK, a=int(Op.CALIBRATE),
                  payload=torch.tensor([measured, factor], dtype=torch.float64))

    def on_batch(self, m: Message) -> None:
        """Remember the request ids of the batched FWD that follows (no reply)."""
        self.batches[m.request] = [int(r) for r in m.payload.tolist()]

    def on_fwd(self, m: Message) -> None:
        if self.stage is None:
            raise ValueError(f"device {self.name!r} has no layers loaded")
        if m.c:
            return self._fwd_batch(m)
        tokens = m.a
        with self.lock:
            self.account.reserve(m.request, tokens)
        x = m.payload
        context = self.step_context = self.stage.position(m.request) if m.d else 0
        try:
            out = self.throttle.run(lambda: self.stage(x, request_id=m.request),
                                    self.speeds[m.d] * self.host_factor.at(m.d, tokens, context))
        except BaseException:
            with self.lock:
                self.account.release(m.request, tokens)
            raise
        if self.stage.last:
            logits = out[0, -1]
            # the token id (or the logits) travels back over the link to the first stage
            self._forward(m, m.d, tokens, 0, Op.RESULT, dict(request=m.request, a=int(logits.argmax()),
                                                              payload=logits if m.b else None))
        else:
            self._forward(m, m.d, tokens, self.next_rank, Op.FWD,
                          dict(request=m.request, a=tokens, b=m.b, d=m.d, payload=out.contiguous()))

    def _fwd_batch(self, m: Message) -> None:
        """A batched decode step for the requests of BATCH ``m.request``: all their KV and the
        step's memory accounted first (or DeviceOOM, nothing done), then one pass."""
        ids = self.batches.pop(m.request, None)
        if ids is None:
            raise ValueError(f"device {self.name!r}: no BATCH {m.request} announced its requests")
        with self.lock:
            self.account.reserve_batch(ids)
        x = m.payload
        context = self.step_context = sum(self.stage.position(r) for r in ids) / len(ids)
        try:
            out = self.throttle.run(lambda: self.stage.forward_batch(x, ids),
                                    self.speeds[1] * self.host_factor.at(1, len(ids), context))
        except BaseException:
            with self.lock:
                for r in ids:
                    self.account.release(r, 1)
            raise
        if self.stage.last:
            logits = out[:, -1]
            payload = logits.contiguous() if m.b else logits.argmax(-1).to(torch.int64)
            self._forward(m, 1, len(ids), 0, Op.RESULT, dict(request=m.request, b=m.b, c=1,
                                                              payload=payload))
        else:
            self.post(self.next_rank, Op.BATCH, request=m.request,
                      payload=torch.tensor(ids, dtype=torch.int64))
            self._forward(m, 1, len(ids), self.next_rank, Op.FWD,
                          dict(request=m.request, a=len(ids), b=m.b, c=1, d=1, payload=out.contiguous()))

    def _forward(self, m: Message, phase: int, tokens: int, dst: int, op: Op, kw: dict) -> None:
        """After a timed step of operation ``m``: send its output to ``dst`` (the next stage, or
        0: the driver, standing next to the first stage) over the emulated link, then report the
        step (STEP, to the driver: off the critical path; the driver holds a result until every
        stage's report is in)."""
        last = self.throttle.last
        payload = as_payload(kw.pop("payload", None))
        link_before = self.link_s
        self.post(dst, op, link=self.home_rank if dst == 0 else dst, since=last["end"], e=m.e,
                  payload=payload, **kw)
        self.post(0, Op.STEP, request=m.request, a=self.driver_us(last["start"]),
                  b=self.driver_us(last["end"]), c=message_bytes(payload),
                  d=phase | int(last["overrun"]) << 1, e=m.e)
        self.trace.append([m.request, phase, tokens, last["start"], last["end"], last["cpu_s"],
                           last["target_s"], float(last["overrun"]), self.link_s - link_before,
                           float(self.step_context)])

    def on_kv_send(self, m: Message) -> None:
        """Export layers [a, b) of the request's KV and send them to rank ``c`` over our link
        to it (this thread goes on at once)."""
        if self.stage is None:
            raise ValueError(f"device {self.name!r} has no layers loaded")
        kv, pos = self.stage.export_kv(m.request, m.a, m.b)
        self.post(m.c, Op.KV_PUT, link=m.c, request=m.request, a=m.a, b=m.b, c=pos, e=m.e,
                  payload=kv)

    def on_kv_put(self, m: Message) -> None:
        if self.stage is None:
            raise ValueError(f"device {self.name!r} has no layers loaded")
        with self.lock:
            self.account.reserve_import(m.request, m.b - m.a, m.c)
        self.stage.import_kv(m.request, m.payload.numpy(), m.c, start=m.a)
        self.post(0, Op.ACK, request=m.request, a=int(Op.KV_PUT), b=m.a, c=m.b, d=m.c, e=m.e)

    def on_free(self, m: Message) -> None:
        rid = None if m.request == -1 else m.request
        if self.stage is not None:
            self.stage.free(rid)
            with self.lock:
                self.account.free(rid)
        if m.a:  # also forget the trace and counters (a fresh measurement)
            self.trace.clear()
            self.throttle = Throttle(dilation=self.throttle.dilation)
            self.bytes_sent = self.bytes_received = 0
            self.link_s = 0.0
            self.link_free.clear()
            if self.account:
                self.account.peak_bytes = self.account.used_bytes
        self.post(0, Op.ACK, request=m.request, a=int(Op.FREE), e=m.e)

    def on_stats(self, m: Message) -> None:
        t, acc = self.throttle, self.account
        row = [t.compute_s, t.sleep_s, t.steps, t.overruns, self.bytes_sent, self.bytes_received,
               acc.peak_bytes if acc else 0, acc.weight_bytes if acc else 0,
               acc.kv_bytes if acc else 0, self.stage.kv_bytes() if self.stage else 0,
               self.link_s, t.dilation, float(self.stage is not None)]
        self.post(0, Op.ACK, a=int(Op.STATS), payload=torch.tensor(row, dtype=torch.float64))

    def on_trace(self, m: Message) -> None:
        rows = torch.tensor(self.trace, dtype=torch.float64).reshape(-1, len(TRACE_COLS))
        self.post(0, Op.ACK, a=int(Op.TRACE), payload=rows)


def run_worker(rank: int, world: int, addr: str = "127.0.0.1", port: int | None = 29500,
               timeout_s: float = 3600.0, *, parent: int | None = None,
               connect_timeout_s: float = CONNECT_TIMEOUT_S, bind: str | None = None,
               members=None, peers=None, pair_dir: str | None = None) -> None:
    """Entry point of a device process: spawned by the driver on this machine (``pair_dir``,
    ``parent``: its pairs meet through files of that folder, sockets on loopback, exit when the
    parent does), or started with ``e2llm-lite worker`` for a multi-host run (``addr:port``: the
    driver's TCPStore; ``bind``: this machine's address for the pairs' sockets, default: what
    the host name resolves to). ``timeout_s`` bounds every message wait; ``connect_timeout_s``
    the rendezvous. ``members`` / ``peers``: see :class:`Worker` (a device that joins later)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # set already (a worker forked by the zygote): only once per process
        pass
    group = dict(bind="127.0.0.1") if pair_dir else dict(addr=addr, port=port, bind=bind)
    try:
        worker = Worker(rank, world, timeout_s, parent=parent, connect_timeout_s=connect_timeout_s,
                        members=members, peers=peers, pair_dir=pair_dir, **group)
    except Exception as e:  # no driver within the connect timeout, an unreachable address, ...
        where = f"the folder {pair_dir}" if pair_dir else f"{addr}:{port}"
        print(f"e2llm-lite worker {rank}: could not join the driver at {where} within "
              f"{connect_timeout_s:g} s ({type(e).__name__}: {str(e).splitlines()[0][:120]})",
              file=sys.stderr)
        os._exit(3)
    try:
        worker.serve()
    except Exception as e:  # the driver vanished or the group broke: exit quietly
        print(f"e2llm-lite worker {rank}: stopping ({type(e).__name__}: {str(e)[:120]})",
              file=sys.stderr)
    finally:
        try:
            worker.mesh.shutdown()
        except Exception:
            pass
        os._exit(0)  # do not wait for threads blocked in gloo


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="one emulated device worker")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--addr", default="127.0.0.1")
    p.add_argument("--port", type=int)
    p.add_argument("--parent", type=int, help="the driver's pid: exit when it is gone")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S)
    p.add_argument("--local", action="store_true", help="spawned by the driver: die with it")
    p.add_argument("--members", help="the ranks up at the start, to pair up with (default: all)")
    p.add_argument("--peers", help="join a running cluster: pair up with these ranks (driver first)")
    p.add_argument("--pair-dir", help="the folder of the pairs' store files (spawned workers)")
    p.add_argument("--join", action="store_true", help="join a running cluster when the driver lets "
                   "this device in (multi-host: through the driver's store at --addr:--port)")
    a = p.parse_args(argv)
    ranks = (lambda t: None if t is None else [int(x) for x in t.split(",")])
    if a.join and a.peers is None:
        a.peers = "ask"
    run_worker(a.rank, a.world, a.addr, a.port, a.timeout, parent=a.parent,
               connect_timeout_s=a.connect_timeout, members=ranks(a.members),
               peers=a.peers if a.peers == "ask" else ranks(a.peers),
               pair_dir=a.pair_dir)


if __name__ == "__main__":
    main()
