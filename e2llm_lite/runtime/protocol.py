"""Wire format between the driver (rank 0) and device workers (ranks 1..N) over gloo.

Every message is a fixed-layout int64 **header** of ``HEADER_LEN`` numbers, optionally followed
by one **payload** tensor whose dtype and shape the header states. Nothing is pickled: a worker
only ever receives plain numbers and arrays, so it is safe to listen on a network. A payload of
at most ``INLINE_PAYLOAD_BYTES`` (a decode step's hidden state, a token, an ACK) travels in the
same gloo message as its header (one send, as bytes; the receiver posts a buffer big enough for
any such message); a larger one follows its header as a second message. Both sides tell the two
apart from the header alone (its dtype and shape give the payload's size).

Header fields (int64): ``op, src, request, a, b, c, d, e, t, dtype, ndim, shape[0..6]``. The
meaning of ``a..d`` depends on the op (see the ``Op`` docs); ``e`` is the id of the asynchronous
operation a message belongs to (0: none; a forward's is its request); ``t`` is when the message is
to be **delivered**, in microseconds of the driver's ``time.monotonic`` clock (0: on arrival) — an
emulated link stamps it and the receiver holds the message until then (:class:`Postbox`), so the
real transport's time is inside the emulated delay, not added to it. Text (error messages)
travels as a uint8 payload.

Point-to-point gloo work on the CPU completes only inside ``wait()``, and ``wait(timeout)``
breaks the connection when it expires, so a receiver blocks in ``wait()`` on a background thread
and hands messages to the driver's dispatcher, whose queues every reader waits on with a timeout.
"""

from __future__ import annotations

import datetime
import enum
import heapq
import os
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from .limits import CONNECT_TIMEOUT_S, LISTEN_TIMEOUT_S, MAX_PAYLOAD_ELEMENTS

#: Columns of a worker's step trace (one row per step; times in wall s, link in device s).
TRACE_COLS = ("request", "phase", "tokens", "start", "end", "cpu_s", "target_s", "overrun",
              "link_s", "context")
#: Columns of a worker's counters (``Op.STATS``; s, bytes, counts).
STATS_COLS = ("compute_s", "sleep_s", "steps", "overruns", "bytes_sent", "bytes_received",
              "peak_bytes", "weight_bytes", "kv_bytes", "kv_bytes_real", "link_s", "dilation",
              "weights_loaded")

HEADER_LEN = 18
MAX_DIMS = 7
TAG = 0
#: The largest payload that travels in one gloo message with its header (bytes). Two messages
#: cost a second hand-shake and, on the receiving side, a second trip through Python: on this
#: host a 2.3 KB hidden state went round two processes in 0.90 ms as header + payload and in
#: 0.47 ms as one message (receiver threads on both sides).
INLINE_PAYLOAD_BYTES = 64 * 1024
_INLINE_BUFFER = HEADER_LEN * 8 + INLINE_PAYLOAD_BYTES

_DTYPES = {0: None, 1: torch.int64, 2: torch.float32, 3: torch.uint8, 4: torch.float64}
_CODES = {v: k for k, v in _DTYPES.items() if v is not None}


