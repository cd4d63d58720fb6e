"""A warm process that forks device workers: torch and transformers imported once, not per worker.

A fresh interpreter spends about 8 s of CPU importing torch (~3.5 s) and transformers' Llama
modules (~4.8 s) before a worker can load a single layer (measured on the 2-core CI machine);
six workers started side by side on 2 cores wait ~25 s for their imports. So the driver starts
one *zygote* per process, the first time it spawns workers: ``python -m
e2llm_lite.runtime.zygote`` imports everything a worker needs, once, and then forks a worker for
each request (a fork takes milliseconds; the pages are shared copy-on-write). A second cluster in
the same notebook, test run or benchmark starts in about a second.

Life cycle (nothing outlives the driver):

* the zygote asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``), ignores
  Ctrl-C (the driver stops its workers), and ends — killing its workers first — when its stdin,
  a pipe from the driver, closes (the driver exited) or its parent changes;
* each worker does the same against the zygote, so a SIGKILLed driver takes the zygote and then
  every worker with it;
* the zygote reaps its workers and reports each one's exit status on its stdout; the driver's
  :class:`ForkedProcess` handles read it, so they answer ``poll`` / ``wait`` / ``kill`` like a
  ``subprocess.Popen``.

Protocol: one JSON object per line. Driver -> zygote: ``{"argv": [...], "env": {...}, "cwd": s}``
(a worker's command-line arguments, environment and folder). Zygote -> driver: ``{"pid": n}`` for
each fork, in request order, and ``{"exit": n, "code": c}`` when worker ``n`` has exited (``c``
as ``Popen.returncode``: negative for a signal).

``E2LLM_ZYGOTE=0`` turns it off: every worker is then a fresh interpreter (``python -m
e2llm_lite.runtime.worker``), as before. A worker's environment is the driver's at fork time
for Python code; variables read by torch's own start-up (``OMP_NUM_THREADS``, ...) are those of
the zygote's start.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time

from ..errors import WorkerDied
from .guard import die_with_parent


def forking_enabled() -> bool:
    """Whether spawned workers are forked from a zygote (``E2LLM_ZYGOTE`` not ``0``)."""
    return os.environ.get("E2LLM_ZYGOTE", "1") != "0"


# ---- the zygote's side ------------------------------------------------------------------------
_WAKE: list[int] = []   # the zygote's wake-up pipe (read end, write end)


def _fork_worker(req: dict) -> int:
    """Fork one worker for request ``req``; returns its pid (in the zygote)."""
    me = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:  # the child: never returns to the zygote's loop
        argv = req["argv"]
        die_with_parent(me, f"e2llm-w{argv[argv.index('--rank') + 1]}" if "--rank" in argv
                        else "e2llm-worker")
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in _WAKE:   # the zygote's wake-up pipe is not ours either
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)   # the driver's pipe is the zygote's, not ours
        os.dup2(2, 1)      # stdout is the zygote's report channel: a worker writes to stderr
        os.close(null)
        os.environ.clear()
        os.environ.update(req.get("env") or {})
        if req.get("cwd"):
            os.chdir(req["cwd"])
        from . import worker

        worker.main([*argv, "--parent", str(me)])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported on stderr, the exit code tells the driver
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)


def _report(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _reap(children: set) -> None:
    """Report every worker that has exited (``waitpid`` without blocking)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _report({"exit": pid, "code": code})


