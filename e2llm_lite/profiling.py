"""Profiling: measure how long each piece of the model takes on THIS host, with one thread, and fit
the cost model's formulas (:mod:`e2llm_lite.costmodel`) to the measurements.

What is measured (all fp32, ``torch.set_num_threads(1)``, because an emulated device is one host
thread), each grid point after ``warmup`` untimed runs, ``repeats`` timed runs, the **median** kept.
The repetitions are taken in interleaved rounds (every round visits each point of a group once, in
a shuffled order), so a slow drift of the machine's speed (other programs, a noisy neighbour of a
virtual machine) spreads over all points instead of bending the measured curve:

* ``prefill_layer(tokens)``: a prompt of ``tokens`` tokens from an empty KV cache through a stage
  of ``layers`` consecutive decoder layers, divided by ``layers`` -> ms per layer.
* ``decode_layer(batch, context)``: one new token for each of ``batch`` sequences whose KV caches
  already hold ``context`` tokens (random K/V of the right shape -- attention's cost does not
  depend on the values -- read as views of one shared buffer, so that ALL decode points are
  measured in the same interleaved rounds: measured one batch size after the other, a drift of
  a shared machine's speed between the groups showed up as a fake dependence on the batch size
  and 15 % held-out error), through the same layers, per layer. This is a *batched*
  forward ([batch, 1, 576]) of the same decoder layers the runtime's ``Stage`` runs; with
  ``batch = 1`` it is exactly ``Stage.forward``'s work.
* ``embed(tokens)``: the embedding lookup of ``tokens`` ids.
* ``head(batch)``: final RMSNorm + lm_head on the last position of ``batch`` sequences.

Timed with ``time.thread_time()`` (CPU time of the calling thread), the clock the runtime's device
workers use to measure their own compute, so other processes on the machine disturb it far less
than wall time (the wall-clock median is recorded too).

Measured **as a device worker runs**: a worker sleeps between its steps (the throttle stretches
every step, and it waits for the other stages), and on the reference machine (a 2-vCPU virtual
machine) a thread that has slept for 50 ms or more computes its next step 10-30 % slower than one
that runs back to back (the first layer after the pause up to 50 % slower; a short busy-wait does
not help; measured with ``Stage`` in one process). So the full and quick grids sleep
``idle_gap_ms`` = 100 ms before every timed run of a layer op, and time a stage of ``layers`` = 8
decoder layers (108 MiB of weights, more than the 32 MiB L3 cache; a typical stage of a 3-4 device
pipeline), whose per-layer average includes that slow start. The embedding and the head are timed
back to back: in a step they follow (or are dwarfed by) the layers.

Grid points come in two roles: ``fit`` points determine the coefficients, ``holdout`` points
(between them) are only used to report the prediction error honestly
(``benchmarks/costmodel_accuracy.py``, :meth:`CostModel.errors`).

A profile is saved as versioned JSON::

    {"format": "e2llm-lite/profile", "version": 1,
     "host": {cpu, logical_cpus, torch, transformers, threads, clock, date, load averages, seconds},
     "grid": {...}, "measurements": [{op, tokens|batch,context, ms, wall_ms, spread_ms, repeats, role}],
     "fit": {op: {form, coef}}, "accuracy": {fit: ..., holdout: ...}}

Command line: ``e2llm-lite profile [--quick] [--out FILE]`` (the quick grid takes about a minute
on 2 cores; the full one about five).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from .costmodel import (FORMS, N_COEF, PROFILE_FORMAT, PROFILE_VERSION, CostModel, accuracy,
                        fit_op, validate_profile)
from .errors import ConfigError
from .model import ANATOMY


@dataclass(frozen=True)
class Grid:
    """Where to measure. Tokens, batch sizes and contexts are counts; repeats are timed runs."""

    name: str
    prefill_tokens: tuple[int, ...]
    decode_points: tuple[tuple[int, int], ...]  # (batch, context)
    embed_tokens: tuple[int, ...]
    head_batch: tuple[int, ...]
    prefill_holdout: tuple[int, ...] = ()
    decode_holdout: tuple[tuple[int, int], ...] = ()
    head_holdout: tuple[int, ...] = ()
    layers: int = 8
    idle_gap_ms: float = 0.0  # sleep before each timed run of a layer op (see the module doc)
    warmup: int = 1
    repeats_prefill: int = 5
    repeats_decode: int = 15
    repeats_small: int = 15  # embed and head

    def points(self) -> list[dict]:
        """Every measurement to take: {op, its variables, role}."""
        pts = []
        for role, toks in (("fit", self.prefill_tokens), ("holdout", self.prefill_holdout)):
            pts += [{"op": "prefill_layer", "tokens": t, "role": role}
                    for t in toks]
        for role, bc in (("fit", self.decode_points), ("holdout", self.decode_holdout)):
            pts += [{"op": "decode_layer", "batch": b, "context": c, "role": role}
                    for b, c in bc]
        pts += [{"op": "embed", "tokens": t, "role": "fit"} for t in self.embed_tokens]
        for role, bs in (("fit", self.head_batch), ("holdout", self.head_holdout)):
            pts += [{"op": "head", "batch": b, "role": role} for b in bs]
        return pts

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decode_points"] = [list(p) for p in self.decode_points]
        d["decode_holdout"] = [list(p) for p in self.decode_holdout]
        return d


def _product(batches, contexts):
    return tuple((b, c) for b in batches for c in contexts)


#: The grid of the shipped reference profile (a few minutes on 2 cores).
FULL_GRID = Grid(
    name="full",
    prefill_tokens=(16, 32, 64, 128, 256, 512, 1024, 2048),
    prefill_holdout=(24, 48, 96, 192, 384, 768, 1536),
    decode_points=_product((1, 2, 4, 8, 16), (16, 64, 256, 1024, 2048)),
    decode_holdout=_product((1, 3, 6, 12), (32, 128, 512, 1536)),
    embed_tokens=(1, 16, 128, 512, 2048),
    head_batch=(1, 2, 4, 8, 16),
    head_holdout=(3, 6, 12),
    layers=8, idle_gap_ms=100.0, warmup=1, repeats_prefill=9, repeats_decode=15, repeats_small=21,
)

#: ``e2llm-lite profile --quick``: fewer points and repeats (well under two minutes).
QUICK_GRID = Grid(
    name="quick",
    prefill_tokens=(16, 64, 256, 1024),
    prefill_holdout=(128, 512),
    decode_points=_product((1, 2, 4, 16), (16, 256, 1024)),
    decode_holdout=((1, 512), (3, 128), (8, 512)),
    embed_tokens=(1, 256),
    head_batch=(1, 2, 4, 8),
    head_holdout=(3,),
    layers=8, idle_gap_ms=100.0, warmup=1, repeats_prefill=5, repeats_decode=9, repeats_small=9,
)


def tiny_grid(layers: int = 2) -> Grid:
    """The smallest grid that still determines every coefficient (tests, fast notebooks)."""
    return Grid(name="tiny", prefill_tokens=(8, 16, 32),
                decode_points=((1, 8), (2, 8), (4, 8), (8, 8), (1, 32)),
                embed_tokens=(1, 8), head_batch=(1, 2, 4, 8), layers=layers, warmup=1,
                repeats_prefill=1, repeats_decode=2, repeats_small=2)


# --------------------------------------------------------------------------------------------
# Host description
# --------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def host_info() -> dict:
    """What the profile was measured on (the parts that change timings)."""
    import torch
    import transformers

    return {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "dtype": "float32", "clock": "time.thread_time (CPU time of the calling thread)",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------

def _forward_layers(stage, h, cache, pos: int):
    """``Stage.forward``'s decoder-layer loop for a batch: h [B, T, 576] at positions pos.."""
    import torch
    from transformers.masking_utils import create_causal_mask

    B, T, _ = h.shape
    pid = torch.arange(pos, pos + T).unsqueeze(0).expand(B, -1)
    mask = create_causal_mask(config=stage.config, inputs_embeds=h, attention_mask=None,
                              cache=cache, position_ids=pid, layer_idx=stage.start)
    pe = stage.rotary_emb(h, position_ids=pid)
    for layer in stage.layers:
        h = layer(h, attention_mask=mask, position_ids=pid, cache=cache, use_cache=True,
                  position_embeddings=pe)
    return h


