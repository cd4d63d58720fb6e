"""The cost model: how long a layer range takes on a device, for prefill or decode, and how long
activations and KV caches take over a link.

Everything here is computed from a **profile** (``e2llm-lite profile`` measures one; see
:mod:`e2llm_lite.profiling`): per-layer times measured on the host with one torch thread, fitted to
the small formulas below. The library ships a **reference profile**, ``data/profile_reference.json``
(measured once on the project's 2-core machine), and ``CostModel.load()`` uses it by default, so
the planner, the simulator and the notebooks give the same numbers on every machine. A profile you
measure yourself replaces it with ``CostModel.load("my_profile.json")``.

Functional forms (ours; units ms of one host thread's CPU time, tokens, sequences)
---------------------------------------------------------------------------------
``T`` = prompt tokens, ``B`` = sequences in a decode batch, ``C`` = tokens already in each
sequence's KV cache (the new token attends to ``C + 1`` positions)::

    prefill, one decoder layer :  p0 + p1*T + p2*T^2          (weights' matmuls ~ T, attention ~ T^2)
    decode,  one decoder layer :  d0 + d1*B + d2*B*C           (read the weights once; work per
                                    + d3*x(B) + d4*g(B)        sequence; read + append each KV
                                                               cache; BLAS kernel terms, below)
    embedding lookup           :  e0 + e1*n                   (n = T for prefill, B for decode)
    final norm + lm_head       :  h0 + h1*B + h2*x(B) + h3*g(B)  (the LAST position of each
                                                               sequence only: B = 1 for a prefill)

    x(B) = B - 1 if B in {2, 3} else 0    extra passes over the weights of a small batch
    g(B) = 1 if B >= 4 else 0             the matrix-matrix kernel's extra fixed cost

Why x and g: decode is memory-bound, so batching should be almost free: the weights are read once
for all B sequences. But the host's BLAS (MKL, on the reference AMD EPYC host) multiplies a matrix
of only 2 or 3 rows as 2 or 3 matrix-vector products, reading every weight once per row, and only
from 4 rows on switches to a matrix-matrix kernel, which reads the weights once but costs a bit
more than one matrix-vector pass. So a decode step of 2 or 3 sequences costs nearly 2 or 3 single
steps, more than a step of 4 sequences (the reference profile's measurements show it). On a host
whose BLAS behaves otherwise the fit sets ``d3, d4`` (``h2, h3``) to whatever the data say, 0
included.

Every coefficient is fitted by least squares on the *relative* error with the constraint ``>= 0``
(so times grow with T and C, and with B inside each BLAS regime: 1, 2-3, >= 4). "Host ms" is the
CPU time of one thread running a step the way a device worker runs it, after a pause (see
:mod:`e2llm_lite.profiling`). Prefill starts from an empty cache and is one prompt; a
prompt on top of an existing cache (``context > 0``) or several prompts batched together were not
measured and are refused rather than guessed.

A stage = a contiguous layer range ``[start, end)`` on one device::

    host_stage_ms = (end - start) * layer_ms  (+ embedding if start == 0)  (+ norm + lm_head if end == n_layers)
    stage_ms      = host_stage_ms / device.prefill_speed   (prefill: compute-bound)
                  = host_stage_ms / device.decode_speed    (decode: memory-bandwidth-bound)

The per-stage overhead of the rotary embedding and causal mask was measured at under 0.6 ms even
for 2048 tokens (< 0.3 % of a layer), so it is not a term of its own.

Transfers (fp32): the hidden state between two stages is ``tokens * 576 * 4`` B (tokens = T for a
prefill, B for a decode step); the KV cache of ``tokens`` tokens over ``layers`` layers is
``tokens * layers * 1536`` B (2 x 3 kv-heads x 64 x 4 B). A link takes
``latency_ms + bytes * 8 / bandwidth``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum
from importlib.resources import files
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import ConfigError, check_format
from .model import ANATOMY, Anatomy

PROFILE_FORMAT = "e2llm-lite/profile"
PROFILE_VERSION = 1
REFERENCE_PROFILE = "profile_reference.json"  # in the package e2llm_lite.data (= data/)


class Phase(str, Enum):
    """The two phases of serving a request: the prompt (PREFILL) and token generation (DECODE)."""

    PREFILL = "prefill"
    DECODE = "decode"

    @classmethod
    def of(cls, phase) -> "Phase":
        try:
            return cls(phase)
        except ValueError:
            raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}") from None


# --------------------------------------------------------------------------------------------
# The functional forms: op -> (input variables, feature function, human-readable form)
# --------------------------------------------------------------------------------------------

def _f_prefill(tokens):
    t = np.asarray(tokens, dtype=float)
    return np.stack([np.ones_like(t), t, t * t], axis=-1)


SMALL_BATCH = (2, 3)  # batch sizes the host BLAS runs as separate matrix-vector products


def extra_weight_passes(batch):
    """x(B) = B - 1 for B in 2..3 (one extra read of the weights per extra row), else 0."""
    b = np.asarray(batch, dtype=float)
    return np.where((b >= SMALL_BATCH[0]) & (b <= SMALL_BATCH[-1]), b - 1, 0.0)


def matrix_kernel(batch):
    """g(B) = 1 when B >= 4 rows go through the BLAS matrix-matrix kernel, else 0."""
    return (np.asarray(batch, dtype=float) > SMALL_BATCH[-1]).astype(float)


def _f_decode(batch, context):
    b, c = np.broadcast_arrays(np.asarray(batch, dtype=float), np.asarray(context, dtype=float))
    return np.stack([np.ones_like(b), b, b * c, extra_weight_passes(b), matrix_kernel(b)], axis=-1)


def _f_head(batch):
    b = np.asarray(batch, dtype=float)
    return np.stack([np.ones_like(b), b, extra_weight_passes(b), matrix_kernel(b)], axis=-1)


def _f_affine(n):
    n = np.asarray(n, dtype=float)
    return np.stack([np.ones_like(n), n], axis=-1)


#: op -> (variables in a measurement, features(*variables) -> [..., k], the form as text)
FORMS = {
    "prefill_layer": (("tokens",), _f_prefill, "p0 + p1*tokens + p2*tokens^2  [ms per layer]"),
    "decode_layer": (("batch", "context"), _f_decode,
                     "d0 + d1*batch + d2*batch*context + d3*x(batch) + d4*g(batch)  [ms per layer]"),
    "embed": (("tokens",), _f_affine, "e0 + e1*tokens  [ms]"),
    "head": (("batch",), _f_head,
             "h0 + h1*batch + h2*x(batch) + h3*g(batch)  [ms, last position of each sequence]"),
}
N_COEF = {"prefill_layer": 3, "decode_layer": 5, "embed": 2, "head": 4}


def features(op: str, m: dict) -> np.ndarray:
    """The feature row of one measurement ``m`` (a dict with the op's variables) for ``op``."""
    names, fn, _ = FORMS[op]
    return fn(*(m[n] for n in names))


def predict_op(op: str, coef: Sequence[float], m: dict) -> float:
    """Host ms the fitted form of ``op`` gives for the variables in ``m``."""
    return float(features(op, m) @ np.asarray(coef, dtype=float))


# --------------------------------------------------------------------------------------------
# Validation of a profile (one sentence per problem; the caller prefixes the file name)
# --------------------------------------------------------------------------------------------

def _finite_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


#: A profile is plausible if no op takes more than an hour (ms) on the largest shape a run can ask
#: for: a prompt or a context of the model's 8192 tokens, a batch of 256 sequences (the reference
#: profile's worst there is about 25 s). A batch of 8192 sequences of 8192 tokens each is not a
#: shape anyone runs: a tiny profile's noisy batch*context slope would fail it for nothing.
PLAUSIBLE_SHAPE = {"tokens": 8192, "context": 8192, "batch": 256}
PLAUSIBLE_MAX_MS = 3.6e6


def _shape_text(op: str) -> str:
    return ", ".join(f"{n}={PLAUSIBLE_SHAPE[n]}" for n in FORMS[op][0])


def validate_profile(d) -> None:
    """Raise ``ConfigError`` (one sentence, no file name) unless ``d`` is a valid version-1 profile."""
    check_format(d, "profile", PROFILE_FORMAT, PROFILE_VERSION,
                 "measure a new one with `e2llm-lite profile`")
    for key, typ in (("host", dict), ("grid", dict), ("measurements", list), ("fit", dict)):
        if key not in d:
            raise ConfigError(f"the profile is missing the field {key!r}")
        if not isinstance(d[key], typ):
            raise ConfigError(f"the profile's field {key!r} must be a JSON "
                              f"{'object' if typ is dict else 'list'}, got {type(d[key]).__name__}")
    for op, k in N_COEF.items():
        entry = d["fit"].get(op)
        if not isinstance(entry, dict) or "coef" not in entry:
            raise ConfigError(f"the profile's fit has no coefficients for {op!r}")
        coef = entry["coef"]
        if (not isinstance(coef, list) or len(coef) != k
                or not all(_finite_number(c) and c >= 0 for c in coef)):
            raise ConfigError(f"fit.{op}.coef must be a list of {k} finite numbers >= 0, got {coef!r}")
    for op in N_COEF:  # a typo'd coefficient (1e308) would turn into inf / NaN stage times
        with np.errstate(over="ignore", invalid="ignore"):
            worst = predict_op(op, d["fit"][op]["coef"], PLAUSIBLE_SHAPE)
        if not worst <= PLAUSIBLE_MAX_MS:
            raise ConfigError(f"fit.{op}.coef {d['fit'][op]['coef']} predicts {worst:.3g} ms at "
                              f"{_shape_text(op)}, more than the "
                              f"{PLAUSIBLE_MAX_MS:g} ms (one hour) a plausible profile allows")
    if d["fit"]["prefill_layer"]["coef"][0] + d["fit"]["prefill_layer"]["coef"][1] <= 0:
        raise ConfigError("fit.prefill_layer predicts 0 ms for a 1-token prompt; the profile is unusable")
    if sum(d["fit"]["decode_layer"]["coef"][:2]) <= 0:
        raise ConfigError("fit.decode_layer predicts 0 ms for one sequence; the profile is unusable")
    for i, m in enumerate(d["measurements"]):
        if not isinstance(m, dict) or m.get("op") not in FORMS:
            raise ConfigError(f"measurements[{i}] must be an object whose 'op' is one of "
                              f"{', '.join(FORMS)}")
        for name in FORMS[m["op"]][0] + ("ms",):
            if not _finite_number(m.get(name)) or m[name] < 0:
                raise ConfigError(f"measurements[{i}] ({m['op']}) needs a finite number >= 0 "
                                  f"for {name!r}, got {m.get(name)!r}")


def _positive_int(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def phase_speed(device, phase) -> float:
    """The device's speed for ``phase`` relative to one host thread (checked finite and > 0)."""
    phase = Phase.of(phase)
    s = device.prefill_speed if phase is Phase.PREFILL else device.decode_speed
    if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
        raise ValueError(f"device {getattr(device, 'name', device)!r}: {phase.value}_speed must be "
                         f"a finite number > 0, got {s!r}")
    return float(s)


# --------------------------------------------------------------------------------------------
# The cost model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CostModel:
    """Fitted per-layer times (host ms) plus the model's sizes; see the module docstring.

    ``coef``: op -> coefficients of its form (:data:`FORMS`); ``host``: where the profile was
    measured; ``measurements``: the raw medians (each with ``role`` "fit" or "holdout");
    ``source``: the file it came from.
    """

    coef: dict
    host: dict = field(default_factory=dict)
    measurements: tuple = ()
    source: str = "<memory>"
    anatomy: Anatomy = ANATOMY

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "CostModel":
        """Build from a profile dict (validated; problems raise ConfigError naming ``source``)."""
        try:
            validate_profile(d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        coef = {op: tuple(float(c) for c in d["fit"][op]["coef"]) for op in N_COEF}
        return cls(coef=coef, host=dict(d["host"]), measurements=tuple(d["measurements"]),
                   source=source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "CostModel":
        """Read a profile file; ``None`` means the shipped reference profile (same on every machine).

        Every problem (unreadable, not JSON, wrong format or version, missing fields, negative or
        non-finite coefficients) raises one :class:`~e2llm_lite.errors.ConfigError` naming the file.
        """
        if path is None:
            source = f"reference profile {REFERENCE_PROFILE}"
            try:
                text = files("e2llm_lite.data").joinpath(REFERENCE_PROFILE).read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(f"cannot read the {source}: {e}") from None
        else:
            source = str(path)
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"cannot read profile file {source}: "
                                  f"{getattr(e, 'strerror', None) or e}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source}: not valid JSON at line {e.lineno}, column {e.colno} "
                              f"({e.msg}); the profile file is corrupt") from None
        return cls.from_dict(d, source)

    # ---- host times ------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.anatomy.n_layers

    def _check_shape(self, phase, tokens, batch, context) -> tuple[Phase, int, int, int]:
        phase = Phase.of(phase)
        limit = self.anatomy.max_positions
        if phase is Phase.PREFILL:
            if tokens is None:
                raise ValueError("a prefill needs tokens= (the prompt length)")
            tokens = _positive_int(tokens, "tokens")
            if batch != 1 or context != 0:
                raise ValueError("the cost model's prefill is one prompt from an empty cache "
                                 f"(batch=1, context=0), got batch={batch!r}, context={context!r}; "
                                 "add the prompts' times instead")
            if tokens > limit:
                raise ValueError(f"tokens={tokens} exceeds the model's context of {limit}")
            return phase, tokens, 1, 0
        if tokens is not None:
            raise ValueError("a decode step takes batch= (sequences) and context= (tokens already "
                             "cached per sequence), not tokens=")
        batch = _positive_int(batch, "batch")
        context = _positive_int(context, "context", minimum=0)
        if context + 1 > limit:
            raise ValueError(f"context={context} leaves no room in the model's context of {limit}")
        return phase, 0, batch, context

    def layer_ms(self, phase, *, tokens: int | None = None, batch: int = 1, context: int = 0) -> float:
        """Host ms of ONE decoder layer (one thread of the profiled host).

        prefill: ``tokens`` = prompt length (batch 1, empty cache). decode: one new token for each
        of ``batch`` sequences, each with ``context`` tokens already cached.
        """
        phase, tokens, batch, context = self._check_shape(phase, tokens, batch, context)
        if phase is Phase.PREFILL:
            return predict_op("prefill_layer", self.coef["prefill_layer"], {"tokens": tokens})
        return predict_op("decode_layer", self.coef["decode_layer"],
                          {"batch": batch, "context": context})

    def embed_ms(self, phase, *, tokens: int | None = None, batch: int = 1, context: int = 0) -> float:
        """Host ms of the embedding lookup (first stage): ``tokens`` ids (prefill) or ``batch`` (decode)."""
        phase, tokens, batch, context = self._check_shape(phase, tokens, batch, context)
        n = tokens if phase is Phase.PREFILL else batch
        return predict_op("embed", self.coef["embed"], {"tokens": n})

    def head_ms(self, phase, *, tokens: int | None = None, batch: int = 1, context: int = 0) -> float:
        """Host ms of the final norm + lm_head (last stage), for the last position of each sequence."""
        phase, tokens, batch, context = self._check_shape(phase, tokens, batch, context)
        return predict_op("head", self.coef["head"], {"batch": batch})

    def host_stage_ms(self, start: int, end: int, phase, *, tokens: int | None = None,
                      batch: int = 1, context: int = 0) -> float:
        """Host ms of layers ``[start, end)`` (+ embedding if start == 0, + head if end == n_layers)."""
        self.anatomy.check_slice(start, end)
        shape = dict(tokens=tokens, batch=batch, context=context)
        t = (end - start) * self.layer_ms(phase, **shape)
        if start == 0:
            t += self.embed_ms(phase, **shape)
        if end == self.n_layers:
            t += self.head_ms(phase, **shape)
        return t

    # ---- device times ----------------------------------------------------------------------
    def stage_ms(self, device, start: int, end: int, phase, *, tokens: int | None = None,
                 batch: int = 1, context: int = 0) -> float:
        """Device ms of the stage ``[start, end)`` on ``device`` (a DeviceSpec) for ``phase``:
        :meth:`host_stage_ms` divided by the device's speed for that phase."""
        phase = Phase.of(phase)
        return self.host_stage_ms(start, end, phase, tokens=tokens, batch=batch,
                                  context=context) / phase_speed(device, phase)

    def compute_matrix(self, devices: Iterable, phase, *, tokens: int | None = None,
                       batch: int = 1, context: int = 0) -> np.ndarray:
        """ms of layer j on device i, shape (n_devices, n_layers): the DP's ``compute`` input."""
        phase = Phase.of(phase)
        per_layer = self.layer_ms(phase, tokens=tokens, batch=batch, context=context)
        speeds = np.array([phase_speed(d, phase) for d in devices], dtype=float)
        return np.repeat((per_layer / speeds)[:, None], self.n_layers, axis=1)

    def end_extras_ms(self, devices: Iterable, phase, *, tokens: int | None = None,
                      batch: int = 1, context: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(embedding ms, norm + lm_head ms) on each device, shapes (n_devices,): the DP's
        ``extra_first_ms`` and ``extra_last_ms``."""
        phase = Phase.of(phase)
        shape = dict(tokens=tokens, batch=batch, context=context)
        speeds = np.array([phase_speed(d, phase) for d in devices], dtype=float)
        return self.embed_ms(phase, **shape) / speeds, self.head_ms(phase, **shape) / speeds

    # ---- sizes and transfers ---------------------------------------------------------------
    def hidden_state_bytes(self, tokens: int) -> int:
        """Bytes of the hidden state one stage hands the next: ``tokens * 576 * 4``."""
        return _positive_int(tokens, "tokens", minimum=0) * self.anatomy.hidden_bytes_per_token

    def kv_bytes(self, tokens: int, layers: int) -> int:
        """Bytes of the KV cache of ``tokens`` tokens over ``layers`` layers: ``tokens * layers * 1536``."""
        return (_positive_int(tokens, "tokens", minimum=0) * _positive_int(layers, "layers", minimum=0)
                * self.anatomy.kv_bytes_per_token_layer)

    @staticmethod
    def transfer_ms(link, nbytes: float) -> float:
        """ms to send ``nbytes`` over ``link`` (a devices.Link): latency + bits / bandwidth."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, float, np.integer, np.floating)) \
                or not math.isfinite(nbytes) or nbytes < 0:
            raise ValueError(f"nbytes must be a finite number >= 0, got {nbytes!r}")
        return float(link.transfer_ms(nbytes))

    def comm_matrix(self, cluster, nbytes: float) -> np.ndarray:
        """ms to send ``nbytes`` from device a to device b of ``cluster``, shape (n, n); the
        diagonal is 0. With ``nbytes = hidden_state_bytes(T)`` it is the DP's ``comm`` input."""
        n = len(cluster.devices)
        out = np.zeros((n, n))
        for a in range(n):
            for b in range(n):
                if a != b:
                    out[a, b] = self.transfer_ms(cluster.link(a, b), nbytes)
        return out

    # ---- teaching: what bounds a layer -----------------------------------------------------
    def roofline(self, phase, *, tokens: int | None = None, batch: int = 1,
                 context: int = 0) -> dict:
        """Work of one decoder layer and the rates the profiled host reached doing it.

        FLOPs = 2 x parameters x new tokens (the matmuls) + attention (4 x heads x head_dim per
        query-key pair: QK^T and AV); bytes = the layer's weights (read once per forward) + the KV
        cache read. Returns {ms, gflop, mbytes, flop_per_byte, gflops, gbps}: prefill has a high
        arithmetic intensity (compute-bound), decode a low one (memory-bound).
        """
        phase, tokens, batch, context = self._check_shape(phase, tokens, batch, context)
        a = self.anatomy
        ms = self.layer_ms(phase, tokens=tokens if phase is Phase.PREFILL else None,
                           batch=batch, context=context)
        if phase is Phase.PREFILL:
            new, pairs, kv_read = tokens, tokens * (tokens + 1) / 2, 0
        else:
            new, pairs, kv_read = batch, batch * (context + 1), batch * context
        flop = 2 * a.layer_params * new + 4 * a.n_heads * a.head_dim * pairs
        nbytes = a.layer_bytes + kv_read * a.kv_bytes_per_token_layer
        return {"ms": ms, "gflop": flop / 1e9, "mbytes": nbytes / 1e6,
                "flop_per_byte": flop / nbytes, "gflops": flop / 1e9 / (ms / 1e3),
                "gbps": nbytes / 1e9 / (ms / 1e3)}

    def device_summary(self, device, *, tokens: int = 512, context: int | None = None) -> dict:
        """How ``device`` does both phases of one request with a ``tokens``-token prompt.

        Returns ms of one layer and of the whole model (embedding + 30 layers + head) for the
        prefill, and for one decode step (batch 1, ``context`` cached tokens, default ``tokens``);
        ``prefill_tokens_per_s`` and ``decode_tokens_per_s``; ``strength`` =
        prefill_speed / decode_speed (> 1: relatively better at prefill than the host thread,
        < 1: relatively better at decode) and ``better_at`` ("prefill", "decode" or "balanced").
        """
        context = tokens if context is None else context
        n = self.n_layers
        pre = self.stage_ms(device, 0, n, Phase.PREFILL, tokens=tokens)
        dec = self.stage_ms(device, 0, n, Phase.DECODE, batch=1, context=context)
        strength = phase_speed(device, Phase.PREFILL) / phase_speed(device, Phase.DECODE)
        return {"device": getattr(device, "name", str(device)), "tokens": tokens,
                "context": context,
                "prefill_layer_ms": self.layer_ms(Phase.PREFILL, tokens=tokens) / phase_speed(device, Phase.PREFILL),
                "decode_layer_ms": self.layer_ms(Phase.DECODE, batch=1, context=context) / phase_speed(device, Phase.DECODE),
                "prefill_ms": pre, "decode_step_ms": dec,
                "prefill_tokens_per_s": tokens / pre * 1e3, "decode_tokens_per_s": 1e3 / dec,
                "strength": strength,
                "better_at": ("balanced" if abs(strength - 1) < 1e-9
                              else "prefill" if strength > 1 else "decode")}

    # ---- accuracy --------------------------------------------------------------------------
    def predict(self, m: dict) -> float:
        """Host ms the model predicts for a measurement record (op + its variables)."""
        return predict_op(m["op"], self.coef[m["op"]], m)

    def errors(self, role: str | None = "holdout") -> dict[str, dict]:
        """Relative prediction errors on the profile's own measurements of ``role`` ("fit",
        "holdout" or None for all), per op: {n, median, p90, max} (fractions, e.g. 0.05 = 5 %)."""
        return accuracy(self.coef, [m for m in self.measurements
                                    if role is None or m.get("role", "fit") == role])

    def describe(self) -> str:
        """The fitted forms with their coefficients, one line each."""
        lines = []
        for op, (_, _, form) in FORMS.items():
            c = ", ".join(f"{x:.4g}" for x in self.coef[op])
            lines.append(f"{op:14s} {form}  coef = [{c}]")
        return "\n".join(lines)


def accuracy(coef: dict, measurements: Iterable[dict]) -> dict[str, dict]:
    """Relative errors |pred - measured| / measured per op: {op: {n, median, p90, max}}."""
    rel: dict[str, list[float]] = {}
    for m in measurements:
        if m["ms"] > 0:
            pred = predict_op(m["op"], coef[m["op"]], m)
            rel.setdefault(m["op"], []).append(abs(pred - m["ms"]) / m["ms"])
    return {op: {"n": len(v), "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
                 "max": float(np.max(v))} for op, v in rel.items()}


def fit_op(op: str, measurements: Sequence[dict]) -> tuple[float, ...]:
    """Non-negative least squares on the relative error for one op's measurements.

    Minimises sum(((features . coef) - ms) / ms)^2 subject to coef >= 0. With at most five
    coefficients the exact solution is found by trying every subset of free coefficients (the
    others at 0) and keeping the best non-negative one. A feature that is 0 at every measured
    point (e.g. x(B) when no batch of 2 or 3 was measured) gets coefficient 0.
    """
    k = N_COEF[op]
    ms = [m for m in measurements if m["op"] == op and m["ms"] > 0]
    if not ms:
        raise ValueError(f"no measurements of {op!r} to fit")
    X = np.array([features(op, m) for m in ms])
    y = np.array([m["ms"] for m in ms])
    Xw, yw = X / y[:, None], np.ones_like(y)
    usable = [j for j in range(k) if np.any(X[:, j] != 0)]
    if np.linalg.matrix_rank(X[:, usable]) < len(usable):
        raise ValueError(f"the {op!r} measurements do not determine its coefficients "
                         f"({FORMS[op][2]}): measure more distinct grid points")
    best, best_res = None, math.inf
    for mask in range(1, 2 ** k):
        cols = [j for j in range(k) if mask >> j & 1]
        if not set(cols) <= set(usable):
            continue
        sol, *_ = np.linalg.lstsq(Xw[:, cols], yw, rcond=None)
        if np.any(sol < 0):
            continue
        coef = np.zeros(k)
        coef[cols] = sol
        res = float(np.sum((Xw @ coef - yw) ** 2))
        if res < best_res - 1e-15:
            best, best_res = coef, res
    return tuple(float(c) for c in best)
