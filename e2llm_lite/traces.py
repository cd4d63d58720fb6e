"""Requests and trace CSVs: the rows a workload replays (:mod:`e2llm_lite.workload` builds on them).

:class:`Request` — one request: arrival time (s), prompt tokens, output tokens.

:class:`Trace`, :func:`read_trace`, :func:`load_trace` — a trace CSV
    Header ``TIMESTAMP,ContextTokens,GeneratedTokens`` (names matched case-insensitively, extra
    columns ignored). ``TIMESTAMP`` is either a date-time such as ``2023-11-16 18:15:46.6805900``
    (any number of fractional digits; an optional ``Z`` / ``+HH:MM`` offset; naive times are read
    as UTC) or a number of seconds. Rules, none of them silent:

    * missing file, no data rows, missing columns, a malformed row (line number and value) or a
      negative token count: :class:`~e2llm_lite.errors.ConfigError`;
    * a token count of **0** is raised to 1 (a request still needs its one prefill / decode
      step); such rows are counted in ``Trace.adjusted_rows`` and a warning names how many (the
      2023 Azure traces have none);
    * rows whose timestamp goes backwards are **sorted** into arrival order (stable sort), counted
      in ``Trace.reordered_rows``, with a warning (the 2023 Azure traces are already in order);
    * arrivals are seconds after the first (earliest) row; request ids are 0..n-1 in arrival order.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = ["TRACE_COLUMNS", "Request", "Trace", "load_trace", "parse_timestamp", "length_stats", "read_only", "read_trace",
           "request_stats"]

TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


# --------------------------------------------------------------------------------------------
# Request
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One inference request: ``arrival_s`` seconds after the start, ``prompt_tokens`` to prefill,
    ``output_tokens`` (>= 1) to generate (the first one comes out of the prefill)."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int

    def __post_init__(self):
        if not (math.isfinite(self.arrival_s) and self.arrival_s >= 0):
            raise ValueError(f"request {self.id}: arrival_s must be finite and >= 0, got {self.arrival_s}")
        if self.prompt_tokens < 1:
            raise ValueError(f"request {self.id}: prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.output_tokens < 1:
            raise ValueError(f"request {self.id}: output_tokens must be >= 1, got {self.output_tokens}")


def request_stats(requests: list[Request]) -> dict:
    """Summary of a request list: count, duration (s, first to last arrival), mean rate (req/s,
    ``(count - 1) / duration``), inter-arrival CV, and median / mean / P90 of prompt and output
    tokens."""
    if not requests:
        raise ValueError("no requests")
    t = np.array([r.arrival_s for r in requests], dtype=float)
    p = np.array([r.prompt_tokens for r in requests], dtype=float)
    o = np.array([r.output_tokens for r in requests], dtype=float)
    out = {"count": len(requests), "duration_s": float(t.max() - t.min())}
    out["rate"] = _rate(t)
    gaps = np.diff(np.sort(t))
    out["interarrival_cv"] = float(gaps.std() / gaps.mean()) if len(gaps) and gaps.mean() > 0 else float("nan")
    out.update(length_stats(p, o))
    return out


def _rate(t: np.ndarray) -> float:
    span = float(t.max() - t.min()) if len(t) else 0.0
    return (len(t) - 1) / span if len(t) > 1 and span > 0 else float("nan")


def length_stats(p: np.ndarray, o: np.ndarray) -> dict:
    """Median, mean and P90 of prompt (``p``) and output (``o``) token counts."""
    out = {}
    for name, x in (("prompt", p), ("output", o)):
        out[f"{name}_median"] = float(np.median(x))
        out[f"{name}_mean"] = float(np.mean(x))
        out[f"{name}_p90"] = float(np.percentile(x, 90))
    return out


# --------------------------------------------------------------------------------------------
# Trace CSV
# --------------------------------------------------------------------------------------------

_DATETIME = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d+))?\s*"
    r"(Z|[+-]\d{2}:?\d{2})?$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_timestamp(text: str) -> float:
    """Seconds (float) of a trace timestamp: a date-time ``YYYY-MM-DD HH:MM:SS[.fraction][offset]``
    (any number of fractional digits, e.g. ``2023-11-16 18:15:46.6805900``; ``T`` or space;
    offset ``Z`` / ``+HH:MM`` / ``+HHMM``; naive = UTC), in seconds since 1970, or a plain number
    of seconds. Raises ``ValueError`` on anything else."""
    s = text.strip()
    m = _DATETIME.match(s)
    if m is None:
        value = float(s)  # ValueError if not a number either
        if not math.isfinite(value):
            raise ValueError(f"not a finite time: {text!r}")
        return value
    y, mo, d, hh, mm, ss, frac, tz = m.groups()
    offset = timedelta(0)
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        offset = sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    dt = datetime(int(y), int(mo), int(d), int(hh), int(mm), int(ss), tzinfo=timezone(offset))
    whole = (dt - _EPOCH) // timedelta(seconds=1)  # exact integer seconds
    return float(whole) + (float("0." + frac) if frac else 0.0)


def _parse_count(text: str) -> int:
    s = text.strip()
    try:
        return int(s)
    except ValueError:
        f = float(s)  # ValueError if not a number
        if not (math.isfinite(f) and f.is_integer()):
            raise ValueError(f"not a whole number: {text!r}") from None
        return int(f)


@dataclass(frozen=True, eq=False)
class Trace:
    """A trace CSV as read by :func:`read_trace`: arrays in arrival order.

    ``arrival_s`` (float, s) is relative to the first (earliest) row; ``prompt_tokens`` and
    ``output_tokens`` (int, >= 1). ``adjusted_rows``: rows whose 0 token count was raised to 1;
    ``reordered_rows``: rows moved by sorting the timestamps (0 if the file was in order).
    """

    path: str
    arrival_s: np.ndarray = field(repr=False)
    prompt_tokens: np.ndarray = field(repr=False)
    output_tokens: np.ndarray = field(repr=False)
    adjusted_rows: int = 0
    reordered_rows: int = 0

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        """First to last arrival (s)."""
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate(self) -> float:
        """Mean arrival rate (req/s) = ``(len - 1) / duration_s``; NaN if the duration is 0."""
        return _rate(self.arrival_s)

    def window(self, start_s: float = 0.0, limit: int | None = None) -> "Trace":
        """The rows arriving at or after ``start_s`` (s from the first row), at most ``limit`` of
        them, with arrivals re-based so that ``start_s`` is time 0."""
        if not (math.isfinite(start_s) and start_s >= 0):
            raise ValueError(f"start_s must be finite and >= 0, got {start_s}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        i = int(np.searchsorted(self.arrival_s, start_s, side="left"))
        j = len(self) if limit is None else min(len(self), i + limit)
        if i >= len(self):
            raise ConfigError(f"trace {self.path}: no request arrives at or after start_s={start_s} s "
                              f"(it lasts {self.duration_s:.1f} s)")
        if i == 0 and j == len(self) and start_s == 0:
            return self
        return replace(self, arrival_s=read_only(self.arrival_s[i:j] - start_s),
                       prompt_tokens=self.prompt_tokens[i:j], output_tokens=self.output_tokens[i:j])

    def requests(self) -> list[Request]:
        """The rows as requests (ids 0..n-1 in arrival order), lengths unchanged."""
        return [Request(i, float(t), int(p), int(o)) for i, (t, p, o) in
                enumerate(zip(self.arrival_s, self.prompt_tokens, self.output_tokens))]

    def stats(self) -> dict:
        """Count, duration, rate, inter-arrival CV, prompt / output median / mean / P90 (raw,
        unclipped lengths), adjusted and reordered rows."""
        gaps = np.diff(self.arrival_s)
        out = {"count": len(self), "duration_s": self.duration_s, "rate": self.rate,
               "interarrival_cv": float(gaps.std() / gaps.mean()) if len(gaps) and gaps.mean() > 0
               else float("nan")}
        out.update(length_stats(self.prompt_tokens, self.output_tokens))
        out["adjusted_rows"] = self.adjusted_rows
        out["reordered_rows"] = self.reordered_rows
        return out


def read_only(a: np.ndarray) -> np.ndarray:
    """A contiguous, read-only view of ``a`` (trace arrays are shared through caches)."""
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def read_trace(path: str | os.PathLike) -> Trace:
    """Read a trace CSV (header ``TIMESTAMP,ContextTokens,GeneratedTokens``) into a :class:`Trace`.

    See the module docstring for the rules (0 counts -> 1, backwards timestamps sorted, both
    counted and warned about; everything else malformed -> :class:`ConfigError`). Results are
    cached per (file, modification time, size).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"trace file not found: {p}")
    if not p.is_file():
        raise ConfigError(f"trace path is not a file: {p}")
    st = p.stat()
    trace = _read_trace_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)
    if trace.adjusted_rows:
        warnings.warn(f"trace {p}: {trace.adjusted_rows} row(s) had a token count of 0, raised to 1",
                      stacklevel=2)
    if trace.reordered_rows:
        warnings.warn(f"trace {p}: timestamps go backwards; {trace.reordered_rows} row(s) were "
                      "sorted into arrival order", stacklevel=2)
    return trace


