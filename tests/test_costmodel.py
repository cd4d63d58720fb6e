"""The cost model's algebra, the shipped reference profile, and clear errors for bad profiles."""

import copy
import json
import math

import numpy as np
import pytest

from e2llm_lite import cli
from e2llm_lite.costmodel import (FORMS, N_COEF, CostModel, Phase, accuracy, extra_weight_passes,
                                  fit_op, matrix_kernel, predict_op)
from e2llm_lite.devices import DeviceSpec, Link, make_cluster, preset
from e2llm_lite.errors import ConfigError

COEF = {"prefill_layer": [2.0, 0.08, 2e-5], "decode_layer": [1.7, 0.08, 3e-4, 0.5, 0.2],
        "embed": [0.05, 5e-4], "head": [11.0, 0.7, 12.0, 5.0]}


def profile_dict(coef=COEF, measurements=()):
    return {"format": "e2llm-lite/profile", "version": 1, "host": {"cpu": "test"},
            "grid": {"name": "test"}, "measurements": list(measurements),
            "fit": {op: {"form": FORMS[op][2], "coef": list(c)} for op, c in coef.items()}}


@pytest.fixture(scope="module")
def cm():
    return CostModel.from_dict(profile_dict())


@pytest.fixture(scope="module")
def ref():
    return CostModel.load()


def dev(prefill=1.0, decode=1.0, name="d"):
    return DeviceSpec(name=name, kind="host", prefill_speed=prefill, decode_speed=decode,
                      memory_mib=1000)


# ---------------------------------------------------------------- the forms

def test_forms_evaluate_as_documented(cm):
    assert cm.layer_ms("prefill", tokens=100) == pytest.approx(2.0 + 0.08 * 100 + 2e-5 * 100**2)
    assert cm.layer_ms("decode", batch=1, context=50) == pytest.approx(1.7 + 0.08 + 3e-4 * 50)
    # batches of 2-3 pay extra weight passes, from 4 on the matrix kernel's fixed cost
    assert cm.layer_ms("decode", batch=3, context=10) == pytest.approx(1.7 + 0.24 + 3e-4 * 30 + 0.5 * 2)
    assert cm.layer_ms("decode", batch=8, context=10) == pytest.approx(1.7 + 0.64 + 3e-4 * 80 + 0.2)
    assert cm.embed_ms("prefill", tokens=100) == pytest.approx(0.05 + 0.05)
    assert cm.embed_ms("decode", batch=4, context=9) == pytest.approx(0.05 + 4 * 5e-4)
    assert cm.head_ms("prefill", tokens=700) == pytest.approx(11.7)  # last position only
    assert cm.head_ms("decode", batch=2, context=5) == pytest.approx(11.0 + 1.4 + 12.0)
    assert list(extra_weight_passes([1, 2, 3, 4, 16])) == [0, 1, 2, 0, 0]
    assert list(matrix_kernel([1, 2, 3, 4, 16])) == [0, 0, 0, 1, 1]


def test_prefill_is_monotone_in_tokens_and_decode_in_context(cm, ref):
    for model in (cm, ref):
        pre = [model.layer_ms("prefill", tokens=t) for t in range(1, 4097, 37)]
        assert all(b > a for a, b in zip(pre, pre[1:]))
        for batch in (1, 2, 5, 16):
            dec = [model.layer_ms("decode", batch=batch, context=c) for c in range(0, 8000, 250)]
            assert all(b >= a for a, b in zip(dec, dec[1:]))
        big = [model.layer_ms("decode", batch=b, context=100) for b in range(4, 64)]
        assert all(y >= x for x, y in zip(big, big[1:]))


def test_device_time_scales_with_the_speed_of_its_phase(cm):
    host, fast_prefill, fast_decode = dev(), dev(prefill=2.0), dev(decode=4.0)
    for start, end in [(0, 30), (3, 17), (20, 30)]:
        p = dict(tokens=300)
        d = dict(batch=2, context=300)
        assert cm.stage_ms(fast_prefill, start, end, "prefill", **p) == pytest.approx(
            cm.stage_ms(host, start, end, "prefill", **p) / 2)
        assert cm.stage_ms(fast_prefill, start, end, "decode", **d) == pytest.approx(
            cm.stage_ms(host, start, end, "decode", **d))
        assert cm.stage_ms(fast_decode, start, end, "decode", **d) == pytest.approx(
            cm.stage_ms(host, start, end, "decode", **d) / 4)
        assert cm.stage_ms(host, start, end, "prefill", **p) == pytest.approx(
            cm.host_stage_ms(start, end, "prefill", **p))