def _kv_base(stage, batch: int, context: int):
    """Random K and V of ``batch`` sequences x ``context`` tokens for every layer of ``stage``
    (attention's cost does not depend on the values). Every decode point reads views of this one
    buffer, so that all of them can be measured interleaved (one round visits every batch size)
    while only the largest point's KV is held: 8 layers x 16 x 2048 tokens = 0.4 GB in full."""
    import torch

    cfg = stage.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shape = (batch, cfg.num_key_value_heads, context, head_dim)
    gen = torch.Generator().manual_seed(0)
    keys = [torch.randn(shape, generator=gen) for _ in stage.layers]
    values = [torch.randn(shape, generator=gen) for _ in stage.layers]
    return keys, values


def _runner(stage, p: dict, kv_base=None):
    """(prepare, run, layers) for one grid point: ``run(prepare())`` is one timed repetition,
    ``prepare`` is not timed, the time is divided by ``layers`` (1 for embed / head). Decode
    points read their KV cache from ``kv_base`` (see :func:`_kv_base`; made if None)."""
    import torch
    from transformers import DynamicCache

    cfg, k = stage.config, len(stage.layers)
    hidden = cfg.hidden_size
    none = lambda: None  # noqa: E731
    if p["op"] == "prefill_layer":
        h = torch.randn(1, p["tokens"], hidden)
        return (lambda: DynamicCache(config=cfg)), (lambda c: _forward_layers(stage, h, c, 0)), k
    if p["op"] == "decode_layer":
        B, C = p["batch"], p["context"]
        if kv_base is None:
            kv_base = _kv_base(stage, B, C)
        keys, values = kv_base
        if B > keys[0].shape[0] or C > keys[0].shape[2]:
            raise ValueError(f"decode point {B}x{C} is larger than the shared KV buffer")
        cache = DynamicCache(config=cfg)
        h = torch.randn(B, 1, hidden)

        def prepare():  # every run sees exactly C cached tokens: views of the shared buffer
            for j, i in enumerate(range(stage.start, stage.end)):
                layer = cache.layers[i]
                if not layer.is_initialized:
                    layer.lazy_initialization(keys[j], values[j])
                layer.keys, layer.values = keys[j][:B, :, :C], values[j][:B, :, :C]
            return cache

        return prepare, (lambda c: _forward_layers(stage, h, c, C)), k
    if p["op"] == "embed":
        ids = torch.randint(0, cfg.vocab_size, (1, p["tokens"]))
        weight = stage.lm_head.weight  # the tied embedding matrix
        return none, (lambda _: torch.nn.functional.embedding(ids, weight)), 1
    if p["op"] == "head":
        h = torch.randn(p["batch"], 1, hidden)
        return none, (lambda _: stage.lm_head(stage.norm(h))), 1
    raise ValueError(f"unknown op {p['op']!r}")


