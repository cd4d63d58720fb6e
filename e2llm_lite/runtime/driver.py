"""The driver: starts one worker process per device, places layer slices, runs pipelines.

``EmulatedCluster(cluster)`` is rank 0 of a cluster whose ranks 1..N are the cluster's devices
(device ``i`` is rank ``i + 1``); every two processes talk over a gloo group of their own, so a
worker that dies (even in the middle of a message) breaks only its own links
(:class:`~e2llm_lite.runtime.protocol.Mesh`). On one machine it spawns the workers itself: the
pairs meet through files in a private temporary folder (no rendezvous socket) and their sockets
listen on 127.0.0.1 only. With ``spawn=False`` it waits for N workers started elsewhere with
``e2llm-lite worker`` (MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE); then the driver's TCPStore
listens on every interface of this machine (see :func:`~e2llm_lite.runtime.protocol.open_store`).
Use it as a context manager: every worker is
stopped on success, on error and on Ctrl-C, and a worker that dies is reported within about a
second instead of being waited on.

The driver stands next to each pipeline's first device: handing it the prompt costs nothing, and
the last stage's token travels back over the link from the last device to the first.

Times: every duration the driver reports is **device time** in ms (wall time / dilation).
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
import weakref

import numpy as np
import torch

from ..costmodel import CostModel
from ..devices import Cluster
from ..errors import DeviceOOM, E2LLMError, WorkerDied
from ..memory import MIB
from ..model import ANATOMY
from ..split import kv_pieces
from .dispatch import Dispatcher
from .limits import CONNECT_TIMEOUT_S, INTERRUPTED, MAX_DILATION
from .ops import Completion, Operations
from .pipeline import Pipeline, StagePlacement
from .protocol import (STATS_COLS, TRACE_COLS, ErrorKind, Mesh, Op, Outbox, Postbox, Receiver,
                       make_group, open_store, pair_meeting, side_by_side, text_payload)
from .throttle import auto_dilation, outlying
from .zygote import start_worker

CALIBRATION_TOKENS = (8, 24, 64, 160)   # prompt lengths a calibration times (a host's fixed per-step
                                   # cost differs from the profile's: one length is not enough)
CALIBRATION_BATCHES = (1, 2, 3, 4, 8, 16)   # decode batch sizes it times (the reference profile
                                         # has a bump at 2-3 rows that a host may not have)
CALIBRATION_CONTEXTS = (8, 256)   # contexts (tokens cached per sequence) of the decode probes: a
                                  # host's attention over a long context differs from the profile's


def _wait(proc: subprocess.Popen, timeout_s: float) -> None:
    try:
        proc.wait(timeout=max(0.05, timeout_s))
    except subprocess.TimeoutExpired:
        pass


def _check_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed and its own exception got lost."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmulatedCluster:
    """Worker processes emulating ``cluster``'s devices, driven from this process.

    dilation: the clock-stretch factor (>= 1); None picks ``auto_dilation`` for the devices'
        speeds with the ``concurrency`` fastest computing at once on ``host_cores`` cores (margin
        1.5, or 2.0 with ``calibrate``: a calibrated device runs at its speed x the host factor).
    concurrency: how many workers compute at once: 1 (one request at a time, the default), a
        number, or ``"all"`` (every device of the cluster: serving a plan, where a pipeline of
        S stages works on S requests and every replica at once). Too low a figure for the real
        concurrency makes steps overrun (counted per device in :meth:`stats`).
    timeout_s: the longest the driver waits for any single reply.
    connect_timeout_s: the longest the workers may take to start and join (s).
    absent: devices of ``cluster`` that are not up at the start (no worker): each can
        :meth:`join` later, as a new worker process that pairs up with every live one.
    calibrate: if True, every stage is calibrated right after it is loaded (a whole plan at once) (:meth:`calibrate`):
        its device then runs at the speed the cost model ``costmodel`` (default: the shipped
        reference profile) predicts, whatever this host's speed today. If False (the default) a
        device runs at its speed relative to this host's thread as it is now.
    """

    def __init__(self, cluster: Cluster, dilation: float | None = None, concurrency: int | str = 1,
                 host_cores: int = 2, timeout_s: float = 120.0, addr: str = "127.0.0.1",
                 port: int | None = None, spawn: bool = True, calibrate: bool = False,
                 costmodel=None, connect_timeout_s: float = CONNECT_TIMEOUT_S, absent=()):
        self.cluster = cluster
        self.absent = {cluster.device(d).name for d in absent}   # unknown names: a clear error
        if len(self.absent) >= len(cluster):
            raise ValueError("at least one device of the cluster must be up at the start")
        self.auto_calibrate = bool(calibrate)
        self.costmodel = costmodel
        self.calibration: dict[str, dict] = {}
        if concurrency == "all":
            concurrency = len(cluster)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number >= 1 or 'all', got {concurrency!r}")
        self.concurrency = concurrency
        # calibrated devices run at speed x host factor (seen up to 1.6): more headroom
        self._auto_dilation = dilation is None
        speeds = [max(d.prefill_speed, d.decode_speed) for d in cluster.devices]
        self.dilation = (auto_dilation(speeds, concurrency, host_cores,
                                       margin=2.0 if calibrate else 1.5)
                         if dilation is None else float(dilation))
        if not 1.0 <= self.dilation <= MAX_DILATION:  # also refuses NaN and inf
            raise ValueError(f"dilation must be a number from 1 to {MAX_DILATION:g} (the clock is sent to "
                             f"the workers in micro-units of an int64), got {dilation}")
        self.timeout_s = timeout_s
        # spawned workers meet through a file: only a multi-host run needs the store's port
        self.addr, self.spawn = addr, spawn
        self.port = None if spawn else (port or free_port())
        self.world = len(cluster) + 1             # every device's rank, up or not
        self.members = [0] + [i + 1 for i, d in enumerate(cluster.devices) if d.name not in self.absent]
        self.procs: list = []                     # the spawned workers, in the order started
        self._proc_of: dict[int, object] = {}     # rank -> its spawned worker
        self.mesh = Mesh()
        self.receivers: list[Receiver] = []       # one per pair with a worker
        self.store = None                         # a multi-host run's rendezvous TCPStore
        self._linked = False                      # paired up with the workers, not stopped
        self.dispatch = Dispatcher()
        self.outbox: Outbox | None = None         # one sender thread per worker (after start)
        self._done: queue.Queue = queue.Queue()   # replies to submitted forwards (poll)
        self._next_op = 1 << 40                   # batch / hand-off / free ids: far above requests
        self.t0 = time.monotonic()                # the start of device time (reset by start())
        self.ops = Operations(lambda rank: self.cluster.devices[rank - 1].name, self.device_s,
                              self._error)
        self.postbox = Postbox()                  # replies held until their delivery time
        self.placements: dict[str, StagePlacement] = {}
        self._stopped = False
        self.dead: dict[str, str] = {}             # device -> how its worker died (spawned workers)
        self.died_s: dict[str, float] = {}         # device -> device s when that was noticed
        self._last_scan = 0.0
        self._reported: set = set()               # deaths poll has reported
        self._tmp = None
        self.connect_timeout_s = float(connect_timeout_s)

    # ---- life cycle ----------------------------------------------------------------------------
    def rank(self, device: str) -> int:
        return self.cluster.names.index(self.cluster.device(device).name) + 1

    def start(self) -> "EmulatedCluster":
        _live.add(self)
        try:
            if self.spawn:  # a fresh interpreter per device: works from scripts, notebooks and tests
                self._tmp = tempfile.mkdtemp(prefix="e2llm-")
                for r in self.members[1:]:
                    argv = ["--rank", str(r), "--world", str(self.world), "--pair-dir", self._tmp,
                            "--connect-timeout", f"{self.connect_timeout_s:g}", "--local",
                            "--members", ",".join(map(str, self.members))]
                    self.procs.append(start_worker(argv, self.connect_timeout_s))
                    self._proc_of[r] = self.procs[-1]
            else:
                self.store = open_store(self.addr, self.port, self.members, self.connect_timeout_s)
                self.store.set("e2llm/driver", "1")
            where = "" if self.spawn else f" at {self.addr}:{self.port}"
            self._pair_with(self.members[1:], self._tmp,
                            f"the {len(self.members) - 1} device workers did not join{where}")
            self.outbox = Outbox(self.mesh, 0)
            self._linked = True
            self.t0 = time.monotonic()
            threading.Thread(target=self._postman, name="e2llm-postman", daemon=True).start()
            self._set_up(self.members[1:])
        except BaseException:
            self.stop()
            raise
        return self

    def _pair_with(self, ranks: list[int], pair_dir: str | None, failure: str) -> None:
        """Pair up with the worker of each of ``ranks``, side by side (bounded by
        ``connect_timeout_s``, see :meth:`_in_time`): a gloo group of two each, a route to it
        and a receiver that, if the pair breaks, marks that device dead (:meth:`_lost`)."""
        bind = "127.0.0.1" if self.spawn else os.environ.get("E2LLM_BIND_ADDR") or None

        def make():
            made, failed = side_by_side(
                {r: lambda r=r: make_group(0, 2, max(self.timeout_s, 30.0), bind=bind,
                                           connect_timeout_s=self.connect_timeout_s,
                                           **pair_meeting(0, r, pair_dir, self.store))[1]
                 for r in ranks}, self.connect_timeout_s + 5.0)
            if failed:
                first = min(failed)
                raise ConnectionError(f"rank(s) {', '.join(map(str, sorted(failed)))} did not pair "
                                      f"up ({failed[first]})")
            return made

        made = self._in_time(make, failure, ranks=ranks)
        for r in ranks:
            name = self.cluster.devices[r - 1].name
            self.mesh.add(made[r], [0, r])
            self.receivers.append(Receiver(made[r], self.postbox, world=self.world, members=[0, r],
                                           report=False, on_error=lambda e, n=name: self._lost(n, e)))

    def _set_up(self, ranks: list[int]) -> None:
        """Tell the workers of ``ranks`` their device, the clock and their links; wait for them."""
        for r in ranks:
            dev = self.cluster.devices[r - 1]
            self._send(r, Op.SETUP, a=int(round(self.dilation * 1e6)), b=int(time.monotonic() * 1e6),
                       c=int(self.spawn), payload=text_payload(dev.name))
            links = np.zeros((self.world, 2))
            for other in self.cluster.devices:
                link = self.cluster.link(dev.name, other.name)
                bw = link.bandwidth_mbps if np.isfinite(link.bandwidth_mbps) else 0.0
                links[self.rank(other.name)] = (bw, link.latency_ms)
            self._send(r, Op.LINKS, payload=torch.from_numpy(links))
        self._acks(Op.SETUP, len(ranks), ranks)
        self._acks(Op.LINKS, len(ranks), ranks)

    def join(self, device: str) -> None:
        """Bring up ``device``, absent until now, while the cluster runs: a new worker process
        (spawned here; with ``spawn=False`` started elsewhere with ``e2llm-lite worker --join``)
        pairs up with the driver and with every live worker, each in a gloo group of two (a
        group's members are fixed when it forms), and is set up like the others. Operations in
        flight go on meanwhile. It holds no layers yet (load a pipeline on it). Bounded by
        ``connect_timeout_s``; raises :class:`WorkerDied` if it does not come up."""
        name = self.cluster.device(device).name
        if not self._linked or self._stopped:
            raise E2LLMError("the emulated cluster is not running (start it, or use `with`)")
        if name not in self.absent:
            raise ValueError(f"device {name!r} is up already: only an absent device can join")
        r = self.rank(name)
        self._scan_dead()
        peers = [0] + [p for p in self.live_ranks]
        pair_dir = tempfile.mkdtemp(prefix="pairs-", dir=self._tmp) if self.spawn else None
        if self.spawn:
            argv = ["--rank", str(r), "--world", str(self.world), "--pair-dir", pair_dir,
                    "--peers", ",".join(map(str, peers)), "--connect-timeout",
                    f"{self.connect_timeout_s:g}", "--local"]
            self.procs.append(start_worker(argv, self.connect_timeout_s))
            self._proc_of[r] = self.procs[-1]
        else:
            self.store.set(f"e2llm/join/{r}/peers", ",".join(map(str, peers)))
        for p in peers[1:]:   # they pair up on threads of their own, serving meanwhile
            self._send(p, Op.PEER, a=r, payload=text_payload(pair_dir or " "))
        try:
            self._pair_with([r], pair_dir, f"device {name!r} did not join")
        except BaseException:
            self._abandon(r)
            raise
        self.absent.discard(name)
        try:
            self._paired(r, peers[1:])
            self._set_up([r])
        except BaseException:
            self._abandon(r)
            raise

    def _paired(self, joiner: int, peers: list[int]) -> None:
        """Wait for each of ``peers`` to ACK its pair with ``joiner``; a peer that dies meanwhile
        is no longer waited for (the joiner is: it dying raises WorkerDied)."""
        q = self.dispatch.acks(Op.PEER)
        pending = set(peers)
        deadline = time.monotonic() + self.connect_timeout_s + 5.0
        while pending:
            self._scan_dead()
            pending = {p for p in pending if self.cluster.devices[p - 1].name not in self.dead}
            if not pending:
                break
            if time.monotonic() > deadline:
                raise WorkerDied(f"device(s) {sorted(pending)} did not pair up with the device "
                                 f"that joins within {self.connect_timeout_s:g} s")
            try:
                m = self._take(q, timeout_s=0.5, ranks=[joiner])
            except WorkerDied:
                if self.cluster.devices[joiner - 1].name in self.dead:
                    raise
                continue                     # a quiet half second
            if m.op == Op.ERROR:
                self._raise(m)
            pending.discard(m.src)

    def _abandon(self, rank: int) -> None:
        """A device that failed to join: its worker (if spawned) is stopped and it is down."""
        name = self.cluster.devices[rank - 1].name
        proc = self._proc_of.get(rank)
        if proc is not None and proc.poll() is None:
            proc.kill()
            _wait(proc, 1.0)
        self.absent.add(name)

    def _lost(self, name: str, error: BaseException) -> None:
        """The pair with device ``name`` broke: its worker is gone (a multi-host one is found
        this way; a spawned one by its exit too, which names the exit code: waited for briefly)."""
        proc = self._proc_of.get(self.rank(name))
        if proc is not None:
            _wait(proc, 0.5)
        self._scan_dead()
        if name not in self.dead and not self._stopped:
            self.dead[name] = f"the worker of device {name!r} lost its connection ({str(error)[:80]})"
            self.died_s[name] = self.now_s()

    def _in_time(self, make, failure: str, ranks=None):
        """Form a group (``make()``) on a helper thread, so that Ctrl-C reaches this one at once
        and a worker (of ``ranks``) that dies while starting is noticed; bounded by
        ``connect_timeout_s``, else WorkerDied(``failure`` ...)."""
        box: dict = {}

        def join():
            try:
                box["group"] = make()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                box["error"] = e

        t = threading.Thread(target=join, name="e2llm-join", daemon=True)
        t.start()
        deadline = time.monotonic() + self.connect_timeout_s + 5.0
        while t.is_alive():
            t.join(0.2)
            _check_interrupted()
            self._check_alive(ranks)
            if time.monotonic() > deadline:
                break
        if "group" in box:
            return box["group"]
        why = f": {str(box['error']).splitlines()[0][:160]}" if "error" in box else ""
        box.clear()   # let go of the half-made group (a TCPStore listens while it lives)
        raise WorkerDied(f"{failure} within {self.connect_timeout_s:g} s{why}")

    def __enter__(self) -> "EmulatedCluster":
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        self.stop(timeout_s=1.0 if exc_type else 2.0)   # after an error or Ctrl-C: no dawdling

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop every worker: a STOP message and up to ``timeout_s`` for them to exit (none if a
        worker died: the group is broken), then terminate, then kill. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _live.discard(self)
        # the workers still alive are asked to stop (each pair's receiver ends on its echo)
        self._scan_dead()
        live = self.live_ranks if self._linked else []
        for r in live:
            self._post(r, Op.STOP, {"timeout_s": 1.0})   # after what is queued
        deadline = time.monotonic() + timeout_s
        for p in self.procs if live else []:   # never wait long on one
            _wait(p, deadline - time.monotonic())
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                _wait(p, 1.0)
            if p.poll() is None:
                p.kill()
                _wait(p, 1.0)
        for rc in self.receivers:  # end on the STOP echoes; never left blocked in gloo
            rc.thread.join(1.0)
        if self.outbox is not None:   # senders done before the groups go
            self.outbox.close(2.0 if live and not self.dead else 0.5)
        self.mesh.shutdown()
        # let go of every group and the store: a multi-host driver's TCPStore listens on every
        # interface for as long as anything holds it
        self.store, self._linked = None, False
        self.mesh, self.receivers = Mesh(), []
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # ---- messaging -----------------------------------------------------------------------------
    def _send(self, rank: int, op: Op, **kw) -> None:
        """Hand a message to ``rank``'s sender thread and return at once: a gloo send waits until
        the worker takes the message, and a busy worker takes it only between steps. One thread
        per worker keeps that worker's messages in order (a header and its payload together);
        a worker that died is noticed by whoever waits for its reply."""
        if not self._linked or self._stopped:
            raise E2LLMError("the emulated cluster is not running (start it, or use `with`)")
        self._post(rank, op, kw)

    def _post(self, rank: int, op: Op, kw: dict) -> None:
        self.outbox.put(rank, op, **kw)

    @property
    def bytes_sent(self) -> int:
        """Bytes the driver put on the wire."""
        return self.outbox.bytes_sent if self.outbox else 0

    def _postman(self) -> None:
        """Hand each reply to the dispatcher at its delivery time (a token coming back over the
        emulated link from the last stage is held until it has crossed it); ends with the
        connection."""
        while not self._stopped:
            try:
                msg = self.postbox.get(0.25)
            except queue.Empty:
                continue
            msg.arrived = time.monotonic()
            self.dispatch.route(msg)

    def kill(self, device: str) -> None:
        """Fault injection: SIGKILL ``device``'s worker (a spawned one), as if the device lost
        power. Nothing else is told: the death is found like any other (:meth:`poll`)."""
        name = self.cluster.device(device).name
        if not self.spawn:
            raise E2LLMError("kill() needs workers this driver started (spawn=True)")
        proc = self._proc_of.get(self.rank(name))
        if proc is None:
            raise ValueError(f"device {name!r} has no worker (it has not joined)")
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)

    def _scan_dead(self) -> None:
        """Record in :attr:`dead` every (spawned) worker process that has exited, with the
        device time it was noticed (:attr:`died_s`)."""
        for r, p in list(self._proc_of.items()):
            name = self.cluster.devices[r - 1].name
            if name not in self.dead and p.poll() is not None:
                self.dead[name] = (f"the worker of device {name!r} (rank {r}) died "
                                   f"(exit code {p.returncode})")
                self.died_s[name] = self.now_s()

    def _check_alive(self, ranks=None) -> None:
        """Raise WorkerDied if the worker of any of ``ranks`` (default: every rank) is dead."""
        self._scan_dead()
        for r in self.up_ranks if ranks is None else ranks:
            name = self.cluster.devices[r - 1].name
            if name in self.dead:
                raise WorkerDied(self.dead[name])

    @property
    def up_ranks(self) -> list[int]:
        """The ranks of the devices that have a worker (up at the start, or joined since)."""
        return [r for r in range(1, self.world) if self.cluster.devices[r - 1].name not in self.absent]

    @property
    def live_ranks(self) -> list[int]:
        """The ranks whose worker is up and not known to be dead."""
        return [r for r in self.up_ranks if self.cluster.devices[r - 1].name not in self.dead]

    def _take(self, q: queue.Queue, timeout_s: float | None = None, ranks=None):
        """The next message of ``q`` (a :class:`Dispatcher` queue); a worker of ``ranks`` (default:
        any) that died (or whose pair broke) or ``timeout_s`` (default: the cluster's) raises
        WorkerDied instead."""
        if self._stopped or not self._linked:
            raise E2LLMError("the emulated cluster is not running (start it, or use `with`)")
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            try:
                msg = q.get(timeout=0.25)
            except queue.Empty:
                _check_interrupted()
                self._check_alive(ranks)
                if time.monotonic() > deadline:
                    raise WorkerDied(f"no reply from the workers within {timeout_s or self.timeout_s:.0f} s")
                continue
            return msg

    def _raise(self, msg) -> None:
        raise self._error(msg)

    def _error(self, msg, ranks=None) -> BaseException:
        """The exception a worker's ERROR message stands for (a WorkerDied if a worker of the
        operation's ``ranks`` (default: any) is dead: an error is often the echo of another
        worker's death)."""
        time.sleep(0.05)
        try:
            self._check_alive(ranks or None)
        except WorkerDied as e:
            return e
        name = self.cluster.devices[msg.src - 1].name
        if msg.a == ErrorKind.DEVICE_OOM:
            return DeviceOOM(msg.text)
        if msg.a == ErrorKind.VALUE:
            return ValueError(f"device {name!r}: {msg.text}")
        return E2LLMError(f"device {name!r} failed: {msg.text}")

    # ---- asynchronous operations ---------------------------------------------------------------
    def now_s(self) -> float:
        """Device seconds since the cluster started (the clock of every completion)."""
        return self.device_s(time.monotonic() * 1e6)

    def device_s(self, driver_us: float) -> float:
        """A time on the driver's clock (us of ``time.monotonic``) in device s since the start."""
        return (driver_us / 1e6 - self.t0) / self.dilation

    def new_op(self) -> int:
        """A fresh operation id (far above any request id)."""
        opid = self._next_op
        self._next_op += 1
        return opid

    def _register(self, opid: int, kind: str, pipeline: str, requests, ranks=(), **kw) -> None:
        """Track operation ``opid`` (involving the workers ``ranks``) before its first message
        leaves (its replies go to poll); WorkerDied at once if one of them is known dead."""
        if self._stopped or not self._linked:
            raise E2LLMError("the emulated cluster is not running (start it, or use `with`)")
        if ranks:
            self._check_alive(ranks)
        self.dispatch.expect(opid, self._done)
        self.ops.add(opid, kind, pipeline, requests, ranks=ranks, **kw)

    def _unregister(self, opid: int) -> None:
        self.ops.ops.pop(opid, None)
        self.dispatch.done(opid)

    #: How often poll looks for workers that died while replies keep coming (wall s).
    SCAN_EVERY_S = 0.2

    def poll(self, timeout_s: float | None = None) -> list[Completion]:
        """Wait up to ``timeout_s`` (default: the cluster's timeout) for submitted operations
        (:meth:`Pipeline.submit`, :meth:`Pipeline.submit_decode`, :meth:`submit_move_kv`,
        :meth:`submit_free`, :meth:`submit_load`) to end; returns every completion available
        then (possibly none after the timeout).

        A worker that dies (spawned workers: its process is checked every ``SCAN_EVERY_S``) is
        reported once by a completion of kind ``"died"`` naming the device, followed by a failed
        completion (WorkerDied naming the device and the requests) for every outstanding
        operation that involves it; the other workers go on serving (every two processes talk
        over a pair of their own: a multi-host worker's broken pair is found the same way).
        Nothing is waited on forever."""
        out: list[Completion] = []
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while not out:
            try:
                msg = self._done.get(timeout=max(0.0, min(0.25, deadline - time.monotonic())))
            except queue.Empty:
                _check_interrupted()
                out += self._deaths()
                out += self._overdue()
                if out or time.monotonic() >= deadline:
                    return out
                continue
            while True:
                done = self._collect(msg)
                if done is not None:
                    out.append(done)
                try:
                    msg = self._done.get_nowait()
                except queue.Empty:
                    break
            out += self._overdue()   # also while messages keep coming
            # a death is reported before any failure it caused (an ERROR echoing it may be first)
            if time.monotonic() - self._last_scan >= self.SCAN_EVERY_S or any(
                    isinstance(c.error, WorkerDied) for c in out):
                out = self._deaths() + out
        return out

    def _deaths(self) -> list[Completion]:
        """A "died" completion for each worker found dead and not reported yet, each followed by
        the failures of the operations that involve it."""
        self._last_scan = time.monotonic()
        self._scan_dead()
        out = []
        for name in [n for n in self.dead if n not in self._reported]:
            self._reported.add(name)
            rank = self.rank(name)
            err = WorkerDied(self.dead[name])
            out.append(Completion(-rank, name, kind="died", error=err, end_s=self.died_s[name]))
            for c in self.ops.fail_all(err, rank):
                self.dispatch.done(c.request)
                out.append(c)
        return out

    def _overdue(self) -> list[Completion]:
        done = self.ops.overdue()
        for c in done:
            self.dispatch.done(c.request)
        return done

    def _collect(self, msg) -> Completion | None:
        opid = msg.e or msg.request
        done = self.ops.collect(opid, msg)
        if done is not None:
            self.dispatch.done(opid)
        return done

    def wait(self, opid: int, timeout_s: float | None = None) -> Completion:
        """Wait for operation ``opid`` alone (no other operation may be outstanding: their
        completions would have nowhere to go)."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            for c in self.poll(max(0.0, deadline - time.monotonic())):
                if c.request == opid:
                    return c
                raise E2LLMError(f"waiting for operation {opid}, met a completion of {c.request}: "
                                 "use poll() when other operations are in flight")
            if time.monotonic() >= deadline:
                self._unregister(opid)
                raise WorkerDied(f"no reply from the workers within {self.timeout_s:.0f} s")

    @property
    def outstanding(self) -> list[int]:
        """Operations submitted and not polled yet (a forward's id is its request)."""
        return list(self.ops.ops)

    def submit_move_kv(self, request: int, src: "Pipeline", dst: "Pipeline") -> int:
        """Start handing a request's KV cache from ``src``'s devices to ``dst``'s and return its
        operation id at once. Each layer's KV goes to the device that holds that layer in ``dst``
        (whose split may differ); each source device sends its pieces over its own links while
        it goes on computing. The :class:`Completion` (kind ``"kv"``, ``bytes`` moved) comes
        from :meth:`poll` when every piece is stored. The source keeps its copy (free it with
        :meth:`submit_free`)."""
        pieces = kv_pieces([(r, s.start, s.end) for r, s in zip(src.ranks, src.stages)],
                           [(r, d.start, d.end) for r, d in zip(dst.ranks, dst.stages)])
        opid = self.new_op()
        self._register(opid, "kv", f"{src.name}->{dst.name}", [request], expect=len(pieces),
                       ranks=set(src.ranks) | set(dst.ranks))
        for s_rank, d_rank, a, b in pieces:
            self._send(s_rank, Op.KV_SEND, request=request, a=a, b=b, c=d_rank, e=opid)
        return opid

    def submit_free(self, request: int, pipeline: "Pipeline") -> int:
        """Start freeing a request's KV on ``pipeline``'s devices; returns the operation id (its
        completion, kind ``"free"``, comes from :meth:`poll`)."""
        opid = self.new_op()
        self._register(opid, "free", pipeline.name, [request], expect=len(pipeline.ranks),
                       ranks=pipeline.ranks)
        for r in pipeline.ranks:
            self._send(r, Op.FREE, request=request, e=opid)
        return opid

    def _acks(self, op: Op, n: int, ranks=None) -> list:
        """Collect ``n`` replies from ``ranks`` (default: any; all of them, so none is left
        queued), then raise the first error in rank order, if any."""
        q = self.dispatch.acks(op)
        got = [self._take(q, ranks=ranks) for _ in range(n)]
        errors = sorted((m for m in got if m.op == Op.ERROR), key=lambda m: m.src)
        if errors:
            self._raise(errors[0])
        for m in got:
            if m.op != Op.ACK:
                raise E2LLMError(f"unexpected {m.op.name} from rank {m.src} while waiting for acks")
        return got

    # ---- placing and running -------------------------------------------------------------------
    def _placing(self, stages):
        """Check a replica's placement: (stages, device names, ranks)."""
        stages = [StagePlacement(*s) if not isinstance(s, StagePlacement) else s for s in stages]
        names = [self.cluster.device(s.device).name for s in stages]
        ANATOMY.check_split([(n, s.start, s.end) for n, s in zip(names, stages)])
        busy = [n for n in names if n in self.placements]
        if busy:
            raise ValueError(f"devices {busy} already hold layers of another pipeline")
        return stages, names, [self.rank(n) for n in names]

    def _place(self, names, stages) -> None:
        """Record that ``names`` hold ``stages`` (uncalibrated from now)."""
        for n, s in zip(names, stages):
            self.placements[n] = s
            self.calibration.pop(n, None)

    def _send_loads(self, stages, names, ranks, opid: int = 0) -> None:
        for i, s in enumerate(stages):
            dev = self.cluster.device(names[i])
            nxt = ranks[i + 1] if i + 1 < len(ranks) else 0
            spec = torch.tensor([dev.prefill_speed, dev.decode_speed, dev.memory_mib * MIB],
                                dtype=torch.float64)
            self._send(ranks[i], Op.LOAD, a=s.start, b=s.end, c=nxt, d=ranks[0], e=opid, payload=spec)

    def pipeline(self, stages, name: str = "pipeline", calibrate: bool | None = None) -> "Pipeline":
        """Load a replica: ``stages`` = [(device, start, end), ...] in pipeline order; its
        devices are calibrated if ``calibrate`` (default: as the cluster was started)."""
        stages, names, ranks = self._placing(stages)
        self._send_loads(stages, names, ranks)
        self._acks(Op.LOAD, len(stages), ranks)  # a refused LOAD leaves that worker without a stage
        self._place(names, stages)
        if self.auto_calibrate if calibrate is None else calibrate:
            self.calibrate(names)
        return Pipeline(self, stages, ranks, name)

    def submit_load(self, stages, name: str = "pipeline") -> "Pipeline":
        """Start loading a replica (as :meth:`pipeline`, uncalibrated) and return its
        :class:`Pipeline` at once; its devices count as taken from now. The completion (kind
        ``"load"``, operation id ``pipeline.load_op``) comes from :meth:`poll` when every stage
        has its layers; if it failed, call ``pipeline.release()``. Each worker loads after what
        it has already been sent (the other replicas go on serving meanwhile)."""
        stages, names, ranks = self._placing(stages)
        opid = self.new_op()
        self._register(opid, "load", name, [], expect=len(stages), ranks=ranks)
        self._place(names, stages)
        pipe = Pipeline(self, stages, ranks, name)
        pipe.load_op = opid
        try:
            self._send_loads(stages, names, ranks, opid)
        except BaseException:
            self._unregister(opid)
            pipe.release()
            raise
        return pipe

    def load_plan(self, plan) -> dict[str, "Pipeline"]:
        """Put every replica of ``plan`` (a :class:`~e2llm_lite.planning.Plan`; checked against
        this cluster first, so a plan that does not match is one ConfigError before anything
        loads) on its devices. Returns replica name -> :class:`Pipeline`, each knowing its
        ``role`` and decode ``batch``. Warns if the cluster was started for fewer workers
        computing at once than the plan has devices (its steps may overrun)."""
        plan.validate(self.cluster)
        used = {d for r in plan.replicas for d, _, _ in r.stages}
        if len(used) > self.concurrency and self._auto_dilation:
            warnings.warn(f"the plan keeps {len(used)} devices busy at once but the dilation "
                          f"{self.dilation:g} was picked for {self.concurrency}: steps may overrun "
                          "(start the cluster with concurrency='all')", RuntimeWarning, stacklevel=2)
        placed = [(r, *self._placing(list(r.stages))) for r in plan.replicas]
        for _, stages, names, ranks in placed:   # every device loads at once
            self._send_loads(stages, names, ranks)
        self._acks(Op.LOAD, sum(len(p[1]) for p in placed), [rk for p in placed for rk in p[3]])
        out = {}
        for r, stages, names, ranks in placed:
            self._place(names, stages)
            out[r.name] = Pipeline(self, stages, ranks, r.name, role=r.role, batch=r.batch)
        if self.auto_calibrate:            # all devices at once: prefill probes run side by side
            self.calibrate(sorted(used, key=self.rank))
        return out

    def calibrate(self, devices=None, tokens=CALIBRATION_TOKENS, batches=CALIBRATION_BATCHES,
                  repeats: int = 3, prefill_idle_ms: float = 1000.0,
                  decode_idle_ms: float = 0.0, contexts=CALIBRATION_CONTEXTS) -> dict[str, dict]:
        """Measure how fast this host runs each placed stage now, against the cost model.

        Each worker times its own stage ``repeats`` times on each probe -- a prompt of each
        length in ``tokens``, a decode step of each batch size in ``batches`` at each context in
        ``contexts`` -- and divides the medians by the cost model's host predictions: a factor
        > 1 means this host is slower now than the profile. From then on the device runs at
        ``speed * factor``, the factor interpolated between the probe sizes (and contexts)
        (:class:`~e2llm_lite.runtime.throttle.HostFactor`), so its device times are the
        profile's (the planner's and simulator's) up to the cost model's error between the
        probes and the host's step-to-step noise. A probe whose factor is a spike off the line
        through its neighbours' (more than ``OUTLIER_RATIO`` = 1.5x either way,
        :func:`~e2llm_lite.runtime.throttle.outlying`: a slow spell of the host while it ran)
        is run once more on every device, and that measurement is kept.

        Each probe runs after an idle gap like the steps it stands for, because a host runs a
        step slower after it idled (on the test host a 16-token prefill took 106 ms after 0.1 s
        idle, 121 ms after 2 s; a decode step 55 and 73 ms): an emulated device sleeps after
        every step until ``dilation * cpu / speed`` has passed -- the gap is at least
        ``cpu * (dilation / speed - 1)`` -- and a PREFILL device also idles between prompts (at
        least ``prefill_idle_ms``; decode: ``decode_idle_ms``). All devices run each probe at
        once, their starts staggered across the gap, as they share the host's cores in a run.
        About ``repeats * sum over probes of (gap + step)``: ~26 s with the defaults (19 s with the
        decode probes at one context; a 3-device pipeline, dilation 2.25, 2026-12-03).

        Returns (and keeps in ``self.calibration``) per device and phase: ``points`` (each probe's
        size -- ``tokens``, or ``batch`` and ``context`` --, measured and predicted host ms,
        factor, ``reprobed``) and ``factor`` (their geometric mean).
        """
        if self.costmodel is None:
            self.costmodel = CostModel.load()
        cm = self.costmodel
        tokens = [tokens] if isinstance(tokens, int) else list(tokens)
        batches = [batches] if isinstance(batches, int) else list(batches)
        contexts = [contexts] if isinstance(contexts, int) else list(contexts)
        names = list(self.placements) if devices is None else [
            self.cluster.device(d).name for d in devices]
        for n in names:
            if n not in self.placements:
                raise ValueError(f"device {n!r} holds no layers: place a pipeline before calibrating")
        if not tokens or not batches or not contexts or not all(
                isinstance(t, int) and t >= 1 for t in tokens + batches + contexts) \
                or repeats < 1 or not prefill_idle_ms >= 0 or not decode_idle_ms >= 0:
            raise ValueError("calibrate needs tokens, batches and contexts (ints >= 1), "
                             "repeats >= 1 and idle gaps >= 0")
        out = {n: {"prefill": {"points": []}, "decode": {"points": []}} for n in names}

        def probe(phase, size, context=0):
            """Run one probe on every device at once (staggered), collect the results."""
            batch = size if phase == "decode" else 0
            kw = dict(batch=size, context=context) if batch else dict(tokens=size)
            preds, gaps = {}, {}
            for n in names:
                st, dev = self.placements[n], self.cluster.device(n)
                preds[n] = cm.host_stage_ms(st.start, st.end, phase, **kw)
                speed = getattr(dev, f"{phase}_speed")
                gaps[n] = max(prefill_idle_ms if phase == "prefill" else decode_idle_ms,
                              preds[n] * max(0.0, self.dilation / speed - 1))
            gap = max(gaps.values())
            for k, n in enumerate(names):
                self._send(self.rank(n), Op.CALIBRATE, a=context if batch else size, b=repeats,
                           c=int(round(gaps[n])), d=batch, payload=torch.tensor(
                               [preds[n], k * gap / len(names)], dtype=torch.float64))
            for msg in self._acks(Op.CALIBRATE, len(names), [self.rank(n) for n in names]):
                n = self.cluster.devices[msg.src - 1].name
                got = msg.payload.tolist()
                size_of = {"batch": size, "context": context} if batch else {"tokens": size}
                found[n][(phase, size, context)] = {**size_of, "host_ms": got[0],
                                                    "predicted_ms": preds[n], "factor": got[1]}

        found = {n: {} for n in names}
        for t in tokens:
            probe("prefill", t)
        for c in contexts:
            for b in batches:
                probe("decode", b, c)
        again = set()                         # a spike off its neighbours' line: measured again
        for n in names:
            for phase, c in [("prefill", 0)] + [("decode", c) for c in contexts]:
                row = sorted((k[1], p["factor"]) for k, p in found[n].items()
                             if k[0] == phase and k[2] == c)
                again.update((phase, row[i][0], c) for i in outlying(row))
        for phase, x, c in sorted(again):     # the new measurement replaces the old, whatever it says
            probe(phase, x, c)
        for n in names:
            for key, point in found[n].items():
                out[n][key[0]]["points"].append({**point, "reprobed": key in again})
        for n in names:
            dev = self.cluster.device(n)
            for phase, c in out[n].items():
                c["points"].sort(key=lambda p: (p.get("context", 0), p.get("tokens", p.get("batch"))))
                c["factor"] = math.exp(sum(math.log(p["factor"]) for p in c["points"])
                                       / len(c["points"]))
                speed = getattr(dev, f"{phase}_speed") * max(p["factor"] for p in c["points"])
                if speed > self.dilation:
                    warnings.warn(f"after calibration device {n!r} runs {phase} at {speed:.2f}x a "
                                  f"host thread, more than the dilation {self.dilation:g}: its steps "
                                  "will overrun (use a larger dilation)", RuntimeWarning, stacklevel=2)
            self.calibration[n] = out[n]
        return {n: self.calibration[n] for n in names}

    def free(self, request: int | None = None, reset_stats: bool = False) -> None:
        """Free a request's KV on every device whose worker is alive (all requests if None)."""
        ranks = self.live_ranks
        for r in ranks:
            self._send(r, Op.FREE, request=-1 if request is None else request, a=int(reset_stats))
        self._acks(Op.FREE, len(ranks), ranks)

    def move_kv(self, request: int, src: "Pipeline", dst: "Pipeline", free_src: bool = True) -> int:
        """Hand a request's KV cache from ``src``'s devices to ``dst``'s, layer by layer, and
        wait for it (:meth:`submit_move_kv`, blocking); returns the bytes moved."""
        done = self.wait(self.submit_move_kv(request, src, dst))
        if done.error is not None:
            raise done.error
        if free_src:
            for r in src.ranks:
                self._send(r, Op.FREE, request=request)
            self._acks(Op.FREE, len(src.ranks), src.ranks)
        return done.bytes

    def stats(self) -> dict[str, dict]:
        """Per-device counters: compute (CPU s), sleep (s), steps, overruns, bytes, memory (the
        devices whose worker is alive)."""
        ranks = self.live_ranks
        for r in ranks:
            self._send(r, Op.STATS)
        out = {}
        for msg in self._acks(Op.STATS, len(ranks), ranks):
            name = self.cluster.devices[msg.src - 1].name
            out[name] = dict(zip(STATS_COLS, msg.payload.tolist()))
        return {n: out[n] for n in self.cluster.names if n in out}

    def report(self) -> dict[str, dict]:
        """Per-device summary in device time: busy ms per phase, link ms, overruns, memory MiB."""
        stats, rows = self.stats(), self.timeline()
        out = {}
        for name, st in stats.items():
            mine = [r for r in rows if r["device"] == name]
            by_phase = {ph: sum(r["target_ms"] for r in mine if r["phase"] == ph)
                        for ph in ("prefill", "decode")}
            out[name] = {"layers": ([self.placements[name].start, self.placements[name].end]
                                    if name in self.placements else None),
                         "steps": int(st["steps"]), "prefill_ms": by_phase["prefill"],
                         "decode_ms": by_phase["decode"],
                         "link_ms": sum(r["link_ms"] for r in mine),
                         "host_cpu_ms": st["compute_s"] * 1e3, "overruns": int(st["overruns"]),
                         "host_factor": ({ph: c["factor"] for ph, c in self.calibration[name].items()}
                                         if name in self.calibration else None),
                         "peak_mib": st["peak_bytes"] / MIB,
                         "budget_mib": self.cluster.device(name).memory_mib,
                         "bytes_sent": int(st["bytes_sent"])}
        return out

    def timeline(self) -> list[dict]:
        """Every timed step on every device, in device ms from the earliest step.

        Each row: device, request, phase, tokens, start_ms, end_ms (device time), cpu_ms (host
        compute), target_ms (device time), overrun, link_ms (device time of the outgoing link),
        context (decode: the mean tokens cached per sequence before the step; prefill 0).
        """
        ranks = self.live_ranks
        for r in ranks:
            self._send(r, Op.TRACE)
        rows = []
        for msg in self._acks(Op.TRACE, len(ranks), ranks):
            name = self.cluster.devices[msg.src - 1].name
            for row in msg.payload.tolist():
                rows.append({"device": name, **dict(zip(TRACE_COLS, row))})
        if not rows:
            return []
        t0 = min(r["start"] for r in rows)
        D = self.dilation
        out = []
        for r in sorted(rows, key=lambda r: r["start"]):
            out.append({"device": r["device"], "request": int(r["request"]),
                        "phase": ("prefill", "decode")[int(r["phase"])], "tokens": int(r["tokens"]),
                        "start_ms": (r["start"] - t0) * 1e3 / D, "end_ms": (r["end"] - t0) * 1e3 / D,
                        "cpu_ms": r["cpu_s"] * 1e3, "target_ms": r["target_s"] * 1e3 / D,
                        "overrun": bool(r["overrun"]), "link_ms": r["link_s"] * 1e3,
                        "context": r["context"]})
        return out


# Every running cluster is stopped at interpreter exit, whatever happened before.
_live: "weakref.WeakSet[EmulatedCluster]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for rt in list(_live):
        rt.stop(timeout_s=1.0)
