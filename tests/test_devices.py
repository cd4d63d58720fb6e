"""Devices, links, clusters: catalog rules, presets, JSON round trip, validation messages."""

import json
import math
from importlib.resources import files

import pytest

from e2llm_lite.devices import (
    AS_IF_MODEL_MIB, MODEL_MIB, REFERENCE_GBPS, REFERENCE_GFLOPS, USABLE_FRACTION,
    Cluster, DeviceSpec, Link, default_cluster, derive_kind, list_presets, load_catalog,
    make_cluster, preset,
)
from e2llm_lite.errors import ConfigError

MODEL_SPLIT_MIB = 621  # weights when split: 30 x 13.5 + embedding + separate lm_head copy


def good():
    """A small valid cluster file: two sites, one pair override, one explicit override."""
    return {
        "format": "e2llm-lite/cluster", "version": 1, "name": "t",
        "devices": [
            {"name": "a", "kind": "rpi5-8gb", "site": "home"},
            {"name": "b", "kind": "rpi4-4gb", "site": "home", "decode_speed": 2.5},
            {"name": "c", "kind": "fog-server-64gb"},
        ],
        "links": {
            "lan": {"home": {"bandwidth_mbps": 1000, "latency_ms": 0.5},
                    "fog": {"bandwidth_mbps": 10000, "latency_ms": 0.1}},
            "wan": {"bandwidth_mbps": 100, "latency_ms": 20},
            "pairs": [{"a": "c", "b": "b", "bandwidth_mbps": 500, "latency_ms": 7}],
        },
    }


def load_dict(tmp_path, d):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(d))
    return Cluster.load(p)


# ---------------------------------------------------------------- catalog and memory rule

def test_catalog_values_follow_the_rules():
    rules = json.loads(files("e2llm_lite.data").joinpath("devices.json").read_text())["rules"]
    assert rules["reference_host"]["fp32_gflops"] == REFERENCE_GFLOPS
    assert rules["reference_host"]["memory_gbps"] == REFERENCE_GBPS
    assert (rules["memory"]["model_mib"], rules["memory"]["as_if_model_mib"],
            rules["memory"]["usable_fraction"]) == (MODEL_MIB, AS_IF_MODEL_MIB, USABLE_FRACTION)
    for kind, e in load_catalog().items():
        if e["spec"] is None:
            continue
        s = e["spec"]
        prefill, decode, mem = derive_kind(s["fp32_gflops"], s["memory_gbps"], s["ram_gib"])
        assert (e["prefill_speed"], e["decode_speed"], e["memory_mib"]) == pytest.approx((prefill, decode, mem)), kind
        assert s["source"], kind


def test_required_kinds_present():
    kinds = set(load_catalog())
    assert {"host", "rpi4-4gb", "rpi5-8gb", "jetson-nano-4gb", "jetson-orin-nano-8gb",
            "nuc-16gb", "fog-server-64gb"} <= kinds


def test_memory_rule_no_edge_device_holds_the_model_but_fog_does():
    cat = load_catalog()
    edge = [k for k, e in cat.items() if e["tier"] == "edge"]
    assert len(edge) >= 5
    for k in edge:
        assert cat[k]["memory_mib"] < 513, k  # not even the tied weights fit
    assert cat["fog-server-64gb"]["memory_mib"] > MODEL_SPLIT_MIB
    assert derive_kind(100, 10, 16)[2] == pytest.approx(470.6)


# ---------------------------------------------------------------- links

def test_transfer_ms_arithmetic():
    link = Link(bandwidth_mbps=100, latency_ms=20)
    assert link.transfer_ms(0) == 20
    assert link.transfer_ms(1_250_000) == pytest.approx(20 + 100)  # 10 Mbit at 100 Mbit/s = 100 ms
    assert Link(1000, 0.5).transfer_ms(576 * 4 * 10) == pytest.approx(0.5 + 0.18432)
    assert Link.local().transfer_ms(10**9) == 0


def test_link_lookup_lan_wan_pair_symmetric(tmp_path):
    c = load_dict(tmp_path, good())
    assert c.link("a", "b") == Link(1000, 0.5)  # same site -> LAN
    assert c.link("a", "c") == Link(100, 20)  # different sites -> WAN
    assert c.link("b", "c") == Link(500, 7) == c.link("c", "b")  # pair override wins, symmetric
    assert c.link(0, 2) == c.link("c", "a")  # by index
    assert c.link("a", "a") == Link.local()
    assert c.device("c").site == "fog"  # the catalog's default site
    assert c.device("b").decode_speed == 2.5  # explicit value overrides the catalog
    assert c.device("b").prefill_speed == load_catalog()["rpi4-4gb"]["prefill_speed"]


# ---------------------------------------------------------------- round trip, presets, helpers

def test_save_load_round_trip(tmp_path):
    c = load_dict(tmp_path, good())
    c.save(tmp_path / "out.json")
    back = Cluster.load(tmp_path / "out.json")
    assert back == c
    assert back.to_dict() == c.to_dict()
    assert json.loads((tmp_path / "out.json").read_text())["version"] == 1


