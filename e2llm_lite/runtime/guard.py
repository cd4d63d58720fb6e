"""A child process's first act, before anything slow: die with its parent, leave Ctrl-C to it.

Used by a spawned worker (its parent: the driver) and by the worker zygote and the workers it
forks (their parents: the driver, and the zygote). Imports nothing heavy.
"""

from __future__ import annotations

import ctypes
import os
import signal


def die_with_parent(parent: int | None, name: str | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (``PR_SET_PDEATHSIG``),
    ignore Ctrl-C (the parent stops its children), and exit at once if the parent is not
    ``parent`` any more (it died before the request took effect; None: not checked).
    ``name``: this process's name in ``top`` and ``ps -e`` (at most 15 bytes are kept)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)                  # PR_SET_PDEATHSIG
        if name:
            libc.prctl(15, name.encode()[:15])         # PR_SET_NAME
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None and os.getppid() != parent:
        os._exit(0)
