"""A serving plan (``plan.json``): which replicas, on which devices, with which roles and layers.

The file is versioned JSON::

    {"format": "e2llm-lite/plan", "version": 1,
     "strategy": "e2llm",                       # e2llm | splitwise | pipeline | exo | colocated | ...
     "cluster": "home4", "devices": ["pi5", ...],   # the cluster it was planned for
     "rate": 2.0,                               # requests/s it was planned for
     "workload": {"name": "conv", "mean_prompt": ..., "mean_output": ..., "design_prompt": ...,
                  "prefill_tokens": ..., "prefill_scv": ..., "arrival_scv": ...},
     "replicas": [{"name": "r0", "role": "prefill" | "decoder" | "both",
                   "stages": [{"device": "laptop", "start": 0, "end": 17}, ...],
                   "batch": 1, "kv_tokens": ..., "act_tokens": ..., "logit_rows": ...,
                   "exact": true, "predicted": {...per-replica figures...}}, ...],
     "predicted": {...the evaluator's Prediction...},
     "search": {...how it was found: seed, evaluations, generations, seconds...},
     "notes": "..."}

Layer ranges are ``[start, end)``. :meth:`Plan.validate` checks a plan against a cluster and
raises one :class:`~e2llm_lite.errors.ConfigError` sentence per problem: unknown or repeated
devices, ranges that do not cover layers 0..30 contiguously, a stage that does not fit its
device's memory (weights + the replica's KV / activation reserve,
:func:`~e2llm_lite.memory.stage_need_bytes`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, check_format
from ..memory import MIB, stage_need_bytes
from ..model import ANATOMY
from .replica_plan import ROLES, ReplicaPlan
from .workload_stats import WorkloadStats

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "STRATEGIES", "Plan"]

PLAN_FORMAT = "e2llm-lite/plan"
PLAN_VERSION = 1

#: Strategies the CLI knows (``e2llm`` = the GA; the rest are baselines).
STRATEGIES = ("e2llm", "splitwise", "pipeline", "exo", "colocated")



@dataclass
class Plan:
    """A serving plan: replicas (each a :class:`ReplicaPlan`) + what it was planned for.

    ``predicted``: the evaluator's figures (:meth:`Prediction.to_dict`); ``search``: how the plan
    was found; ``devices``: the names of the cluster's devices when it was planned.
    """

    strategy: str
    cluster: str
    replicas: list[ReplicaPlan]
    workload: WorkloadStats
    rate: float
    predicted: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    notes: str = ""

    # ---- views ----------------------------------------------------------------------------
    @property
    def used_devices(self) -> list[str]:
        return [d for r in self.replicas for d in r.devices]

    def roles(self) -> dict[str, int]:
        """How many replicas of each role."""
        return {role: sum(r.role == role for r in self.replicas) for role in ROLES
                if any(r.role == role for r in self.replicas)}

    def summary(self) -> str:
        """A few human-readable lines: the replicas and the predicted figures."""
        p = self.predicted
        lines = [f"{self.strategy} plan for cluster {self.cluster!r}: {len(self.replicas)} replica(s) "
                 f"on {len(self.used_devices)} of {len(self.devices) or '?'} devices, workload "
                 f"{self.workload.name} at {self.rate:g} requests/s"]
        for r in self.replicas:
            stages = ", ".join(f"{d}[{s},{e})" for d, s, e in r.stages)
            extra = (f"period {r.prefill_period_s * 1e3:.0f} ms" if r.role == "prefill" else
                     f"B={r.batch}, {r.tokens_per_s:.0f} tok/s" if r.role == "decoder" else
                     f"period {r.prefill_period_s * 1e3:.0f} ms, B={r.batch}, {r.tokens_per_s:.0f} tok/s")
            lines.append(f"  {r.name:>4s} {r.role:8s} {stages}  ({extra})")
        if p:
            if p.get("feasible"):
                pool = (f"decode pool {p['decode_capacity_rps']:.3g}" if p.get("decode_capacity_rps")
                        else "no decode pool")
                lines.append(
                    f"  predicted: mean waiting {p['mean_wait_s']:.4g} s, TTFT {p['ttft_s']:.4g} s, "
                    f"capacity {p['capacity_rps']:.3g} requests/s (prompts alone "
                    f"{p['prefill_capacity_rps']:.3g}, {pool}), utilisation of the prefill servers "
                    f"{p['utilisation']['prefill']:.2f}")
            else:
                lines.append(f"  predicted: INFEASIBLE at this rate — {p.get('reason', '')}")
        return "\n".join(lines)

    # ---- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "strategy": self.strategy,
                "cluster": self.cluster, "devices": list(self.devices), "rate": self.rate,
                "workload": self.workload.to_dict(),
                "replicas": [r.to_dict() for r in self.replicas],
                "predicted": self.predicted, "search": self.search, "notes": self.notes}

    @classmethod
    def from_dict(cls, d) -> "Plan":
        """Parse the JSON form (structure only; :meth:`validate` checks it against a cluster)."""
        check_format(d, "plan", PLAN_FORMAT, PLAN_VERSION, "make a new one with `e2llm-lite plan`")
        for k in ("strategy", "cluster", "rate", "workload", "replicas"):
            if k not in d:
                raise ConfigError(f"the plan is missing the field {k!r}")
        if not isinstance(d["replicas"], list) or not d["replicas"]:
            raise ConfigError("the plan's replicas must be a non-empty JSON list")
        rate = d["rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise ConfigError(f"the plan's rate must be a number > 0, got {rate!r}")
        replicas = [ReplicaPlan.from_dict(r, f"replicas[{i}]") for i, r in enumerate(d["replicas"])]
        devices = d.get("devices", [])
        if not isinstance(devices, list) or not all(isinstance(x, str) for x in devices):
            raise ConfigError("the plan's devices must be a JSON list of device names")
        return cls(strategy=str(d["strategy"]), cluster=str(d["cluster"]), replicas=replicas,
                   workload=WorkloadStats.from_dict(d["workload"]), rate=float(rate),
                   predicted=d.get("predicted") or {}, search=d.get("search") or {},
                   devices=devices, notes=str(d.get("notes", "")))

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path, cluster=None) -> "Plan":
        """Read a plan file; with ``cluster``, also :meth:`validate` it. Problems raise one
        ConfigError naming the file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read plan file {path}: {getattr(e, 'strerror', None) or e}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})") from None
        try:
            plan = cls.from_dict(d)
            if cluster is not None:
                plan.validate(cluster)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        return plan

    # ---- checks ---------------------------------------------------------------------------
    def validate(self, cluster, anatomy=ANATOMY) -> None:
        """Raise ConfigError (one sentence) unless every replica runs on ``cluster`` as planned."""
        names = set(cluster.names)
        where = f"cluster {cluster.name!r}"
        if self.cluster != cluster.name:
            where += f" (the plan was made for cluster {self.cluster!r})"
        if not self.replicas:
            raise ConfigError("the plan has no replicas")
        seen: dict[str, str] = {}
        for r in self.replicas:
            if r.role not in ROLES:
                raise ConfigError(f"replica {r.name}: role must be one of {', '.join(ROLES)}, got {r.role!r}")
            for dev, _, _ in r.stages:
                if dev not in names:
                    raise ConfigError(f"replica {r.name} uses device {dev!r}, which {where} does not "
                                      f"have (its devices: {', '.join(cluster.names)})")
                if dev in seen:
                    raise ConfigError(f"device {dev!r} appears twice (replica {seen[dev]} and replica "
                                      f"{r.name}); a device serves one stage of one replica")
                seen[dev] = r.name
            try:
                anatomy.check_split(r.stages)
            except ValueError as exc:
                raise ConfigError(f"replica {r.name}: {exc}") from None
            for dev, s, e in r.stages:
                need = stage_need_bytes(s, e, r.kv_tokens, r.act_tokens, r.logit_rows, anatomy)
                have = cluster.device(dev).memory_mib * MIB
                if need > have:
                    raise ConfigError(
                        f"replica {r.name}: device {dev!r} of {where} has {have / MIB:.1f} MiB but its "
                        f"stage (layers {s}..{e - 1}, {r.role}, batch {r.batch}) needs {need / MIB:.1f} MiB")