@lru_cache(maxsize=8)
def _read_trace_cached(path: str, mtime_ns: int, size: int) -> Trace:
    expected = ", ".join(TRACE_COLUMNS)
    try:
        return _read_rows(path, expected)
    except UnicodeDecodeError:
        raise ConfigError(f"trace {path} is not UTF-8 text (expected a CSV file with columns "
                          f"{expected})") from None


def _read_rows(path: str, expected: str) -> Trace:
    """The body of :func:`read_trace` (``expected``: the column names, for messages)."""
    times: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    adjusted = 0
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ConfigError(f"trace {path} is empty: expected a header with columns {expected}") from None
        except csv.Error as e:
            raise ConfigError(f"trace {path}, line 1: {e}") from None
        names = [h.strip().lower() for h in header]
        missing = [c for c in TRACE_COLUMNS if c.lower() not in names]
        if missing:
            raise ConfigError(f"trace {path}: header {header!r} lacks column(s) {', '.join(missing)}; "
                              f"expected columns {expected}")
        idx = [names.index(c.lower()) for c in TRACE_COLUMNS]
        width = max(idx) + 1
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue  # blank line (e.g. a trailing newline)
                if len(row) < width:
                    raise ConfigError(f"trace {path}, line {line}: expected {len(header)} fields "
                                      f"({expected}), got {len(row)}: {','.join(row)!r}")
                ts, ctx, gen = (row[i] for i in idx)
                try:
                    t = parse_timestamp(ts)
                except ValueError:
                    raise ConfigError(f"trace {path}, line {line}: bad TIMESTAMP {ts!r} (expected e.g. "
                                      "'2023-11-16 18:15:46.6805900' or seconds)") from None
                counts = []
                for col, text in (("ContextTokens", ctx), ("GeneratedTokens", gen)):
                    try:
                        n = _parse_count(text)
                    except ValueError:
                        raise ConfigError(f"trace {path}, line {line}: bad {col} {text!r} "
                                          "(expected a whole number of tokens)") from None
                    if n < 0:
                        raise ConfigError(f"trace {path}, line {line}: negative {col} {text!r}")
                    counts.append(n)
                if counts[0] == 0 or counts[1] == 0:
                    adjusted += 1
                times.append(t)
                prompts.append(max(1, counts[0]))
                outputs.append(max(1, counts[1]))
        except csv.Error as e:
            raise ConfigError(f"trace {path}, line {reader.line_num}: {e}") from None
    if not times:
        raise ConfigError(f"trace {path} has a header but no data rows")
    t = np.array(times, dtype=float)
    order = np.argsort(t, kind="stable")
    reordered = int(np.count_nonzero(order != np.arange(len(t))))
    t = t[order]
    return Trace(path=path, arrival_s=read_only(t - t[0]),
                 prompt_tokens=read_only(np.array(prompts, dtype=np.int64)[order]),
                 output_tokens=read_only(np.array(outputs, dtype=np.int64)[order]),
                 adjusted_rows=adjusted, reordered_rows=reordered)


def load_trace(path: str | os.PathLike) -> list[Request]:
    """The requests of a trace CSV, in arrival order (see :func:`read_trace` for the rules and
    for the count of adjusted / reordered rows)."""
    return read_trace(path).requests()
