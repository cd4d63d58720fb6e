"""One place that routes every reply from the workers to whoever waits for it.

The driver's receiver thread hands each message to :meth:`Dispatcher.route`, which files it by
what it answers, so that any number of operations can be outstanding at once without one caller
taking another's reply:

* anything that names an asynchronous operation (header ``e``; a forward's ``RESULT`` and
  ``STEP`` reports name it by their request) -> that operation's queue (registered by
  :meth:`expect` before its first message was sent): its ``RESULT``, its ``STEP`` reports, the
  ``ACK`` of each piece of a KV hand-off, and its ``ERROR``;
* ``ACK`` of op ``o`` -> the queue of op ``o`` (a ``STATS`` reply never meets a ``RESULT``);
* any other ``ERROR`` -> where its success would have gone: the worker names the op that failed
  (header ``b``); a failed ``FWD`` goes to its request,
  anything else to that op's acks; an error tied to no op (a malformed message) goes to
  :attr:`unrouted` and to every waiter.

Waiting itself (with timeouts and the check that every worker is alive) is the driver's: a
broken pair names its device (see :class:`~e2llm_lite.runtime.protocol.Mesh`), and the driver
fails the operations that involve it.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict

from .protocol import Message, Op

__all__ = ["Dispatcher"]


class Dispatcher:
    """Routes messages (module docstring). Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._results: dict[int, queue.Queue] = {}
        self._acks: dict[int, queue.Queue] = defaultdict(queue.Queue)
        self.unrouted: queue.Queue = queue.Queue()

    def expect(self, request: int, sink: queue.Queue | None = None) -> queue.Queue:
        """Register a waiter for request ``request``'s RESULT (into ``sink`` if given, a queue
        shared by several requests); ValueError if one is in flight."""
        with self._lock:
            if request in self._results:
                raise ValueError(f"request {request} already has an operation in flight")
            q = self._results[request] = sink if sink is not None else queue.Queue()
            return q

    def outstanding(self) -> list[int]:
        """Requests with an operation in flight."""
        with self._lock:
            return list(self._results)

    def done(self, request: int) -> None:
        """Forget request ``request``'s waiter."""
        with self._lock:
            self._results.pop(request, None)

    def acks(self, op: Op) -> queue.Queue:
        """The queue of replies (ACK or ERROR) to ``op``."""
        with self._lock:
            return self._acks[int(op)]

    def route(self, msg: Message) -> None:
        """File one message."""
        with self._lock:
            named = self._results.get(msg.e) if msg.e else None
            if msg.op in (Op.RESULT, Op.STEP):
                target = named or self._results.get(msg.request)
                if target is None and msg.op == Op.STEP:
                    return   # the report of an operation nobody waits for any more
            elif msg.op == Op.ACK:
                target = named or self._acks[msg.a]
            elif msg.op == Op.ERROR:
                target = named or self._error_target(msg)
            else:  # STOP echoes end the receiver; nothing waits for them
                return
            if target is None:
                self.unrouted.put(msg)
                return
            target.put(msg)

    def _error_target(self, msg: Message) -> queue.Queue | None:
        failed = msg.b
        if failed == Op.FWD:
            return self._results.get(msg.request)
        if failed in tuple(int(o) for o in Op):
            return self._acks[failed]
        for q in list(self._results.values()) + list(self._acks.values()):
            q.put(msg)   # tied to no op: every waiter hears of it
        return None