def test_stage_sums_its_layers_and_adds_embedding_and_head_at_the_ends(cm):
    p = dict(tokens=64)
    layer, embed, head = cm.layer_ms("prefill", **p), cm.embed_ms("prefill", **p), cm.head_ms("prefill", **p)
    assert cm.host_stage_ms(5, 12, "prefill", **p) == pytest.approx(7 * layer)
    assert cm.host_stage_ms(0, 12, "prefill", **p) == pytest.approx(12 * layer + embed)
    assert cm.host_stage_ms(12, 30, "prefill", **p) == pytest.approx(18 * layer + head)
    assert cm.host_stage_ms(0, 30, "prefill", **p) == pytest.approx(30 * layer + embed + head)
    split = sum(cm.host_stage_ms(a, b, "decode", batch=3, context=40)
                for a, b in [(0, 7), (7, 20), (20, 30)])
    assert split == pytest.approx(cm.host_stage_ms(0, 30, "decode", batch=3, context=40))


def test_transfer_sizes_and_times(cm):
    assert cm.hidden_state_bytes(1) == 576 * 4
    assert cm.hidden_state_bytes(37) == 37 * 576 * 4
    assert cm.kv_bytes(100, 10) == 100 * 10 * 1536
    assert cm.kv_bytes(512, 30) == 23_592_960
    link = Link(bandwidth_mbps=100.0, latency_ms=3.0)
    assert cm.transfer_ms(link, 0) == 3.0
    assert cm.transfer_ms(link, 1_000_000) == pytest.approx(3.0 + 80.0)  # 8 Mbit at 100 Mbit/s
    assert cm.transfer_ms(Link.local(), 10**9) == 0.0


def test_array_builders_for_the_planner(cm):
    devices = [dev(1.0, 1.0, "a"), dev(4.0, 0.5, "b"), dev(0.5, 2.0, "c")]
    comp = cm.compute_matrix(devices, "prefill", tokens=128)
    assert comp.shape == (3, 30)
    assert np.allclose(comp[1], cm.layer_ms("prefill", tokens=128) / 4.0)
    dec = cm.compute_matrix(devices, Phase.DECODE, batch=1, context=10)
    assert np.allclose(dec[:, 0], cm.layer_ms("decode", context=10) / np.array([1.0, 0.5, 2.0]))
    first, last = cm.end_extras_ms(devices, "decode", batch=1, context=10)
    assert np.allclose(last, cm.head_ms("decode", context=10) / np.array([1.0, 0.5, 2.0]))
    assert np.allclose(first, cm.embed_ms("decode", context=10) / np.array([1.0, 0.5, 2.0]))
    cluster = preset("home4")
    comm = cm.comm_matrix(cluster, cm.hidden_state_bytes(100))
    assert comm.shape == (4, 4) and np.all(np.diag(comm) == 0) and np.allclose(comm, comm.T)
    assert comm[0, 1] == pytest.approx(cluster.link(0, 1).transfer_ms(100 * 2304))


@pytest.mark.parametrize("call, match", [
    (lambda m: m.layer_ms("train", tokens=4), "phase"),
    (lambda m: m.layer_ms("prefill"), "tokens="),
    (lambda m: m.layer_ms("prefill", tokens=0), "tokens"),
    (lambda m: m.layer_ms("prefill", tokens=-3), "tokens"),
    (lambda m: m.layer_ms("prefill", tokens=2.5), "tokens"),
    (lambda m: m.layer_ms("prefill", tokens=True), "tokens"),
    (lambda m: m.layer_ms("prefill", tokens=9000), "context"),
    (lambda m: m.layer_ms("prefill", tokens=10, batch=2), "one prompt"),
    (lambda m: m.layer_ms("decode", tokens=10), "batch="),
    (lambda m: m.layer_ms("decode", batch=0), "batch"),
    (lambda m: m.layer_ms("decode", context=-1), "context"),
    (lambda m: m.layer_ms("decode", context=8192), "context"),
    (lambda m: m.host_stage_ms(5, 5, "prefill", tokens=4), "slice"),
    (lambda m: m.host_stage_ms(0, 31, "prefill", tokens=4), "slice"),
    (lambda m: m.hidden_state_bytes(-1), "tokens"),
    (lambda m: m.kv_bytes(4, -1), "layers"),
    (lambda m: m.transfer_ms(Link(10, 1), -5), "nbytes"),
    (lambda m: m.transfer_ms(Link(10, 1), math.nan), "nbytes"),
])
def test_bad_inputs_raise_value_error(cm, call, match):
    with pytest.raises(ValueError, match=match):
        call(cm)


# ---------------------------------------------------------------- fitting

def test_fit_recovers_known_coefficients_and_stays_non_negative():
    ms = [{"op": "prefill_layer", "tokens": t} for t in (16, 64, 256, 1024)]
    ms += [{"op": "decode_layer", "batch": b, "context": c}
           for b in (1, 2, 4, 16) for c in (16, 256, 1024)]
    for m in ms:
        m["ms"] = predict_op(m["op"], COEF[m["op"]], m)
    for op in ("prefill_layer", "decode_layer"):
        assert fit_op(op, ms) == pytest.approx(COEF[op], rel=1e-6)
    # data that a free fit would explain with a negative slope: the constraint holds at 0
    falling = [{"op": "embed", "tokens": t, "ms": 1.0 - 0.001 * t} for t in (1, 100, 200)]
    assert all(c >= 0 for c in fit_op("embed", falling))
    with pytest.raises(ValueError, match="do not determine"):
        fit_op("prefill_layer", [{"op": "prefill_layer", "tokens": 8, "ms": 3.0}] * 3)


