"""The package's import structure: who may import whom (README "Architecture").

Read from the source with ``ast`` (nothing is imported), so a violation names the file and line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "e2llm_lite"

# (importer prefix, forbidden prefix, why)
FORBIDDEN = [
    ("e2llm_lite.planning", "e2llm_lite.runtime", "planning works on paper: it never starts a device"),
    ("e2llm_lite.planning", "e2llm_lite.serving", "serving reads plans; planning does not serve"),
    ("e2llm_lite.runtime", "e2llm_lite.planning", "the runtime carries out actions; it does not plan"),
    ("e2llm_lite.runtime", "e2llm_lite.serving", "the runtime knows no scheduler"),
    ("e2llm_lite.workload", "e2llm_lite.planning", "planning and serving both import the workload"),
    ("e2llm_lite.workload", "e2llm_lite.serving", "planning and serving both import the workload"),
    ("e2llm_lite.serving.scheduler", "e2llm_lite.serving.simulator", "the scheduler knows no backend"),
    ("e2llm_lite.serving.scheduler", "e2llm_lite.runtime", "the scheduler knows no backend"),
    ("e2llm_lite.serving.events", "e2llm_lite.runtime", "events are plain data"),
    ("e2llm_lite.serving.simulator", "e2llm_lite.runtime", "the simulator runs no device"),
    ("e2llm_lite.serving.metrics", "e2llm_lite.runtime", "metrics are the same for both clocks"),
]

# The shared rules and everything the planner needs load without torch.
TORCH_FREE = ["e2llm_lite.devices", "e2llm_lite.costmodel", "e2llm_lite.memory", "e2llm_lite.split",
              "e2llm_lite.workload", "e2llm_lite.traces", "e2llm_lite.model", "e2llm_lite.errors",
              "e2llm_lite.planning", "e2llm_lite.runtime.limits", "e2llm_lite.serving.scheduler",
              "e2llm_lite.serving.simulator", "e2llm_lite.serving.metrics", "e2llm_lite.serving.adapt"]

# Imports inside functions, on purpose (not to dodge a cycle): the CLI loads each command's
# modules when it runs (so `e2llm-lite plan` never imports torch); profiling loads the torch-side
# Stage only when it measures; the worker zygote asks to die with its driver before it imports
# torch (seconds), as a worker does.
LAZY_OK = {"e2llm_lite.cli": None, "e2llm_lite.profiling": {"e2llm_lite.stage"},
           "e2llm_lite.runtime.zygote": {"e2llm_lite.runtime", "e2llm_lite.runtime.worker",
                                         "e2llm_lite.stage"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    """(line, imported module, inside a function?, imported names) for every import of ``path``."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(n) for n in ast.walk(node) if n is not node}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, id(node) in in_function, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = tuple(a.name for a in node.names)
            yield node.lineno, target, id(node) in in_function, names
            for a in node.names:  # `from . import baselines` imports a module
                sub = f"{target}.{a.name}"
                if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists():
                    yield node.lineno, sub, id(node) in in_function, ()


FILES = sorted(PACKAGE.rglob("*.py"))


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_import_directions():
    bad = []
    for path in FILES:
        mod = module_name(path)
        for line, target, _, _ in imports(path):
            for src, dst, why in FORBIDDEN:
                if _under(mod, src) and _under(target, dst):
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} ({why})")
    assert not bad, "\n".join(bad)


def test_no_imports_inside_functions_to_dodge_cycles():
    bad = []
    for path in FILES:
        mod = module_name(path)
        for line, target, lazy, _ in imports(path):
            if lazy and _under(target or "", "e2llm_lite") and mod in LAZY_OK:
                allowed = LAZY_OK[mod]
                if allowed is None or target in allowed:
                    continue
            if lazy and _under(target or "", "e2llm_lite"):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} inside a function")
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules():
    bad = []
    for path in FILES:
        for line, target, _, names in imports(path):
            if _under(target or "", "e2llm_lite"):
                bad += [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}.{n}"
                        for n in names if n.startswith("_")]
    assert not bad, "\n".join(bad)


def test_module_imports_form_no_cycle():
    graph = {module_name(p): {t for _, t, lazy, _ in imports(p) if not lazy and _under(t or "", "e2llm_lite")}
             for p in FILES}
    state: dict[str, int] = {}

    def visit(m, stack):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if state.get(m) == 2 or m not in graph:
            return
        state[m] = 1
        for t in sorted(graph[m]):
            if t != m and not m.startswith(t + "."):  # a package's own __init__ is not a cycle
                visit(t, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


@pytest.mark.parametrize("module", TORCH_FREE)
def test_shared_rules_load_without_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("module", ["scheduler", "events", "adapt"])
def test_the_scheduler_reads_no_clock(module):
    """Events in, actions out: the scheduler learns the time only from its events."""
    text = (PACKAGE / "serving" / f"{module}.py").read_text()
    for clock in ("import time", "from time", "datetime", "perf_counter", "monotonic", "time.time"):
        assert clock not in text, f"serving/{module}.py mentions {clock!r}"