def serve(parent: int) -> None:
    """The zygote's loop: fork on each request line, reap and report; end (killing every worker)
    when stdin closes or the parent is gone."""
    children: set = set()
    buf = b""
    wake_r, wake_w = _WAKE[:] = os.pipe()   # a worker's exit wakes the loop at once (SIGCHLD)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        while os.getppid() == parent:
            ready, _, _ = select.select([0, wake_r], [], [], 0.2)
            if wake_r in ready:
                os.read(wake_r, 4096)
            if 0 in ready:
                chunk = os.read(0, 65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    pid = _fork_worker(json.loads(line))
                    children.add(pid)
                    _report({"pid": pid})
            _reap(children)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> None:
    parent = int(sys.argv[sys.argv.index("--parent") + 1])
    die_with_parent(parent, "e2llm-zygote")
    # what every worker imports, once (the worker module sets torch's log level before torch)
    importlib.import_module("e2llm_lite.runtime.worker")
    from ..stage import preload

    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    preload()
    serve(parent)


# ---- the driver's side ------------------------------------------------------------------------
class Zygote:
    """The driver's handle on its zygote process (one per driver process; :func:`shared_zygote`)."""

    def __init__(self):
        self.lock = threading.Lock()         # one fork request at a time
        self.cond = threading.Condition()    # guards codes; notified on every exit
        self.answers: queue.Queue = queue.Queue()   # the pid of each fork, in order; None: gone
        self.codes: dict[int, int] = {}      # pid -> exit code (reported by the zygote)
        self.children: set[int] = set()
        self.gone = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "e2llm_lite.runtime.zygote", "--parent", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        threading.Thread(target=self._read, name="e2llm-zygote", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "pid" in msg:
                self.answers.put(msg["pid"])
            elif "exit" in msg:
                with self.cond:
                    self.codes[msg["exit"]] = msg["code"]
                    self.cond.notify_all()
        with self.cond:  # the zygote is gone, and its workers with it (PR_SET_PDEATHSIG)
            self.gone = True
            for pid in self.children:
                self.codes.setdefault(pid, -signal.SIGKILL)
            self.cond.notify_all()
        self.answers.put(None)

    @property
    def alive(self) -> bool:
        return not self.gone and self.proc.poll() is None

    def spawn(self, argv: list[str], timeout_s: float) -> "ForkedProcess":
        """Fork a worker running ``e2llm_lite.runtime.worker`` with ``argv``; returns its handle.
        Raises WorkerDied if the zygote is gone or has not forked within ``timeout_s`` (its first
        fork waits for its imports: ~8 s of CPU)."""
        req = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()})
        with self.lock:
            try:
                self.proc.stdin.write(req.encode() + b"\n")
                self.proc.stdin.flush()
            except (ValueError, OSError) as e:
                raise WorkerDied(f"the worker zygote (pid {self.proc.pid}) is gone ({e})") from None
            try:
                pid = self.answers.get(timeout=timeout_s)
            except queue.Empty:
                raise WorkerDied(f"the worker zygote (pid {self.proc.pid}) forked no worker "
                                 f"within {timeout_s:g} s") from None
            if pid is None:
                self.answers.put(None)   # for whoever asks next
                raise WorkerDied(f"the worker zygote (pid {self.proc.pid}) exited")
            with self.cond:
                self.children.add(pid)
        return ForkedProcess(self, pid)


class ForkedProcess:
    """A worker forked by the zygote, with the part of ``subprocess.Popen``'s interface the driver
    uses: ``pid``, ``returncode``, ``poll``, ``wait``, ``send_signal``, ``terminate``, ``kill``."""

    def __init__(self, zyg: Zygote, pid: int):
        self.zygote, self.pid = zyg, pid

    @property
    def returncode(self) -> int | None:
        return self.zygote.codes.get(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.zygote.cond:
            while self.pid not in self.zygote.codes:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
                self.zygote.cond.wait(0.2 if left is None else min(left, 0.2))
        return self.zygote.codes[self.pid]

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_ZYGOTE: dict[int, Zygote] = {}   # driver pid -> its zygote (a forked driver starts its own)
_ZYGOTE_LOCK = threading.Lock()


def start_worker(argv: list[str], timeout_s: float):
    """Start one local worker (``e2llm_lite.runtime.worker`` with ``argv``): forked from this
    process's zygote, or with ``E2LLM_ZYGOTE=0`` a fresh interpreter whose parent is this process.
    Returns a ``Popen``-like handle."""
    if forking_enabled():
        return shared_zygote().spawn(argv, timeout_s)
    return subprocess.Popen([sys.executable, "-m", "e2llm_lite.runtime.worker", *argv,
                             "--parent", str(os.getpid())], stdin=subprocess.DEVNULL)


def shared_zygote() -> Zygote:
    """This process's zygote, started (or restarted, if it died) on first use."""
    with _ZYGOTE_LOCK:
        z = _ZYGOTE.get(os.getpid())
        if z is None or not z.alive:
            z = _ZYGOTE[os.getpid()] = Zygote()
        return z


if __name__ == "__main__":
    main()