class Op(enum.IntEnum):
    """Message kinds. ``a, b, c, d`` are the op's integer arguments."""

    SETUP = 1      # driver->worker  a=dilation in micro-units (1e-6); payload uint8 device name
    LOAD = 2       # driver->worker  a=start b=end c=next rank (0: driver) d=home rank; payload float64 spec
    FWD = 3        # ->worker        a=tokens b=1: return logits d=phase (0 prefill, 1 decode); payload ids [1,T] or hidden [1,T,576]
    RESULT = 4     # last->driver    a=argmax token; payload float32 logits [vocab] if asked for
    KV_SEND = 5    # driver->worker  a=start b=end c=destination rank: export and send that KV
    KV_PUT = 6     # worker->worker  a=start b=end c=pos; payload float32 KV [layers,2,heads,T,64]
    FREE = 7       # driver->worker  free the request's KV (request -1: all)
    STATS = 8      # driver->worker; the reply carries float64 stats
    TRACE = 9      # driver->worker; the reply carries float64 [steps, TRACE_COLS]
    STOP = 10      # driver->worker: exit; worker->driver: the echo that ends the driver's receiver
    ACK = 11       # worker->driver  a=op acknowledged; payload per op (may be empty)
    ERROR = 12     # worker->driver  a=error kind (ErrorKind) b=the op that failed (0: none); payload uint8 utf-8 message
    LINKS = 13     # driver->worker  payload float64 [world, 2]: (Mbit/s, ms) from this worker to each rank
    CALIBRATE = 14  # driver->worker a=probe tokens b=repeats c=idle gap ms; payload float64
                    # [predicted prefill ms, predicted decode ms]; the ACK carries float64
                    # [measured prefill ms, measured decode ms, prefill factor, decode factor]
    BATCH = 15     # ->worker  request=batch id; payload int64 [B] request ids of the next FWD with
                   # c=1 (a batched decode step: ids [B, 1] or hidden [B, 1, 576]; its RESULT has
                   # c=1 and an int64 [B] payload of greedy tokens, or b=1: float32 [B, vocab] logits)
    STEP = 16      # worker->driver  one timed step of operation ``e``: a=start b=end (us, driver
                   # clock) c=bytes sent on d=phase (0 prefill, 1 decode) + 2 if it overran
    PEER = 17      # driver->worker  a=the rank of a device that joins: pair up with it (payload
                   # uint8: the folder of the pairs' store files, or " ": the driver's store); ACKed once paired


class ErrorKind(enum.IntEnum):
    OTHER = 0
    DEVICE_OOM = 1
    VALUE = 2


@dataclass
class Message:
    op: Op
    src: int
    request: int = 0
    a: int = 0
    b: int = 0
    c: int = 0
    d: int = 0
    e: int = 0
    t: int = 0
    payload: torch.Tensor | None = None
    arrived: float = 0.0    # set by the receiving side: when it was delivered (monotonic s)

    @property
    def text(self) -> str:
        return bytes(self.payload.numpy()).decode("utf-8", "replace") if self.payload is not None else ""



def make_group(rank: int, world: int, timeout_s: float, *, store_file: str | None = None,
               bind: str | None = "127.0.0.1", connect_timeout_s: float = CONNECT_TIMEOUT_S,
               store=None, prefix: str = ""):
    """Join the gloo group of ``world`` ranks (``rank`` and ``world`` are the group's own: every
    group of the runtime is a pair, see :class:`Mesh`); returns (store, process group).

    Rendezvous: with ``store_file`` (one machine) through a FileStore in that file — no socket
    listens for it; else through ``store`` (the driver's TCPStore of a multi-host run, see
    :func:`open_store`) under ``prefix``. ``bind``: the address gloo's own sockets listen on
    (loopback by default; None: torch's choice, the address the host name resolves to).
    ``timeout_s`` bounds every message wait of the group; ``connect_timeout_s`` the rendezvous.
    """
    import torch.distributed as dist

    connect = datetime.timedelta(seconds=connect_timeout_s)
    if store_file:
        store = dist.FileStore(store_file, world)
        store.set_timeout(connect)
    elif store is None:
        raise ValueError("make_group needs a store_file or a store to meet through")
    elif prefix:
        store = dist.PrefixStore(prefix, store)
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = datetime.timedelta(seconds=timeout_s)
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=bind) if bind
                     else dist.ProcessGroupGloo.create_default_device()]
    try:
        # every rank checks in, and all wait (bounded) for all: gloo's own handshake would wait
        # for a missing rank with the group's message timeout instead
        store.set(f"e2llm/joined/{rank}", "1")
        try:
            store.wait([f"e2llm/joined/{r}" for r in range(world)], connect)
        except Exception:
            missing = [r for r in range(world) if not store.check([f"e2llm/joined/{r}"])]
            raise TimeoutError(f"rank(s) {', '.join(map(str, missing))} of {world} did not join "
                               f"within {connect_timeout_s:g} s") from None
        return store, dist.ProcessGroupGloo(store, rank, world, opts)
    except Exception as e:  # drop the store here: a TCPStore kept alive by a traceback still listens
        failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    store = None
    raise ConnectionError(failure)