def test_accuracy_reports_relative_errors():
    ms = [{"op": "embed", "tokens": 0, "ms": 0.1}, {"op": "embed", "tokens": 0, "ms": 0.05}]
    e = accuracy({"embed": [0.1, 0.0]}, ms)["embed"]
    assert e["n"] == 2 and e["median"] == pytest.approx(0.5) and e["max"] == pytest.approx(1.0)


# ---------------------------------------------------------------- the shipped reference profile

def test_reference_profile_is_complete_and_accurate(ref):
    assert set(ref.coef) == set(N_COEF)
    assert ref.host["threads"] == 1 and ref.host["cpu"] and ref.host["torch"].startswith("2.13")
    roles = {m["role"] for m in ref.measurements}
    assert roles == {"fit", "holdout"}
    errors = ref.errors("holdout")
    for op in ("prefill_layer", "decode_layer"):
        assert errors[op]["n"] >= 5 and errors[op]["median"] <= 0.10, errors[op]
    # the physics the notebooks teach: prefill grows with the prompt, decode hardly with context
    assert ref.layer_ms("prefill", tokens=1024) >= 10 * ref.layer_ms("prefill", tokens=16)
    d64, d1024 = (ref.layer_ms("decode", batch=1, context=c) for c in (64, 1024))
    assert abs(d1024 / d64 - 1) < 0.25
    assert ref.roofline("prefill", tokens=512)["flop_per_byte"] > 50 * ref.roofline(
        "decode", batch=1, context=512)["flop_per_byte"]


def test_reference_is_loaded_by_default_and_equals_the_file(ref):
    from importlib.resources import files

    d = json.loads(files("e2llm_lite.data").joinpath("profile_reference.json").read_text())
    again = CostModel.from_dict(d)
    assert again.coef == ref.coef
    assert "reference" in ref.source


# ---------------------------------------------------------------- bad profile files

def _broken(change):
    d = copy.deepcopy(profile_dict())
    change(d)
    return json.dumps(d, allow_nan=True)


@pytest.mark.parametrize("text, match", [
    ('{"format": "e2llm-lite/profile", "version": 1, "fit": {', "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (_broken(lambda d: d.update(version=2)), "unsupported profile version 2"),
    (_broken(lambda d: d.update(version="1")), "unsupported profile version"),
    (_broken(lambda d: d.update(format="e2llm-lite/cluster")), "not an e2llm-lite profile"),
    (_broken(lambda d: d.pop("fit")), "missing the field 'fit'"),
    (_broken(lambda d: d.pop("host")), "missing the field 'host'"),
    (_broken(lambda d: d.update(measurements={})), "'measurements' must be a JSON list"),
    (_broken(lambda d: d["fit"].pop("head")), "no coefficients for 'head'"),
    (_broken(lambda d: d["fit"]["prefill_layer"].update(coef=[1.0, -0.1, 0.0])), ">= 0"),
    (_broken(lambda d: d["fit"]["decode_layer"].update(coef=[1.0, float("nan"), 0, 0, 0])), "finite"),
    (_broken(lambda d: d["fit"]["embed"].update(coef=[1.0])), "list of 2"),
    (_broken(lambda d: d["fit"]["prefill_layer"].update(coef=[0, 0, 1e-5])), "0 ms"),
    (_broken(lambda d: d.update(measurements=[{"op": "prefill_layer", "tokens": 4}])), "'ms'"),
    (_broken(lambda d: d.update(measurements=[{"op": "train", "ms": 1}])), "'op'"),
])
def test_corrupt_or_wrong_profiles_give_one_clear_config_error(tmp_path, text, match):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        CostModel.load(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg


def test_missing_or_binary_profile_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read profile file"):
        CostModel.load(tmp_path / "nope.json")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="b.json"):
        CostModel.load(tmp_path / "b.json")


def test_cli_profile_show(tmp_path, capsys):
    assert cli.main(["profile", "--show", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["fit"]) == set(N_COEF) and out["holdout_error"]["prefill_layer"]["n"] >= 5
    bad = tmp_path / "v9.json"
    bad.write_text(_broken(lambda d: d.update(version=9)))
    assert cli.main(["profile", "--show", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsupported profile version 9" in err[0] and str(bad) in err[0]


def test_devices_of_the_catalog_differ_by_phase(ref):
    """The Jetson Orin Nano is relatively better at prefill than a Raspberry Pi 4."""
    c = make_cluster(["jetson-orin-nano-8gb", "rpi4-4gb"])
    orin, pi = c.devices

    def ratio(d):  # decode step time / prefill time: larger = relatively better at prefill
        return (ref.stage_ms(d, 0, 30, "decode", batch=1, context=256)
                / ref.stage_ms(d, 0, 30, "prefill", tokens=256))

    assert ratio(orin) > 3 * ratio(pi)