@pytest.mark.parametrize("name", ["home4", "mixed8", "edge16"])
def test_presets_load_validate_and_fit_the_model(name, tmp_path):
    assert name in list_presets()
    c = preset(name)
    assert len(c) == int("".join(ch for ch in name if ch.isdigit()))
    assert sum(d.memory_mib for d in c.devices) >= 2 * MODEL_SPLIT_MIB  # room to spare
    edge = [d for d in c.devices if load_catalog()[d.kind]["tier"] == "edge"]
    assert edge and all(d.memory_mib < 513 for d in edge)
    for a in c.names:  # every pair has a link
        for b in c.names:
            assert c.link(a, b).bandwidth_mbps > 0
    c.save(tmp_path / "p.json")
    assert Cluster.load(tmp_path / "p.json") == c


def test_preset_mixed8_has_wan_and_override():
    c = preset("mixed8")
    assert c.link("home-pi4", "office-pi5") == Link(100, 20)
    assert c.link("fog", "office-nuc") == Link(1000, 5)
    assert c.link("home-pi4", "home-laptop") == Link(200, 3)


def test_default_cluster_and_subset():
    c = default_cluster(3)
    assert len(c) == 3 and c.names == ["host-0", "host-1", "host-2"]
    assert all(d.prefill_speed == d.decode_speed == 1.0 and d.memory_mib > 4 * MODEL_MIB for d in c.devices)
    assert c.link(0, 1).latency_ms == 0
    m = make_cluster(["rpi5-8gb", "fog-server-64gb"])
    assert m.link(0, 1) == m.wan
    s = preset("home4").subset(["laptop", "pi5"])
    assert s.names == ["laptop", "pi5"] and s.link("pi5", "laptop") == Link(200, 3)
    assert len(s.pairs) == 1


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset.*home4"):
        preset("nope")


# ---------------------------------------------------------------- validation

def test_malformed_json_names_file_line_and_column(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n  "format": "e2llm-lite/cluster",\n  "version": 1,,\n}')
    with pytest.raises(ConfigError, match=r"bad\.json.*line 3, column 16"):
        Cluster.load(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Cluster.load(tmp_path / "missing.json")


def mutate(path, value):
    """good() with the item at ``path`` (a tuple of keys/indices) replaced, or deleted if value is DEL."""
    d = good()
    target = d
    for k in path[:-1]:
        target = target[k]
    if value is DEL:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


DEL = object()

BAD = [
    (("version",), 2, r"expected 1, got 2"),
    (("format",), "something", r"format must be 'e2llm-lite/cluster'"),
    (("version",), DEL, r"missing 'version'"),
    (("extra",), 1, r"unknown key.*'extra'"),
    (("devices", 0, "kind"), "rpi3", r"unknown device kind 'rpi3'; known kinds: .*rpi5-8gb"),
    (("devices", 0, "prefill_speed"), 0, r"'a': prefill_speed must be > 0"),
    (("devices", 0, "decode_speed"), -1.5, r"'a': decode_speed must be > 0"),
    (("devices", 0, "decode_speed"), float("nan"), r"decode_speed must be a finite number"),
    (("devices", 0, "memory_mib"), 0, r"memory_mib must be > 0"),
    (("devices", 0, "prefill_speed"), "fast", r"prefill_speed must be a number, got 'fast'"),
    (("devices", 0, "prefil_speed"), 1.0, r"unknown key.*'prefil_speed'"),
    (("devices", 1, "name"), "a", r"device name 'a' is used twice"),
    (("devices",), [], r"has no devices"),
    (("devices",), {"a": 1}, r"devices must be a JSON list"),
    (("devices", 0), "rpi5-8gb", r"devices\[0\] must be a JSON object"),
    (("devices", 0, "name"), 7, r"name must be a non-empty string"),
    (("links", "wan", "bandwidth_mbps"), 0, r"links\.wan: bandwidth_mbps must be > 0"),
    (("links", "lan", "home", "bandwidth_mbps"), -10, r"links\.lan\.home: bandwidth_mbps must be > 0"),
    (("links", "wan", "bandwidth_mbps"), float("inf"), r"bandwidth_mbps must be a finite number"),
    (("links", "wan", "latency_ms"), -1, r"links\.wan: latency_ms must be >= 0"),
    (("links", "wan", "latency_ms"), None, r"latency_ms must be a number, got None"),
    (("links", "pairs", 0, "a"), "zz", r"unknown device 'zz'"),
    (("links", "pairs", 0, "b"), "c", r"joins a device to itself"),
    (("links", "lan", "fog"), DEL, r"site 'fog' has no LAN link"),
    (("links", "wan"), DEL, r"no WAN link"),
    (("links", "lan"), [], r"links\.lan must be a JSON object"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_cluster_files_give_config_error(tmp_path, path, value, message):
    d = mutate(path, value)
    with pytest.raises(ConfigError, match=message) as err:
        load_dict(tmp_path, d)
    assert "c.json" in str(err.value)  # the message names the file
    assert isinstance(err.value, ValueError)


def test_top_level_not_an_object(tmp_path):
    with pytest.raises(ConfigError, match="cluster must be a JSON object"):
        load_dict(tmp_path, [1, 2])


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="prefill_speed must be > 0"):
        DeviceSpec("x", "host", 0, 1, 1)
    with pytest.raises(ConfigError, match="unknown device kind"):
        DeviceSpec("x", "gpu9000", 1, 1, 1)
    with pytest.raises(ConfigError, match="bandwidth_mbps must be > 0"):
        Link(0, 1)
    with pytest.raises(ConfigError, match="latency_ms must be a finite number"):
        Link(1, math.nan)
    with pytest.raises(ConfigError, match="no device 'q'"):
        default_cluster(2).device("q")
    with pytest.raises(ConfigError, match="at least 1 device"):
        make_cluster(0)
