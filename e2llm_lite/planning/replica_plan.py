"""One planned replica (:class:`ReplicaPlan`): its devices and layer ranges, its role, the memory
reserve it was planned with and the figures of its split (:class:`SplitFigures`); its JSON form is
a replica of ``plan.json``.

A **replica** is a group of devices that together hold one whole copy of the model, split into
contiguous layer ranges (a pipeline), with one **role**:

* ``"prefill"`` (E2LLM's PREFILL, Splitwise's prompt machine): runs prompts only. Prompts are
  pipelined — a new prompt enters the first stage as soon as it is free — so the replica's
  **period** (seconds between two prompts it can start) is its slowest stage's time.
* ``"decoder"`` (E2LLM's DECODER, Splitwise's token machine): generates tokens for up to ``B``
  sequences at once (continuous batching). The batch of ``B`` circulates through the stages; one
  trip emits one token for every sequence, so the replica emits ``B / trip`` tokens per second
  (micro-batching several batches through the pipeline at once is *not* modelled).
* ``"both"`` (colocated, no role separation): prompts and the decode batch share the devices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ConfigError

__all__ = ["ROLES", "ReplicaPlan", "SplitFigures", "check_role"]

#: The roles a replica can have.
ROLES = ("prefill", "decoder", "both")


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLES`, else ValueError."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class SplitFigures:
    """What one split of a replica achieves (the planner's result for a split; s and ms).

    ``prefill_period_s``: the slowest prefill stage (the replica's prefill service time);
    ``prefill_latency_s``: the sum of its prefill stages (one prompt's trip, part of the TTFT);
    ``decode_step_s``: the sum of its decode stages at its batch (one decode trip = the time
    between two tokens of a sequence); ``prefill_stage_ms`` / ``decode_stage_ms``: per stage.
    A phase the role does not run is None. ``exact``: the DP that chose the split was exact.
    """

    prefill_period_s: float | None
    prefill_latency_s: float | None
    decode_step_s: float | None
    prefill_stage_ms: tuple[float, ...] | None
    decode_stage_ms: tuple[float, ...] | None
    exact: bool = True

    @classmethod
    def of_stage_times(cls, prefill_ms, decode_ms, exact: bool) -> "SplitFigures":
        """From the per-stage ms of each phase (None where the role does not run it)."""
        return cls(None if prefill_ms is None else max(prefill_ms) / 1e3,
                   None if prefill_ms is None else sum(prefill_ms) / 1e3,
                   None if decode_ms is None else sum(decode_ms) / 1e3,
                   None if prefill_ms is None else tuple(prefill_ms),
                   None if decode_ms is None else tuple(decode_ms), exact)


@dataclass(frozen=True)
class ReplicaPlan:
    """One replica: its devices in pipeline order with their layer ranges, its role and figures.

    ``stages``: ``((device name, start, end), ...)`` (``end`` exclusive, covering 0..30).
    ``batch``: decode batch B (1 for a prefill replica). ``kv_tokens``, ``act_tokens``,
    ``logit_rows``: the memory reserve it was planned with (:mod:`~e2llm_lite.planning.reserve`).
    ``prefill_period_s``, ``prefill_latency_s``: slowest prefill stage / sum of prefill stages (s);
    ``decode_step_s``: one decode trip at batch B (s; None for a prefill replica).
    ``prefill_stage_ms`` / ``decode_stage_ms``: per-stage times (ms) of each phase on this split.
    ``exact``: the DP was exact (False above 12 devices). ``name``: e.g. ``"r0"``.
    """

    role: str
    stages: tuple[tuple[str, int, int], ...]
    batch: int
    kv_tokens: int
    act_tokens: int
    logit_rows: int
    prefill_period_s: float | None
    prefill_latency_s: float | None
    decode_step_s: float | None
    prefill_stage_ms: tuple[float, ...] | None = None
    decode_stage_ms: tuple[float, ...] | None = None
    exact: bool = True
    name: str = "r0"

    @property
    def devices(self) -> tuple[str, ...]:
        """Device names in pipeline order."""
        return tuple(d for d, _, _ in self.stages)

    @property
    def prefill_rate(self) -> float:
        """Prompts per second it can start (1 / period); 0 for a decoder."""
        if self.role == "decoder" or not self.prefill_period_s:
            return 0.0
        return 1.0 / self.prefill_period_s

    @property
    def tokens_per_s(self) -> float:
        """Decode tokens per second (B / trip); 0 for a prefill replica."""
        if self.role == "prefill" or not self.decode_step_s:
            return 0.0
        return self.batch / self.decode_step_s

    @property
    def figures(self) -> SplitFigures:
        """The figures of its split."""
        return SplitFigures(self.prefill_period_s, self.prefill_latency_s, self.decode_step_s,
                            self.prefill_stage_ms, self.decode_stage_ms, self.exact)

    @classmethod
    def build(cls, role: str, stages, batch: int, reserve: tuple[int, int, int],
              figures: SplitFigures, name: str = "r0") -> "ReplicaPlan":
        """The one way the planner makes a replica: ``stages`` ((device name, start, end), ...),
        decode batch, reserve ``(kv_tokens, act_tokens, logit_rows)`` and the split's figures."""
        kv, act, rows = reserve
        f = figures
        return cls(role=check_role(role), stages=tuple(stages), batch=batch, kv_tokens=kv,
                   act_tokens=act, logit_rows=rows, prefill_period_s=f.prefill_period_s,
                   prefill_latency_s=f.prefill_latency_s, decode_step_s=f.decode_step_s,
                   prefill_stage_ms=f.prefill_stage_ms, decode_stage_ms=f.decode_stage_ms,
                   exact=f.exact, name=name)

    def with_name(self, name: str) -> "ReplicaPlan":
        return replace(self, name=name)

    def with_role(self, role: str) -> "ReplicaPlan":
        return replace(self, role=check_role(role))

    def to_dict(self) -> dict:
        """The JSON form (exact floats: a plan read back is the same plan)."""
        def tup(x):
            return None if x is None else list(x)

        return {
            "name": self.name, "role": self.role,
            "stages": [{"device": d, "start": s, "end": e} for d, s, e in self.stages],
            "batch": self.batch, "kv_tokens": self.kv_tokens, "act_tokens": self.act_tokens,
            "logit_rows": self.logit_rows, "exact": self.exact,
            "predicted": {
                "prefill_period_s": self.prefill_period_s,
                "prefill_latency_s": self.prefill_latency_s,
                "decode_step_s": self.decode_step_s,
                "prefill_rate_rps": self.prefill_rate, "tokens_per_s": self.tokens_per_s,
                "prefill_stage_ms": tup(self.prefill_stage_ms),
                "decode_stage_ms": tup(self.decode_stage_ms),
            },
        }

    @classmethod
    def from_dict(cls, d, what: str = "replica") -> "ReplicaPlan":
        if not isinstance(d, dict):
            raise ConfigError(f"{what} must be a JSON object, got {type(d).__name__}")
        for k in ("role", "stages", "batch", "kv_tokens", "act_tokens", "logit_rows"):
            if k not in d:
                raise ConfigError(f"{what} is missing {k!r}")
        if d["role"] not in ROLES:
            raise ConfigError(f"{what}: role must be one of {', '.join(ROLES)}, got {d['role']!r}")
        if not isinstance(d["stages"], list) or not d["stages"]:
            raise ConfigError(f"{what}: stages must be a non-empty JSON list")
        stages = []
        for i, s in enumerate(d["stages"]):
            if not isinstance(s, dict) or not {"device", "start", "end"} <= s.keys():
                raise ConfigError(f"{what}: stages[{i}] must be an object with device, start, end")
            if not isinstance(s["device"], str) or not all(
                    isinstance(s[k], int) and not isinstance(s[k], bool) for k in ("start", "end")):
                raise ConfigError(f"{what}: stages[{i}] needs a device name and integer start/end")
            stages.append((s["device"], s["start"], s["end"]))
        for k in ("batch", "kv_tokens", "act_tokens", "logit_rows"):
            if isinstance(d[k], bool) or not isinstance(d[k], int) or d[k] < 1:
                raise ConfigError(f"{what}: {k} must be a whole number >= 1, got {d[k]!r}")
        p = d.get("predicted") or {}

        def num(k):
            v = p.get(k)
            return None if v is None else float(v)

        def tup(k):
            v = p.get(k)
            return None if v is None else tuple(float(x) for x in v)

        return cls(role=d["role"], stages=tuple(stages), batch=d["batch"], kv_tokens=d["kv_tokens"],
                   act_tokens=d["act_tokens"], logit_rows=d["logit_rows"],
                   prefill_period_s=num("prefill_period_s"), prefill_latency_s=num("prefill_latency_s"),
                   decode_step_s=num("decode_step_s"), prefill_stage_ms=tup("prefill_stage_ms"),
                   decode_stage_ms=tup("decode_stage_ms"), exact=bool(d.get("exact", True)),
                   name=str(d.get("name", "r0")))
