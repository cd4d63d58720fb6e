"""Abort soak: many emulated runs aborted at random moments with random signals; count orphans.

Run:  .venv/bin/python benchmarks/abort_soak.py [--runs 50] [--seed 0] [--max-delay 8]

Each run starts ``e2llm-lite generate --devices 2`` in its own session, tagged with an environment
variable its workers inherit, waits a random delay (0 .. ``--max-delay`` s: before the workers
spawn, while they import torch, load, or generate), sends SIGINT to the process group (Ctrl-C),
SIGTERM or SIGKILL to the driver, and then watches /proc: an **orphan** is a worker of that run
still alive 5 s after its driver exited (it is then killed). Prints per signal the runs, the
orphans and the worst times to the driver's exit and to the last worker's exit.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from proc_tags import tagged  # noqa: E402

GRACE_S = 5.0


def one_run(sig: signal.Signals, delay_s: float) -> tuple[float, float, int]:
    """(seconds to the driver's exit, seconds to the last worker's exit, orphans)."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2llm_lite.cli", "generate", "--prompt", "Tell me a long story.",
         "--devices", "2", "--max-new-tokens", "200"],
        env=dict(os.environ, E2LLM_TEST_TAG=tag), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay_s)
    t0 = time.monotonic()
    try:
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    driver_s = time.monotonic() - t0
    deadline = time.monotonic() + GRACE_S
    while tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = tagged(tag)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return driver_s, time.monotonic() - t0, len(left)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=8.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
    rows = {s: [] for s in sigs}
    t_start = time.monotonic()
    for i in range(args.runs):
        sig, delay = rng.choice(sigs), rng.uniform(0.0, args.max_delay)
        driver_s, all_s, orphans = one_run(sig, delay)
        rows[sig].append((delay, driver_s, all_s, orphans))
        print(f"run {i + 1:3d}: {sig.name:7s} after {delay:4.1f} s -> driver exited in {driver_s:5.2f} s, "
              f"last worker gone in {all_s:5.2f} s, orphans {orphans}", flush=True)
    print(f"\n{'signal':8s} {'runs':>5s} {'orphans':>8s} {'worst driver exit s':>20s} {'worst last worker s':>20s}")
    for sig, r in rows.items():
        if r:
            print(f"{sig.name:8s} {len(r):5d} {sum(x[3] for x in r):8d} {max(x[1] for x in r):20.2f} "
                  f"{max(x[2] for x in r):20.2f}")
    total = sum(x[3] for r in rows.values() for x in r)
    print(f"\n{args.runs} aborted runs, {total} orphans ({time.monotonic() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
