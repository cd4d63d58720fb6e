"""The comparison (e2llm_lite.compare): saturation rule, ablations, mixtures, the CLI's JSON."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from e2llm_lite.cli import main
from e2llm_lite.compare import compare
from e2llm_lite.devices import preset
from e2llm_lite.planning import make_plan
from e2llm_lite.planning.ablations import ABLATIONS, ablation_plan
from e2llm_lite.serving.saturation import is_saturated, sustainable_rps, waiting_growth
from e2llm_lite.serving.simulator import simulate_requests
from e2llm_lite.split import even_split
from e2llm_lite.workload import LengthDist, workload_from_spec


def _rec(arrival, wait, done=True, rejected=""):
    return SimpleNamespace(arrival_s=arrival, prefill_start_s=arrival + wait, done=done, rejected=rejected)


def test_waiting_growth_is_the_least_squares_slope():
    flat = [_rec(t, 0.3 + 0.01 * (-1) ** t) for t in range(50)]
    assert abs(waiting_growth(flat)) < 1e-3 and not is_saturated(flat)
    growing = [_rec(t, 0.1 * t) for t in range(50)]
    assert waiting_growth(growing) == pytest.approx(0.1)
    assert is_saturated(growing)
    stalled = flat + [_rec(60, 0, done=False, rejected="unfinished: the scheduler stalled")]
    assert is_saturated(stalled)
    assert waiting_growth(flat[:2]) == 0.0


def test_sustainable_rate_separates_keeping_up_from_falling_behind():
    cluster = preset("mixed8")
    wl = workload_from_spec("code", 1.0, seed=0)

    def plan_for(rate):
        return make_plan(cluster, "splitwise", "code", rate)

    found = sustainable_rps(plan_for, cluster, wl, n=120)
    rate = found["rate_rps"]
    kept = [g for r, g in found["probes"] if r <= rate]
    lost = [g for r, g in found["probes"] if r > rate]
    assert kept and lost and max(kept) <= 0.05 < min(lost)
    assert min(r for r, _ in found["probes"] if r > rate) <= rate * 1.021   # bracketed to 2 %
    # the same search again: the same figure (deterministic)
    assert sustainable_rps(plan_for, cluster, wl, n=120)["rate_rps"] == rate
    res = simulate_requests(plan_for(rate), cluster, workload_from_spec("code", rate, seed=0).generate(n=120))
    assert not is_saturated(res.records.values())


def test_ablations_take_one_idea_away_each():
    cluster = preset("mixed8")
    full = make_plan(cluster, "e2llm", "conv", 2.0, config=None, progress=False)
    plans = {a: ablation_plan(a, cluster, "conv", 2.0) for a in ABLATIONS}
    for name, p in plans.items():
        assert p.strategy == name and p.replicas
    assert all(r.role == "both" for r in plans["e2llm-no-roles"].replicas)
    for r in plans["e2llm-no-dp"].replicas:                        # even splits
        assert [(s, e) for _, s, e in r.stages] == even_split(len(r.stages))
    for a in ABLATIONS:                                             # each plan serves the workload
        m = simulate_requests(plans[a], cluster, workload_from_spec("conv", 1.0).generate(n=20)).metrics()
        assert m["requests_done"] == 20, a
    simple = make_plan(cluster, "splitwise", "conv", 2.0)
    assert sorted(sorted(r.devices) for r in plans["e2llm-no-ga"].replicas) == \
        sorted(sorted(r.devices) for r in simple.replicas)
    ga_groups = sorted(sorted(r.devices) for r in plans["e2llm-splitwise-roles"].replicas)
    assert all(set(r.devices) <= set(cluster.names) for r in full.replicas) and ga_groups
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation_plan("e2llm-no-brain", cluster, "conv", 1.0)


def test_mixture_and_mix_workload():
    code, conv = LengthDist.profile("code"), LengthDist.profile("conv")
    for w, ref in ((0.0, code), (1.0, conv)):
        mix = LengthDist.mixture(code, conv, w)
        p, o = mix.sample(5000, 1)
        rp, ro = ref.sample(5000, 7)
        assert np.mean(o) == pytest.approx(np.mean(ro), rel=0.15)
    reqs = workload_from_spec("mix", 1.0, seed=2).generate(n=800)
    outs = np.array([r.output_tokens for r in reqs])
    assert outs[:200].mean() * 2 < outs[-200:].mean()              # code-like first, conv-like last
    with pytest.raises(ValueError, match="weight"):
        LengthDist.mixture(code, conv, 1.5)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    argv = ["compare", "--cluster", "mixed8", "--workload", "code", "--loads", "0.5,1.1",
            "--strategies", "e2llm,splitwise,exo", "--requests", "80", "--seeds", "2", "--json",
            "--out", str(out)]
    return argv, out


def test_compare_json_is_complete_and_consistent(compared, capsys):
    argv, out = compared
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["saturation_rps"] > 0
    keys = {(e["strategy"], e["load"]) for e in data["results"]}
    assert keys == {(s, x) for s in ("e2llm", "splitwise", "exo") for x in (0.5, 1.1)}
    by = {(e["strategy"], e["load"]): e for e in data["results"]}
    for e in data["results"]:
        assert e["rate_rps"] == pytest.approx(e["load"] * data["saturation_rps"])
        if e["saturated"]:
            assert "waiting_s" not in e and all(v is None for v in e["ratio_vs_splitwise"].values())
            continue
        for m in ("waiting_s", "ttft_s", "tbt_s", "e2e_s"):
            assert set(e[m]) == {"mean", "p50", "p90", "p99"}
        base = by[("splitwise", e["load"])]
        for m in ("waiting_s", "ttft_s", "e2e_s"):
            r = e["ratio_vs_splitwise"][m]
            if base["saturated"]:
                assert r is None
            else:
                assert r == pytest.approx(e[m]["mean"] / base[m]["mean"])
        runs = [r for r in data["runs"] if r["strategy"] == e["strategy"] and r["load"] == e["load"]]
        assert len(runs) == 2
        assert e["waiting_s"]["mean"] == pytest.approx(np.mean([r["waiting_s"]["mean"] for r in runs]))
    # exo's one memory-proportional pipeline cannot keep up even at half load: saturated, no number
    assert by[("exo", 0.5)]["saturated"]
    assert not by[("splitwise", 0.5)]["saturated"]
    files = {p.name for p in out.iterdir()}
    assert {"summary.md", "summary.csv", "summary.json", "waiting_vs_load.png", "plans.png"} <= files
    assert "| **E2LLM / Splitwise** | waiting |" in (out / "summary.md").read_text()


def test_same_seed_same_numbers():
    wl = workload_from_spec("conv", 1.0)
    kw = dict(loads=(0.6,), strategies=("e2llm", "splitwise"), seeds=(3,), n=60)
    a = compare(preset("mixed8"), wl, **kw)
    b = compare(preset("mixed8"), wl, **kw)
    assert a.saturation_rps == b.saturation_rps
    assert json.dumps(a.results, sort_keys=True) == json.dumps(b.results, sort_keys=True)
    c = compare(preset("mixed8"), wl, **{**kw, "seeds": (4,)}, saturation_rps=a.saturation_rps)
    assert c.result("e2llm", 0.6)["waiting_s"] != a.result("e2llm", 0.6)["waiting_s"]


def test_compare_trace_file_windows(tmp_path):
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rng = np.random.default_rng(0)
    t = 0.0
    for i in range(150):
        t += float(rng.exponential(0.5))
        rows.append(f"2023-11-16 18:{int(t // 60):02d}:{t % 60:09.6f},{int(rng.integers(200, 1500))},"
                    f"{int(rng.integers(5, 200))}")
    f = tmp_path / "trace.csv"
    f.write_text("\n".join(rows) + "\n")
    wl = workload_from_spec(str(f), None)
    c = compare(preset("mixed8"), wl, loads=(0.5,), strategies=("splitwise",), seeds=(0, 1), n=60)
    runs = c.runs
    assert len(runs) == 2 and set(c.saturation_by_seed) == {0, 1} and "replay_growth" in runs[0]
    assert all(r["rate_rps"] == pytest.approx(0.5 * c.saturation_by_seed[r["seed"]]) for r in runs)
    assert runs[0]["waiting_s"] != runs[1]["waiting_s"]            # two different windows


@pytest.mark.parametrize("argv, message", [
    (["compare", "--loads", "0.5,x"], "comma-separated"),
    (["compare", "--strategies", "e2llm,magic"], "unknown strategy magic"),
    (["compare", "--workload", "nope.csv"], "neither a known profile"),
    (["compare", "--cluster", "nowhere9"], ""),
])
def test_compare_bad_input_is_one_line(argv, message, capsys):
    try:
        code = main(argv + ["--requests", "20"])
    except SystemExit as e:      # argparse errors exit 2 with a usage line
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_loads_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        compare(preset("mixed8"), workload_from_spec("conv", 1.0), loads=(0.0,), saturation_rps=1.0)
    assert math.isfinite(compare(preset("mixed8"), workload_from_spec("code", 1.0), loads=(0.3,),
                                 strategies=("splitwise",), n=20, saturation_rps=1.0).saturation_rps)


def test_decode_at_the_context_end_is_timed():
    """A sequence at 8191 cached tokens: the rounded context must not pass the model's 8192."""
    from e2llm_lite.serving.durations import Durations

    cluster = preset("mixed8")
    d = Durations(make_plan(cluster, "splitwise", "code", 1.0), cluster)
    rep = next(r.name for r in make_plan(cluster, "splitwise", "code", 1.0).replicas)
    assert all(t > 0 for t in d.decode_ms(rep, 1, 8191))
