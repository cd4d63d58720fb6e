"""Devices, links and clusters: what the emulated edge/fog hardware looks like.

A **device** has two speeds and a memory budget. Both speeds are relative to ONE thread of a
reference host CPU, because a worker process runs the model on one torch thread:

* ``prefill_speed``: prefill (the prompt) is compute-bound, so it scales with peak FLOP/s:
  ``prefill_speed = device fp32 GFLOP/s / 100 GFLOP/s``.
* ``decode_speed``: decode (one token at a time) is memory-bandwidth-bound, so it scales with
  memory bandwidth: ``decode_speed = device GB/s / 10 GB/s``.

The reference figures (100 GFLOP/s fp32, 10 GB/s) are a *convention* for one thread of a modern
server core (two 256-bit FMA units at ~3 GHz; what one thread reaches in a STREAM copy). Device
figures are vendor peaks in fp32 (GPUs: CUDA-core fp32). Speeds may exceed 1: the runtime runs on a
dilated clock that divides every speed by one cluster-wide factor.

The **memory budget** (MiB, for weights + KV cache + activations) is scaled "as if the model were
Llama-2-7B in fp16 (13,500 MiB)": a device may use 3/4 of its RAM, and our 517 MiB fp32 model
stands in for the 13,500 MiB one::

    memory_mib = ram_gib * 1024 * 0.75 * 517 / 13500

A 16 GiB laptop gets 470.6 MiB, less than the model's 513 MiB of weights (621 MiB when split,
because the last stage carries its own lm_head copy of the tied embedding), so no edge device holds
the whole model; a 64 GiB fog server (1882.3 MiB) does. The catalog ``data/devices.json`` lists
each kind's spec figures, their source, and the derived values; the kind ``host`` means "one thread
of this host" (speeds 1.0, 16384 MiB so memory never binds).

A **link** delays a message by ``latency_ms + bytes * 8 / bandwidth``. A **cluster** names its
devices and its links: one LAN link per site (used between two devices of that site), one WAN
link (between devices of different sites) and optional per-pair overrides. Clusters are saved as
versioned JSON (``{"format": "e2llm-lite/cluster", "version": 1, ...}``) and every mistake in one
gives a :class:`~e2llm_lite.errors.ConfigError` that names the problem.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from e2llm_lite.errors import ConfigError

FORMAT = "e2llm-lite/cluster"
VERSION = 1

# The speed and memory rules (also written in data/devices.json under "rules").
REFERENCE_GFLOPS = 100.0  # fp32 GFLOP/s of one reference-host thread (a convention)
REFERENCE_GBPS = 10.0  # GB/s one reference-host thread streams from memory (a convention)
MODEL_MIB = 517.0  # our model, SmolLM2-135M in fp32
AS_IF_MODEL_MIB = 13500.0  # the model it stands in for, Llama-2-7B in fp16
USABLE_FRACTION = 0.75  # share of RAM a device may use; the rest is OS and other programs


def derive_kind(fp32_gflops: float, memory_gbps: float, ram_gib: float) -> tuple[float, float, float]:
    """Spec-sheet figures -> ``(prefill_speed, decode_speed, memory_mib)`` by the rules above."""
    memory_mib = ram_gib * 1024 * USABLE_FRACTION * MODEL_MIB / AS_IF_MODEL_MIB
    return fp32_gflops / REFERENCE_GFLOPS, memory_gbps / REFERENCE_GBPS, round(memory_mib, 1)


# ---------------------------------------------------------------- checks (one sentence each)

#: Plausible ranges (a value outside is a typo, and would overflow the emulation's clock):
#: speeds relative to one host thread (the catalog spans 0.48-28.7), memory in MiB, link
#: latency in ms, link bandwidth in Mbit/s.
SPEED_RANGE = (0.01, 1000.0)
MEMORY_RANGE_MIB = (1.0, 1e7)
LATENCY_MAX_MS = 60_000.0
BANDWIDTH_RANGE_MBPS = (0.001, 1e7)


def _in_range(value: float, what: str, low: float, high: float, unit: str = "") -> float:
    """``value`` if ``low <= value <= high`` (inf passes an infinite ``high``), else ConfigError."""
    if not low <= value <= high:
        raise ConfigError(f"{what} must be between {low:g} and {high:g}{unit}, got {value:g}")
    return value


def _number(value, what: str, *, positive: bool = True, allow_inf: bool = False) -> float:
    """``value`` as a float, or ConfigError if it is not a (positive / non-negative) number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ConfigError(f"{what} must be a finite number, got {value}")
    if positive and value <= 0:
        raise ConfigError(f"{what} must be > 0, got {value:g}")
    if not positive and value < 0:
        raise ConfigError(f"{what} must be >= 0, got {value:g}")
    return value


