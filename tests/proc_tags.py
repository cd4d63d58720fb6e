"""Find a run's processes by a tag in their environment (tests/test_lifecycle.py, benchmarks/abort_soak.py).

A driver started with ``E2LLM_TEST_TAG=<tag>`` passes the variable on to every worker it spawns, so
the run's processes can be found in /proc whoever their parent is by then (Linux only).
"""

from __future__ import annotations

import os
from pathlib import Path


def tagged(tag: str) -> list[int]:
    """Pids of the processes (other than this one) whose environment has ``E2LLM_TEST_TAG=tag``."""
    needle = f"E2LLM_TEST_TAG={tag}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                continue
    return out
