"""Run the browser check (tests/test_browser.py) beside the rest of the suite, not after it.

The browser check runs every notebook once more in JupyterLab (about 12 minutes of mostly
waiting on a kernel). When a session collects it together with other tests, this plugin takes
its items out of the session and runs them in a pytest of their own, started at once in the
background (its own process group, its output in a log file); one item,
``tests/test_browser.py::all notebooks in a browser (beside the suite)``, waits for it near the end
of the session and fails with the tail of its log if it failed. Tests marked ``quiet`` (they
assert that an emulated device keeps its time: they need the host's cores to themselves) run
after that item, when the browser is done. ``pytest tests/test_browser.py`` alone, or
``E2LLM_BROWSER_BESIDE=0``, runs it inline as before. A session that ends early (Ctrl-C, an
error) interrupts the background run (SIGINT to its group, so that it stops its server and
browser; SIGKILL after 30 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CHILD_ENV = "E2LLM_BROWSER_CHILD"
WAIT_S = 3600.0           # the whole browser check; each notebook has its own timeout inside

_child: dict = {}


class BrowserBeside(pytest.Item):
    """Waits for the background browser run and reports it."""

    def runtest(self):
        proc, log = _child["proc"], _child["log"]
        try:
            rc = proc.wait(timeout=max(1.0, _child["started"] + WAIT_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_child()
            raise AssertionError(f"the browser check did not end within {WAIT_S:.0f} s; log {log}")
        text = Path(log).read_text(errors="replace")
        summary = next((ln for ln in reversed(text.splitlines()) if " in " in ln and "=" in ln), "")
        if rc != 0:
            raise AssertionError(f"the browser check failed (exit {rc}): {summary}\n{text[-6000:]}")
        print(f"browser check, beside the suite: {summary.strip('= ')} "
              f"({time.monotonic() - _child['started']:.0f} s since it started; log {log})")

    def reportinfo(self):
        return self.path, None, self.name


def stop_child() -> None:
    proc = _child.get("proc")
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def pytest_collection_modifyitems(session, config, items):
    browser = [it for it in items if it.get_closest_marker("browser")]
    others = [it for it in items if not it.get_closest_marker("browser")]
    if (not browser or not others or os.environ.get(CHILD_ENV) == "1"
            or os.environ.get("E2LLM_BROWSER_BESIDE", "1") == "0"):
        return
    fd, log = tempfile.mkstemp(prefix="e2llm-browser-", suffix=".log")
    root = Path(str(config.rootpath))
    with os.fdopen(fd, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
             "--durations=10", *[it.nodeid for it in browser]],
            cwd=root, env=dict(os.environ, **{CHILD_ENV: "1"}), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    _child.update(proc=proc, log=log, started=time.monotonic())
    name = "all notebooks in a browser (beside the suite)"
    waiter = BrowserBeside.from_parent(session, name=name,
                                       nodeid=f"{browser[0].nodeid.split('::')[0]}::{name}")
    quiet = [it for it in others if it.get_closest_marker("quiet")]
    rest = [it for it in others if not it.get_closest_marker("quiet")]
    items[:] = rest + [waiter] + quiet
    config.hook.pytest_deselected(items=browser)


def pytest_sessionfinish(session, exitstatus):
    stop_child()