def _text(value, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or not (value or allow_empty):
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _object(d, what: str) -> dict:
    if not isinstance(d, dict):
        raise ConfigError(f"{what} must be a JSON object, got {type(d).__name__}")
    return d


def _keys(d, what: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    """Check that ``d`` is a JSON object with all the required keys and no unknown ones."""
    _object(d, what)
    if missing := sorted(required - d.keys()):
        raise ConfigError(f"{what} is missing {', '.join(map(repr, missing))}")
    if extra := sorted(d.keys() - required - optional):
        allowed = ", ".join(sorted(required | optional))
        raise ConfigError(f"{what} has unknown key(s) {', '.join(map(repr, extra))}; allowed: {allowed}")
    return d


# ---------------------------------------------------------------- catalog

def _data():
    return files("e2llm_lite.data")


@functools.cache
def _catalog() -> dict:
    return json.loads(_data().joinpath("devices.json").read_text(encoding="utf-8"))["kinds"]


def load_catalog() -> dict[str, dict]:
    """The device kinds of ``data/devices.json``: kind -> {tier, site, description, spec, speeds, memory_mib}."""
    return copy.deepcopy(_catalog())


def _kind(kind) -> dict:
    if not isinstance(kind, str) or kind not in _catalog():
        raise ConfigError(f"unknown device kind {kind!r}; known kinds: {', '.join(sorted(_catalog()))}")
    return _catalog()[kind]


# ---------------------------------------------------------------- devices and links

@dataclass(frozen=True)
class DeviceSpec:
    """One emulated device.

    name: unique within its cluster. kind: a catalog kind (see :func:`load_catalog`).
    prefill_speed, decode_speed: speed of the prefill / decode phase relative to one thread of the
    reference host (dimensionless, > 0). memory_mib: budget for weights + KV cache + activations,
    in scaled MiB. site: where the device sits ("home", "edge", "fog", ...); selects its links.
    """

    name: str
    kind: str
    prefill_speed: float
    decode_speed: float
    memory_mib: float
    site: str = "edge"

    def __post_init__(self):
        _text(self.name, "device name")
        _kind(self.kind)
        _text(self.site, f"device {self.name!r}: site")
        for f in ("prefill_speed", "decode_speed", "memory_mib"):
            object.__setattr__(self, f, _number(getattr(self, f), f"device {self.name!r}: {f}"))
        for f in ("prefill_speed", "decode_speed"):
            _in_range(getattr(self, f), f"device {self.name!r}: {f}", *SPEED_RANGE,
                      " (times one host thread)")
        _in_range(self.memory_mib, f"device {self.name!r}: memory_mib", *MEMORY_RANGE_MIB, " MiB")

    @classmethod
    def from_kind(cls, kind: str, name: str, **overrides) -> DeviceSpec:
        """A device of a catalog kind; ``overrides`` (prefill_speed, decode_speed, memory_mib, site) win."""
        entry = _kind(kind)
        values = {f: entry[f] for f in ("prefill_speed", "decode_speed", "memory_mib", "site")}
        return cls(name=name, kind=kind, **(values | overrides))


def ms_per_byte(bandwidth_mbps):
    """ms one byte takes on a link of ``bandwidth_mbps`` Mbit/s: ``8 / (bandwidth * 1e6) * 1e3``
    (0 for an infinite bandwidth). Element-wise on numpy arrays."""
    return 8.0 / (bandwidth_mbps * 1e6) * 1e3


def transfer_ms(nbytes, latency_ms, bandwidth_mbps):
    """**The link formula**: ms to send ``nbytes`` bytes over a link of ``latency_ms`` ms and
    ``bandwidth_mbps`` Mbit/s, ``latency + bytes * ms_per_byte(bandwidth)``. The planner's cost
    arrays, the cost model, the runtime's emulated links and the simulator all use this one
    function. Element-wise on numpy arrays."""
    return latency_ms + nbytes * ms_per_byte(bandwidth_mbps)


@dataclass(frozen=True)
class Link:
    """A network link: ``bandwidth_mbps`` in Mbit/s (> 0), ``latency_ms`` in ms (>= 0)."""

    bandwidth_mbps: float
    latency_ms: float

    def __post_init__(self):
        object.__setattr__(self, "bandwidth_mbps", _number(self.bandwidth_mbps, "bandwidth_mbps", allow_inf=True))
        object.__setattr__(self, "latency_ms", _number(self.latency_ms, "latency_ms", positive=False))
        if not math.isinf(self.bandwidth_mbps):  # inf: a device talking to itself
            _in_range(self.bandwidth_mbps, "bandwidth_mbps", *BANDWIDTH_RANGE_MBPS, " Mbit/s")
        _in_range(self.latency_ms, "latency_ms", 0.0, LATENCY_MAX_MS, " ms")

    @classmethod
    def local(cls) -> Link:
        """A device talking to itself: infinite bandwidth, zero latency."""
        return cls(math.inf, 0.0)

    def transfer_ms(self, nbytes: float) -> float:
        """Time in ms to send ``nbytes`` bytes over this link (:func:`transfer_ms`)."""
        return transfer_ms(nbytes, self.latency_ms, self.bandwidth_mbps)

    def to_dict(self) -> dict:
        return {"bandwidth_mbps": self.bandwidth_mbps, "latency_ms": self.latency_ms}

    @classmethod
    def from_dict(cls, d, what: str = "link") -> Link:
        _keys(d, what, {"bandwidth_mbps", "latency_ms"})
        bandwidth = _number(d["bandwidth_mbps"], f"{what}: bandwidth_mbps")  # finite in files
        return cls(bandwidth, _number(d["latency_ms"], f"{what}: latency_ms", positive=False))


# Typical links (documented figures, used by the presets and make_cluster).
LOOPBACK = Link(100_000.0, 0.0)  # 100 Gbit/s, 0 ms: processes on one host
ETHERNET = Link(1000.0, 0.5)  # wired gigabit home/office LAN
WIFI = Link(200.0, 3.0)  # Wi-Fi 5/6 as actually achieved
WAN = Link(100.0, 20.0)  # edge <-> fog over the internet / metro network


# ---------------------------------------------------------------- cluster

@dataclass
class Cluster:
    """Devices and the links between them.

    lan: site -> Link between two devices of that site (every site with devices needs one).
    wan: Link between devices of different sites (needed when there are several sites).
    pairs: (name_a, name_b) -> Link, a symmetric override for one pair of devices.
    """

    name: str
    devices: list[DeviceSpec]
    lan: dict[str, Link]
    wan: Link | None = None
    pairs: dict[tuple[str, str], Link] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        _text(self.name, "cluster name")
        if not self.devices:
            raise ConfigError(f"cluster {self.name!r} has no devices; give at least one")
        seen = set()
        for d in self.devices:
            if d.name in seen:
                raise ConfigError(f"device name {d.name!r} is used twice; device names must be unique")
            seen.add(d.name)
        sites = sorted({d.site for d in self.devices})
        for site in sites:
            if site not in self.lan:
                raise ConfigError(f"site {site!r} has no LAN link; add it under links.lan")
        if len(sites) > 1 and self.wan is None:
            raise ConfigError(f"devices sit on several sites ({', '.join(sites)}) but no WAN link is given; add links.wan")
        pairs = {}
        for (a, b), link in self.pairs.items():
            for n in (a, b):
                if n not in seen:
                    raise ConfigError(f"link pair ({a!r}, {b!r}) names unknown device {n!r}; devices: {', '.join(self.names)}")
            if a == b:
                raise ConfigError(f"link pair ({a!r}, {b!r}) joins a device to itself")
            pairs[tuple(sorted((a, b)))] = link
        self.pairs = pairs

    # -- lookup
    def __len__(self) -> int:
        return len(self.devices)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.devices]

    def device(self, name: str | int) -> DeviceSpec:
        """The device with this name (or index)."""
        if isinstance(name, int) and not isinstance(name, bool) and -len(self) <= name < len(self):
            return self.devices[name]
        for d in self.devices:
            if d.name == name:
                return d
        raise ConfigError(f"cluster {self.name!r} has no device {name!r}; devices: {', '.join(self.names)}")

    def link(self, a: str | int, b: str | int) -> Link:
        """The link between two devices (names or indices): pair override, else LAN, else WAN."""
        da, db = self.device(a), self.device(b)
        if da.name == db.name:
            return Link.local()
        if (key := tuple(sorted((da.name, db.name)))) in self.pairs:
            return self.pairs[key]
        return self.lan[da.site] if da.site == db.site else self.wan

    def subset(self, names: list[str | int], name: str | None = None) -> Cluster:
        """A cluster of just these devices (in this order), with the links that concern them."""
        devices = [self.device(n) for n in names]
        keep = {d.name for d in devices}
        sites = {d.site for d in devices}
        return Cluster(
            name=name or self.name, devices=devices,
            lan={s: l for s, l in self.lan.items() if s in sites},
            wan=self.wan if len(sites) > 1 else None,
            pairs={k: l for k, l in self.pairs.items() if set(k) <= keep},
            description=self.description,
        )

    # -- JSON
    def to_dict(self) -> dict:
        """The versioned JSON form; every device is written in full (no catalog lookup needed)."""
        links = {"lan": {s: l.to_dict() for s, l in self.lan.items()}}
        if self.wan is not None:
            links["wan"] = self.wan.to_dict()
        if self.pairs:
            links["pairs"] = [{"a": a, "b": b, **l.to_dict()} for (a, b), l in self.pairs.items()]
        return {
            "format": FORMAT, "version": VERSION, "name": self.name, "description": self.description,
            "devices": [
                {"name": d.name, "kind": d.kind, "site": d.site, "prefill_speed": d.prefill_speed,
                 "decode_speed": d.decode_speed, "memory_mib": d.memory_mib}
                for d in self.devices
            ],
            "links": links,
        }

    @classmethod
    def from_dict(cls, d) -> Cluster:
        """Parse and validate the JSON form; a device entry needs only name + kind, the rest
        (site, speeds, memory) comes from the catalog unless given."""
        _keys(d, "cluster", {"format", "version", "name", "devices", "links"}, {"description"})
        if d["format"] != FORMAT:
            raise ConfigError(f"format must be {FORMAT!r}, got {d['format']!r}")
        if d["version"] != VERSION or type(d["version"]) is not int:
            raise ConfigError(f"unsupported version: expected {VERSION}, got {d['version']!r}")
        if not isinstance(d["devices"], list):
            raise ConfigError(f"devices must be a JSON list, got {type(d['devices']).__name__}")
        devices = []
        for i, e in enumerate(d["devices"]):
            what = f"devices[{i}]"
            _keys(e, what, {"name", "kind"}, {"site", "prefill_speed", "decode_speed", "memory_mib"})
            overrides = {k: v for k, v in e.items() if k not in ("name", "kind")}
            devices.append(DeviceSpec.from_kind(_text(e["kind"], f"{what}: kind"), _text(e["name"], f"{what}: name"), **overrides))
        links = _keys(d["links"], "links", {"lan"}, {"wan", "pairs"})
        _object(links["lan"], "links.lan")
        pairs = links.get("pairs", [])
        if not isinstance(pairs, list):
            raise ConfigError(f"links.pairs must be a JSON list, got {type(pairs).__name__}")
        pair_links = {}
        for i, p in enumerate(pairs):
            _keys(p, f"links.pairs[{i}]", {"a", "b", "bandwidth_mbps", "latency_ms"})
            key = (_text(p["a"], f"links.pairs[{i}]: a"), _text(p["b"], f"links.pairs[{i}]: b"))
            pair_links[key] = Link.from_dict({k: p[k] for k in ("bandwidth_mbps", "latency_ms")}, f"links.pairs[{i}]")
        return cls(
            name=_text(d["name"], "cluster name"), devices=devices,
            lan={site: Link.from_dict(l, f"links.lan.{site}") for site, l in links["lan"].items()},
            wan=Link.from_dict(links["wan"], "links.wan") if "wan" in links else None,
            pairs=pair_links, description=_text(d.get("description", ""), "description", allow_empty=True),
        )

    def save(self, path: str | Path) -> None:
        """Write the versioned JSON form to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Cluster:
        """Read and validate a cluster file; every problem is a ConfigError naming the file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read cluster file {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"cluster file {path} is not UTF-8 text (is it a JSON file?)") from None
        return _parse(text, str(path))


def _parse(text: str, source: str) -> Cluster:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    try:
        return Cluster.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


# ---------------------------------------------------------------- presets and defaults

def list_presets() -> list[str]:
    """Names of the preset clusters shipped in ``data/clusters/``."""
    return sorted(p.name[:-5] for p in _data().joinpath("clusters").iterdir() if p.name.endswith(".json"))


def preset(name: str) -> Cluster:
    """A preset cluster by name, e.g. ``preset("home4")``."""
    if name not in list_presets():
        raise ConfigError(f"unknown preset cluster {name!r}; presets: {', '.join(list_presets())}")
    return _parse(_data().joinpath("clusters", f"{name}.json").read_text(encoding="utf-8"), f"preset {name}")


def load_cluster(name_or_path: str) -> Cluster:
    """A preset by name (``home4``) or a cluster file by path; one ConfigError naming both
    possibilities if it is neither."""
    if name_or_path in list_presets():
        return preset(name_or_path)
    if not Path(name_or_path).exists():
        raise ConfigError(f"no cluster file or preset named {name_or_path!r}; presets: "
                          f"{', '.join(list_presets())}")
    return Cluster.load(name_or_path)


def make_cluster(kinds: list[str] | int, *, name: str | None = None,
                 lan: Link | None = None, wan: Link = WAN) -> Cluster:
    """A cluster of catalog devices named ``<kind>-<i>``, each on its kind's default site.

    ``kinds`` as an int N means N ``host`` devices (speed 1.0, memory not binding) over LOOPBACK.
    Every site gets the same ``lan`` (default LOOPBACK for hosts only, else ETHERNET); ``wan``
    joins different sites.
    """
    if isinstance(kinds, int) and not isinstance(kinds, bool):
        if kinds < 1:
            raise ConfigError(f"a cluster needs at least 1 device, got {kinds}")
        kinds = ["host"] * kinds
    devices = [DeviceSpec.from_kind(k, f"{k}-{i}") for i, k in enumerate(kinds)]
    sites = {d.site for d in devices}
    lan = lan or (LOOPBACK if sites == {"host"} else ETHERNET)
    return Cluster(name=name or f"custom{len(devices)}", devices=devices,
                   lan={s: lan for s in sites}, wan=wan if len(sites) > 1 else None)


def default_cluster(n: int) -> Cluster:
    """N host threads over loopback: the cluster of ``e2llm-lite generate --devices N``."""
    return make_cluster(n, name=f"host{n}")