def pair_meeting(first: int, second: int, pair_dir: str | None = None, store=None) -> dict:
    """Where the pair of global ranks ``first`` (group rank 0) and ``second`` (group rank 1)
    meets: :func:`make_group` keywords for the file ``pair_dir/pair-<second>-<first>`` (workers on
    this machine) or the prefix ``e2llm/pair/<second>-<first>/`` of the driver's ``store``, through
    a client of its own (a TCPStore client is one socket: pairs form side by side, on threads)."""
    if pair_dir is not None:
        return dict(store_file=os.path.join(pair_dir, f"pair-{second}-{first}"))
    return dict(store=store.clone(), prefix=f"e2llm/pair/{second}-{first}/")


def start_pairs(me: int, members) -> list[tuple[int, int]]:
    """The pairs rank ``me`` forms at the start with the other ``members``: (first, second) with
    the lower rank first (so both ends name the same pair)."""
    return [(min(me, r), max(me, r)) for r in members if r != me]


def side_by_side(jobs: dict, wait_s: float) -> tuple[dict, dict]:
    """Run each of ``jobs`` (key -> a function of no arguments, e.g. forming one pair) on a
    thread of its own, all at once, waiting up to ``wait_s`` in all; returns (results by key,
    a one-line reason by key for each job that raised or did not end in time)."""
    made: dict = {}
    failed: dict = {}

    def run(key, job):
        try:
            made[key] = job()
        except Exception as e:  # noqa: BLE001 - handed back as a reason
            failed[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"

    threads = {k: threading.Thread(target=run, args=(k, job), daemon=True) for k, job in jobs.items()}
    for t in threads.values():
        t.start()
    deadline = time.monotonic() + wait_s
    for t in threads.values():
        t.join(max(0.0, deadline - time.monotonic()))
    for k, t in threads.items():
        if t.is_alive():
            failed[k] = f"no answer within {wait_s:g} s"
    return made, failed


def open_store(addr: str, port: int, members, connect_timeout_s: float = CONNECT_TIMEOUT_S):
    """The driver of a multi-host run hosts the rendezvous TCPStore at ``addr:port`` and publishes
    the global ranks up at the start (key ``e2llm/members``) for the workers started by hand
    (:func:`group_members`). The store listens on *every* interface of the driver's machine
    (torch's TCPStore cannot be bound to one address) and has no authentication: run multi-host
    only on a network you trust."""
    import torch.distributed as dist

    try:
        store = dist.TCPStore(addr, port, None, True, timeout=datetime.timedelta(seconds=connect_timeout_s),
                              wait_for_workers=False)
    except Exception as e:  # the port is taken, the address is not this machine's, ...
        raise ConnectionError(f"cannot host the rendezvous store at {addr}:{port} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    store.set("e2llm/members", ",".join(map(str, members)))
    return store


def group_members(addr: str, port: int, rank: int, connect_timeout_s: float = CONNECT_TIMEOUT_S):
    """A worker started by hand: connect to the driver's store at ``addr:port`` and read which
    ranks are up at the start; returns (store, members). ValueError if ``rank`` is not one of
    them (its device is absent at the start: it joins later, ``e2llm-lite worker --join``)."""
    import torch.distributed as dist

    connect = datetime.timedelta(seconds=connect_timeout_s)
    store = dist.TCPStore(addr, port, is_master=False, timeout=connect, wait_for_workers=False)
    store.wait(["e2llm/members"], connect)
    members = [int(x) for x in store.get("e2llm/members").decode().split(",")]
    if rank not in members:
        raise ValueError(f"rank {rank}'s device is absent at the start (the group is ranks "
                         f"{members}): start it with `e2llm-lite worker --join`")
    return store, members


def as_payload(payload) -> torch.Tensor | None:
    """A payload as the contiguous tensor that travels (None stays None)."""
    if payload is None:
        return None
    return torch.as_tensor(np.ascontiguousarray(payload) if isinstance(payload, np.ndarray)
                           else payload).contiguous()


def message_bytes(payload) -> int:
    """Bytes a message puts on the wire: the header + its payload's data."""
    return HEADER_LEN * 8 + (0 if payload is None else payload.numel() * payload.element_size())


def send(pg, dst: int, op: Op, src: int, request: int = 0, a: int = 0, b: int = 0, c: int = 0,
         d: int = 0, e: int = 0, t: int = 0, payload=None, timeout_s: float | None = None) -> int:
    """Send one message; returns the bytes put on the wire (header + payload). ``timeout_s``
    bounds the wait for the send to complete (default: the group's timeout). A payload of at
    most ``INLINE_PAYLOAD_BYTES`` goes in the same gloo message as the header."""
    wait = () if timeout_s is None else (datetime.timedelta(seconds=timeout_s),)
    header = torch.zeros(HEADER_LEN, dtype=torch.int64)
    header[:9] = torch.tensor([int(op), src, request, a, b, c, d, e, t])
    tensor = as_payload(payload)
    if tensor is None:
        pg.send([header], dst, TAG).wait(*wait)
        return HEADER_LEN * 8
    if tensor.dim() > MAX_DIMS:
        raise ValueError(f"payload has {tensor.dim()} dims, at most {MAX_DIMS} travel")
    header[9] = _CODES[tensor.dtype]
    header[10] = tensor.dim()
    header[11:11 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    size = tensor.numel() * tensor.element_size()
    if size <= INLINE_PAYLOAD_BYTES:
        one = torch.cat([header.view(torch.uint8), tensor.reshape(-1).view(torch.uint8)])
        pg.send([one], dst, TAG).wait(*wait)
    else:
        pg.send([header], dst, TAG).wait(*wait)
        pg.send([tensor], dst, TAG).wait(*wait)
    return HEADER_LEN * 8 + size


def text_payload(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")) or bytearray(b" "), dtype=torch.uint8)


class BadMessage(ValueError):
    """A header that does not describe a message of this protocol (unknown op or dtype, a shape
    out of bounds, a sender that is not in the group). The stream cannot be trusted after it."""


def check_header(h: list[int], world: int | None = None) -> tuple[Op, torch.dtype | None, list[int]]:
    """Validate a received header: returns (op, payload dtype or None, payload shape), or raises
    :class:`BadMessage` before anything is allocated (at most ``MAX_PAYLOAD_ELEMENTS``)."""
    try:
        op = Op(h[0])
    except ValueError:
        raise BadMessage(f"unknown op {h[0]} from rank {h[1]}") from None
    if h[1] < 0 or (world is not None and h[1] >= world):
        raise BadMessage(f"{op.name} names sender rank {h[1]}, outside the group of {world}")
    if h[9] not in _DTYPES:
        raise BadMessage(f"{op.name} from rank {h[1]}: unknown payload dtype code {h[9]}")
    dtype = _DTYPES[h[9]]
    if dtype is None:
        return op, None, []
    if not 0 <= h[10] <= MAX_DIMS:
        raise BadMessage(f"{op.name} from rank {h[1]}: payload with {h[10]} dims (at most {MAX_DIMS})")
    shape = h[11:11 + h[10]]
    elements = 1
    for n in shape:
        if n < 0:
            raise BadMessage(f"{op.name} from rank {h[1]}: negative payload shape {shape}")
        elements *= n
    if elements > MAX_PAYLOAD_ELEMENTS:
        raise BadMessage(f"{op.name} from rank {h[1]}: payload shape {shape} has {elements:,} "
                         f"elements, more than the {MAX_PAYLOAD_ELEMENTS:,} a message may carry")
    return op, dtype, shape


def recv(pg, world: int | None = None, buffer: torch.Tensor | None = None,
         local: dict | None = None) -> Message:
    """Block until the next message from any rank arrives (header, then its payload). The header
    may be waited for up to :data:`LISTEN_TIMEOUT_S` (an idle group is not a broken one); a
    payload too big to come with it, within the group's timeout. A header that fails
    :func:`check_header` raises :class:`BadMessage` (``world``: the group's size, default
    ``pg.size()``). ``buffer``: a uint8 tensor of at least ``HEADER_LEN * 8 +
    INLINE_PAYLOAD_BYTES`` bytes to receive into (a caller that receives in a loop keeps one).
    ``local``: the group's rank of each sender's (global) rank, for a group of some of the ranks
    (default: the same numbers); a sender outside it is a :class:`BadMessage`."""
    if buffer is None:
        buffer = torch.empty(_INLINE_BUFFER, dtype=torch.uint8)
    pg.recv_anysource([buffer], TAG).wait(datetime.timedelta(seconds=LISTEN_TIMEOUT_S))
    h = buffer[:HEADER_LEN * 8].view(torch.int64).tolist()
    op, dtype, shape = check_header(h, pg.size() if world is None else world)
    if local is not None and h[1] not in local:
        raise BadMessage(f"{op.name} names sender rank {h[1]}, not a member of this group")
    payload = None
    if dtype is not None:
        payload = torch.empty(shape, dtype=dtype)
        size = payload.numel() * payload.element_size()
        if size <= INLINE_PAYLOAD_BYTES:
            payload.reshape(-1).view(torch.uint8).copy_(buffer[HEADER_LEN * 8:HEADER_LEN * 8 + size])
        else:
            pg.recv([payload], h[1] if local is None else local[h[1]], TAG).wait()
    return Message(op, *h[1:9], payload=payload)


class Postbox:
    """Messages held until their delivery time, then handed out in that order (ties: the order
    they were put in). Thread-safe. Times are ``time.monotonic()`` seconds of this process; an
    item due at 0 (or in the past) is due on arrival, behind what is already due."""

    def __init__(self):
        self._heap: list = []
        self._seq = 0
        self._cv = threading.Condition()

    def put(self, item, at: float = 0.0) -> None:
        with self._cv:
            heapq.heappush(self._heap, (max(at, time.monotonic()), self._seq, item))
            self._seq += 1
            self._cv.notify()

    def get(self, timeout_s: float):
        """The next due item; ``queue.Empty`` if none is due within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    return heapq.heappop(self._heap)[2]
                if now >= deadline:
                    raise queue.Empty
                wake = min(deadline, self._heap[0][0]) if self._heap else deadline
                self._cv.wait(wake - now)

    def __len__(self) -> int:
        with self._cv:
            return len(self._heap)


class Mesh:
    """The gloo groups one process talks over, and which one reaches each (global) rank.

    The cluster's ranks are fixed (the driver 0, device ``i`` rank ``i + 1``). Every two
    processes talk over a gloo group of their own, a pair: one that breaks (its peer died, even
    in the middle of a message) names that peer and leaves every other link working, and a
    device that joins later pairs up with every live member the same way (a gloo group's
    members are fixed when it forms). A message to rank ``r`` goes over the group that holds
    it, as that group's rank."""

    def __init__(self):
        self._where: dict[int, tuple] = {}   # global rank -> (process group, its rank there)
        self.groups: list = []

    def add(self, pg, members) -> None:
        """Reach every rank of ``members`` (global ranks, in group-rank order) through ``pg``."""
        self.groups.append(pg)
        for i, r in enumerate(members):
            self._where.setdefault(int(r), (pg, i))

    def route(self, dst: int) -> tuple:
        """(process group, rank in it) for global rank ``dst``; KeyError if no group holds it."""
        return self._where[dst]

    def shutdown(self) -> None:
        """Shut every group down and let go of them (and so of their stores)."""
        for pg in self.groups:
            try:
                pg.shutdown()
            except Exception:
                pass
        self.groups.clear()
        self._where.clear()


class Outbox:
    """Sends messages from ``src`` without making the caller wait for a large one: one sender
    thread per destination keeps that destination's messages in order (a header and its payload
    together). A small message (payload under ``INLINE_BYTES``) to a destination with nothing
    queued is sent at once from the calling thread (every receiver takes messages off the wire on
    a thread of its own, so that is quick; a hand-off to the sender thread costs two thread
    switches per hop). A failed send (the peer died, the group is shutting down) ends that
    destination's thread; whoever waits for a reply notices."""

    INLINE_BYTES = 64 * 1024

    def __init__(self, mesh: Mesh, src: int):
        self.mesh, self.src = mesh, src
        self.bytes_sent = 0
        self._boxes: dict[int, queue.Queue] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._pending: dict[int, int] = {}   # queued or being sent by the thread (under its lock)
        self._dead: set[int] = set()
        self._new = threading.Lock()

    def put(self, dst: int, op: Op, **kw) -> None:
        if dst not in self._boxes:
            with self._new:
                if dst not in self._boxes:
                    self._locks[dst] = threading.Lock()
                    self._pending[dst] = 0
                    self._boxes[dst] = queue.Queue()
                    self._threads[dst] = threading.Thread(target=self._run, args=(dst,),
                                                          name=f"e2llm-send-{dst}", daemon=True)
                    self._threads[dst].start()
        payload = kw["payload"] = as_payload(kw.get("payload"))
        small = payload is None or payload.numel() * payload.element_size() < self.INLINE_BYTES
        lock = self._locks[dst]
        with lock:
            if small and op != Op.STOP and self._pending[dst] == 0:   # nothing to overtake
                self._send(dst, op, kw)
                return
            self._pending[dst] += 1
        self._boxes[dst].put((op, kw))

    def _send(self, dst: int, op: Op, kw: dict) -> bool:
        if dst in self._dead:
            return False
        try:
            pg, there = self.mesh.route(dst)
            self.bytes_sent += send(pg, there, op, self.src, **kw)
            return True
        except Exception:
            self._dead.add(dst)
            return False

    def _run(self, dst: int) -> None:
        box, lock = self._boxes[dst], self._locks[dst]
        while True:
            item = box.get()
            if item is None:
                return
            op, kw = item
            with lock:
                ok = self._send(dst, op, kw)
                self._pending[dst] -= 1
            if not ok or op == Op.STOP:
                return

    def close(self, timeout_s: float) -> None:
        """Let every thread send what is queued, for at most ``timeout_s`` in all: a gloo call
        cut off mid-send by the group's shutdown aborts the whole process."""
        for box in self._boxes.values():
            box.put(None)
        end = time.monotonic() + timeout_s
        for t in self._threads.values():
            t.join(max(0.0, end - time.monotonic()))


class Receiver:
    """Receives messages from any rank on a daemon thread and puts each into ``postbox`` at its
    delivery time (header ``t`` converted by ``local_time``: driver-clock us -> this process's
    monotonic s). If the connection breaks (a peer died) or a header is malformed, the thread
    keeps the exception in ``error`` and puts ``on_error(exception)`` (due at once; nothing if
    ``report`` is False). ``members``: the group's global ranks in group-rank order (default:
    the group's ranks are the global ones); ``world``: the cluster's ranks (header check)."""

    def __init__(self, pg, postbox: Postbox, local_time=lambda us: us / 1e6, on_error=lambda e: None,
                 world: int | None = None, members=None, report: bool = True):
        self.pg, self.postbox, self.local_time = pg, postbox, local_time
        self.on_error, self.world, self.report = on_error, world, report
        self.local = None if members is None else {int(r): i for i, r in enumerate(members)}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="e2llm-receiver", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buffer = torch.empty(_INLINE_BUFFER, dtype=torch.uint8)
        try:
            while True:
                msg = recv(self.pg, self.world, buffer, self.local)
                self.postbox.put(msg, self.local_time(msg.t) if msg.t else 0.0)
                if msg.op == Op.STOP:   # a pair's last message (the peer's echo of it)
                    return
        except BaseException as e:  # connection closed, process group shut down, bad header
            self.error = e
            item = self.on_error(e)
            if self.report:
                self.postbox.put(item)