def _measure_group(stage, points: list[dict], warmup: int, repeats: int, bar,
                   idle_gap_ms: float = 0.0) -> list[dict]:
    """Time every point ``repeats`` times in interleaved rounds (each round visits every point
    once, in a shuffled order), so slow drifts of the machine's speed spread over all points
    instead of bending the curve; keep the median per point. With ``idle_gap_ms`` the thread
    sleeps that long before each timed run (a device worker's situation)."""
    import random

    import torch

    decode = [p for p in points if p["op"] == "decode_layer"]
    kv_base = (_kv_base(stage, max(p["batch"] for p in decode), max(p["context"] for p in decode))
               if decode else None)
    runners = [_runner(stage, p, kv_base) for p in points]
    cpu = [[] for _ in points]
    wall = [[] for _ in points]
    order = list(range(len(points)))
    rng = random.Random(0)
    with torch.inference_mode():
        for _ in range(warmup):
            for prepare, run, _k in runners:
                run(prepare())
        gc.collect()
        for _ in range(repeats):
            rng.shuffle(order)
            for i in order:
                prepare, run, k = runners[i]
                arg = prepare()
                if idle_gap_ms > 0:
                    time.sleep(idle_gap_ms / 1e3)
                c0, w0 = time.thread_time(), time.perf_counter()
                run(arg)
                cpu[i].append((time.thread_time() - c0) * 1e3 / k)
                wall[i].append((time.perf_counter() - w0) * 1e3 / k)
            bar.update(len(points))
    out = []
    for p, c, w in zip(points, cpu, wall):
        q = statistics.quantiles(c, n=4) if len(c) >= 2 else [c[0]] * 3
        out.append({**p, "repeats": len(c), "ms": round(statistics.median(c), 5),
                    "wall_ms": round(statistics.median(w), 5), "spread_ms": round(q[2] - q[0], 5)})
    return out


def measure(grid: Grid, folder: Path | None = None, progress: bool | None = None,
            runs: int = 1) -> list[dict]:
    """Take every measurement of ``grid`` on this host (one torch thread); medians in ms.

    ``spread_ms`` is the interquartile range of the repetitions (a noise indicator). With
    ``runs`` > 1 the whole grid is measured that many times, one run after the other, and each
    point keeps the median of its runs' medians (``run_ms`` lists them): a profile less tied to
    one moment's state of a shared machine.
    """
    import torch
    from tqdm import tqdm

    from .stage import Stage  # torch-side: loaded only when measuring

    if not 1 <= grid.layers <= ANATOMY.n_layers:
        raise ValueError(f"grid.layers must be in 1..{ANATOMY.n_layers}, got {grid.layers}")
    if min(grid.repeats_prefill, grid.repeats_decode, grid.repeats_small) < 1 or grid.warmup < 0:
        raise ValueError("a grid needs repeats >= 1 and warmup >= 0")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be an integer >= 1, got {runs!r}")
    n = ANATOMY.n_layers
    stage = Stage.load(n - grid.layers, n, folder)  # the last layers: also holds norm + lm_head
    points = grid.points()
    # (points, repeats, idle gap); all decode points in ONE interleaved group: measured in
    # separate time windows, a drift of this machine's speed would show up as a fake
    # dependence on the batch size
    gap = grid.idle_gap_ms
    groups = [([p for p in points if p["op"] == "prefill_layer"], grid.repeats_prefill, gap),
              ([p for p in points if p["op"] == "decode_layer"], grid.repeats_decode, gap)]
    groups += [([p for p in points if p["op"] in ("embed", "head")], grid.repeats_small, 0.0)]
    if progress is None:
        progress = sys.stderr.isatty()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = []
    try:
        total = runs * sum(len(g) * r for g, r, _ in groups)
        with tqdm(total=total, desc=f"profiling ({grid.name} grid)", unit="run",
                  disable=not progress, file=sys.stderr, leave=False) as bar:
            for _ in range(runs):
                out = []
                for group, repeats, gap_ms in groups:
                    bar.set_postfix_str(group[0]["op"] if group else "")
                    if group:
                        out += _measure_group(stage, group, grid.warmup, repeats, bar, gap_ms)
                    gc.collect()
                out.sort(key=lambda m: ([*FORMS].index(m["op"]), m["role"] != "fit"))  # stable
                results.append(out)
    finally:
        torch.set_num_threads(threads)
    if runs == 1:
        return results[0]
    merged = []
    for per_run in zip(*results):
        m = dict(per_run[0])
        for key in ("ms", "wall_ms", "spread_ms"):
            m[key] = round(statistics.median(r[key] for r in per_run), 5)
        m["repeats"] = sum(r["repeats"] for r in per_run)
        m["run_ms"] = [r["ms"] for r in per_run]
        merged.append(m)
    return merged


def fit_profile(measurements: list[dict]) -> dict:
    """The ``fit`` block of a profile: coefficients of every op from its ``fit``-role points."""
    used = [m for m in measurements if m.get("role", "fit") == "fit"]
    return {op: {"form": FORMS[op][2], "coef": [float(f"{c:.6g}") for c in fit_op(op, used)]}
            for op in N_COEF}


def profile(grid: Grid = FULL_GRID, folder: Path | None = None,
            progress: bool | None = None, runs: int = 1) -> dict:
    """Measure ``grid`` on this host (``runs`` times, see :func:`measure`) and fit the cost model:
    a profile dict (see the module doc)."""
    t0 = time.perf_counter()
    load_start = _load_avg()
    measurements = measure(grid, folder, progress, runs)
    fit = fit_profile(measurements)
    host = host_info() | {"threads": 1, "runs": runs, "load_avg_start": load_start,
                          "load_avg_end": _load_avg(), "seconds": round(time.perf_counter() - t0, 1)}
    coef = {op: fit[op]["coef"] for op in fit}
    d = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "host": host,
         "grid": grid.to_dict(), "measurements": measurements, "fit": fit,
         "accuracy": {role: accuracy(coef, [m for m in measurements if m["role"] == role])
                      for role in ("fit", "holdout")}}
    return d


def save_profile(d: dict, path: str | Path) -> Path:
    """Validate a profile dict and write it to ``path`` as JSON (atomically)."""
    try:
        validate_profile(d)
    except ConfigError as e:
        raise ConfigError(f"refusing to save an invalid profile to {path}: {e}") from None
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ConfigError(f"cannot write profile {path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(d, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_profile(path: str | Path | None = None) -> CostModel:
    """Same as :meth:`CostModel.load` (``None`` = the shipped reference profile)."""
    return CostModel.load(path)
