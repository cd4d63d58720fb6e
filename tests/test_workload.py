"""Workloads: lognormal profiles, scaling and context clipping, arrival processes, the trace CSV
loader (on small CSVs written here, and on the real Azure 2023 traces when they are present)."""

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from e2llm_lite.errors import ConfigError
from e2llm_lite.workload import (
    CONTEXT_TOKENS, PROFILE_FIGURES, LengthDist, Request, Workload, load_trace,
    parse_timestamp, read_trace, request_stats, workload_from_spec)

_CANDIDATES = [Path(__file__).parents[1].parent / "shared/data/azure-llm-trace-2023",
               Path("/work/shared/data/azure-llm-trace-2023")]
TRACE_DIR = Path(os.environ.get("E2LLM_TRACE_DIR") or next(
    (p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0]))
CODE_CSV = TRACE_DIR / "AzureLLMInferenceTrace_code.csv"
CONV_CSV = TRACE_DIR / "AzureLLMInferenceTrace_conv.csv"
needs_traces = pytest.mark.skipif(
    not (CODE_CSV.is_file() and CONV_CSV.is_file()),
    reason=f"Azure LLM trace 2023 CSVs not found in {TRACE_DIR} (set E2LLM_TRACE_DIR)")

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---- Request ----------------------------------------------------------------------------------

def test_request_validates():
    r = Request(0, 0.5, 10, 1)
    assert (r.prompt_tokens, r.output_tokens) == (10, 1)
    for bad in [(0, 0.0, 0, 1), (0, 0.0, 1, 0), (0, -1.0, 1, 1), (0, math.nan, 1, 1)]:
        with pytest.raises(ValueError):
            Request(*bad)


# ---- LengthDist ----------------------------------------------------------------------------------

def test_context_is_the_models():
    assert CONTEXT_TOKENS == 8192


@pytest.mark.parametrize("name", ["code", "conv"])
def test_profile_fit_matches_published_figures_before_clipping(name):
    fig = PROFILE_FIGURES[name]
    d = LengthDist.profile(name)
    mp, sp, mo, so = d.params
    assert mp == pytest.approx(math.log(fig["prompt_median"]))
    assert sp == pytest.approx(math.sqrt(2 * math.log(fig["prompt_mean"] / fig["prompt_median"])))
    assert mo == pytest.approx(math.log(fig["output_median"]))
    assert so == pytest.approx(math.sqrt(2 * math.log(fig["output_mean"] / fig["output_median"])))
    p, o = d.sample_raw(400_000, 7)
    for x, what in ((p, "prompt"), (o, "output")):
        assert np.median(x) == pytest.approx(fig[f"{what}_median"], rel=0.02)
        assert np.mean(x) == pytest.approx(fig[f"{what}_mean"], rel=0.03)


@pytest.mark.parametrize("name", ["code", "conv"])
def test_samples_are_whole_positive_and_fit_the_context(name):
    d = LengthDist.profile(name)
    p, o = d.sample(50_000, 1)
    assert p.dtype == np.int64 and o.dtype == np.int64
    assert p.min() >= 1 and o.min() >= 1
    assert (p + o).max() <= CONTEXT_TOKENS and p.max() <= CONTEXT_TOKENS - 1
    s = d.stats()
    assert set(s) == {f"{a}_{b}" for a in ("prompt", "output") for b in ("median", "mean", "p90")}
    assert d.mean_prompt == s["prompt_mean"] and d.mean_output == s["output_mean"]
    # clipping only lowers the means, by little
    assert 0.9 * PROFILE_FIGURES[name]["prompt_mean"] < d.mean_prompt <= 1.01 * PROFILE_FIGURES[name]["prompt_mean"]


def test_profiles_have_their_character():
    code, conv = LengthDist.profile("code"), LengthDist.profile("conv")
    assert code.mean_prompt > conv.mean_prompt and code.mean_output < conv.mean_output


def test_clipping_rule():
    d = LengthDist.from_pairs([1], [1])
    p, o = d.shape([10_000, 8000, 8191, 100, 0.2], [50, 500, 7, 30, 0.4])
    assert p.tolist() == [8191, 8000, 8191, 100, 1]
    assert o.tolist() == [1, 192, 1, 30, 1]
    small = LengthDist.from_pairs([1], [1], context=100)
    assert small.shape([90], [50])[1].tolist() == [10]


def test_scaled_multiplies_rounds_and_caps():
    d = LengthDist.from_pairs([1000, 3, 5000], [40, 1, 300])
    s = d.scaled(0.1, 0.25)
    assert s.shape(d.prompts, d.outputs)[0].tolist() == [100, 1, 500]
    assert s.shape(d.prompts, d.outputs)[1].tolist() == [10, 1, 75]
    c = s.scaled(max_prompt=200, max_output=20)
    p, o = c.shape(d.prompts, d.outputs)
    assert p.tolist() == [100, 1, 200] and o.tolist() == [10, 1, 20]
    # scales compose, caps take the smaller
    cc = c.scaled(0.5, 1.0, max_prompt=500, max_output=10)
    assert cc.prompt_scale == pytest.approx(0.05) and (cc.max_prompt, cc.max_output) == (200, 10)
    assert d.max_prompt is None  # the original is unchanged
    sp, so = LengthDist.profile("code").scaled(0.05, 0.5, max_prompt=128, max_output=16).sample(20_000, 3)
    assert sp.max() <= 128 and so.max() <= 16 and sp.min() >= 1 and so.min() >= 1
    for bad in [dict(prompt_scale=0), dict(output_scale=-1), dict(prompt_scale=math.nan),
                dict(max_prompt=0), dict(max_output=2.5)]:
        with pytest.raises(ValueError):
            d.scaled(**bad)


def test_empirical_resamples_the_pairs():
    d = LengthDist.from_pairs([10, 20, 30], [1, 2, 3])
    p, o = d.sample(3000, 0)
    assert set(zip(p.tolist(), o.tolist())) == {(10, 1), (20, 2), (30, 3)}
    assert d.stats()["prompt_median"] == 20 and d.mean_output == pytest.approx(2.0)
    with pytest.raises(ValueError):
        LengthDist.from_pairs([], [])
    with pytest.raises(ValueError):
        LengthDist.from_pairs([0], [1])


def test_lognormal_needs_mean_at_least_median():
    with pytest.raises(ValueError, match="mean >= median"):
        LengthDist.lognormal(100, 50, 10, 20)


def test_unknown_profile_lists_known_names():
    with pytest.raises(ConfigError, match="code, conv"):
        LengthDist.profile("chat")


# ---- arrivals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0, -1.0, math.nan, math.inf, "2"])
def test_bad_rate(rate):
    with pytest.raises(ValueError):
        Workload(LengthDist.profile("conv"), rate=rate)


def test_bad_arrival_and_cv():
    with pytest.raises(ConfigError, match="poisson, bursty, trace"):
        Workload(LengthDist.profile("conv"), rate=1.0, arrival="uniform")
    with pytest.raises(ConfigError):
        Workload(LengthDist.profile("conv"), rate=1.0, arrival="trace")
    with pytest.raises(ConfigError):
        Workload(LengthDist.profile("conv"), rate=1.0, arrival="bursty", cv=0)
    with pytest.raises(ValueError):
        Workload(LengthDist.profile("conv"), rate=1.0).generate()


@pytest.mark.parametrize("arrival,cv", [("poisson", 1.0), ("bursty", 3.0), ("bursty", 2.0)])
def test_arrival_rate_and_cv(arrival, cv):
    w = Workload(LengthDist.profile("conv"), rate=4.0, arrival=arrival, seed=11, cv=cv)
    t = np.array([r.arrival_s for r in w.generate(n=100_000)])
    gaps = np.diff(np.concatenate(([0.0], t)))
    assert gaps.mean() == pytest.approx(1 / 4.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    assert np.all(np.diff(t) >= 0)


def test_generate_is_reproducible_and_prefix_consistent():
    for arrival in ("poisson", "bursty"):
        w = Workload(LengthDist.profile("code"), rate=3.0, arrival=arrival, seed=5)
        a = w.generate(n=2000)
        assert a == w.generate(n=2000)
        assert a[:100] == w.generate(n=100)
        assert [r.id for r in a] == list(range(2000))
        b = w.generate(duration_s=a[1500].arrival_s)
        assert b == a[:1500]
        assert w.generate(n=10, duration_s=1e9) == a[:10]
        other = Workload(w.lengths, rate=3.0, arrival=arrival, seed=6).generate(n=2000)
        assert other != a
    assert Workload(LengthDist.profile("code"), rate=3.0).generate(duration_s=0) == []


def test_request_stats():
    reqs = [Request(0, 0.0, 10, 1), Request(1, 1.0, 20, 3), Request(2, 2.0, 30, 5)]
    s = request_stats(reqs)
    assert s["count"] == 3 and s["rate"] == pytest.approx(1.0) and s["duration_s"] == 2.0
    assert s["prompt_median"] == 20 and s["output_mean"] == 3


# ---- trace CSV -----------------------------------------------------------------------------------

def test_parse_timestamp():
    a = parse_timestamp("2023-11-16 18:15:46.6805900")
    b = parse_timestamp("2023-11-16 18:15:47.1")
    assert b - a == pytest.approx(0.41941, abs=1e-6)
    assert parse_timestamp("2023-11-16T18:15:46Z") == pytest.approx(a - 0.68059, abs=1e-6)
    assert parse_timestamp("2023-11-16 19:15:46+01:00") == parse_timestamp("2023-11-16 18:15:46")
    assert parse_timestamp("12.5") == 12.5
    for bad in ["yesterday", "2023-13-01 00:00:00", "", "nan"]:
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_load_small_trace(tmp_path):
    p = write(tmp_path, "\ufeff" + HEADER +
              "2023-11-16 18:15:46.6805900,374,44\n"
              "2023-11-16 18:15:50.9951690,396,109\n"
              "2023-11-16 18:15:51.2224670,879,55\n\n")
    reqs = load_trace(p)
    assert [r.id for r in reqs] == [0, 1, 2]
    assert reqs[0].arrival_s == 0.0
    assert reqs[1].arrival_s == pytest.approx(4.314579, abs=1e-6)
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [(374, 44), (396, 109), (879, 55)]
    tr = read_trace(p)
    assert len(tr) == 3 and tr.adjusted_rows == 0 and tr.reordered_rows == 0
    assert tr.rate == pytest.approx(2 / 4.541877, rel=1e-6)


def test_trace_extra_columns_any_order_and_seconds(tmp_path):
    p = write(tmp_path, "GeneratedTokens, timestamp ,ContextTokens,Note\n3,10.5,100,x\n4,11.0,200.0,y\n")
    reqs = load_trace(p)
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in reqs] == [(0.0, 100, 3), (0.5, 200, 4)]


@pytest.mark.parametrize("text,match", [
    ("", "empty"),
    (HEADER, "no data rows"),
    ("time,prompt,output\n1,2,3\n", "ContextTokens.*expected columns TIMESTAMP, ContextTokens, GeneratedTokens"),
    ("TIMESTAMP,ContextTokens\n1,2\n", "lacks column.*GeneratedTokens"),
    (HEADER + "2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47,374\n", "line 3: expected 3 fields"),
    (HEADER + "2023-11-16 18:15:46.68,374,44\nsoon,1,2\n", "line 3: bad TIMESTAMP 'soon'"),
    (HEADER + "2023-11-16 18:15:46.68,12x,44\n", "line 2: bad ContextTokens '12x'"),
    (HEADER + "2023-11-16 18:15:46.68,12,4.5\n", "line 2: bad GeneratedTokens '4.5'"),
    (HEADER + "2023-11-16 18:15:46.68,12,-3\n", "line 2: negative GeneratedTokens"),
])
def test_malformed_traces(tmp_path, text, match):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        read_trace(p)


def test_missing_trace_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match="not a file"):
        load_trace(tmp_path)


def test_zero_counts_are_raised_to_one_and_counted(tmp_path):
    p = write(tmp_path, HEADER + "1.0,0,5\n2.0,10,0\n3.0,10,2\n")
    with pytest.warns(UserWarning, match="2 row"):
        tr = read_trace(p)
    assert tr.adjusted_rows == 2 and tr.stats()["adjusted_rows"] == 2
    assert tr.prompt_tokens.tolist() == [1, 10, 10] and tr.output_tokens.tolist() == [5, 1, 2]


def test_backwards_timestamps_are_sorted_and_counted(tmp_path):
    p = write(tmp_path, HEADER + "2023-11-16 18:00:02,20,2\n2023-11-16 18:00:01,10,1\n"
                                 "2023-11-16 18:00:03,30,3\n")
    with pytest.warns(UserWarning, match="sorted"):
        reqs = load_trace(p)
    assert [(r.arrival_s, r.prompt_tokens) for r in reqs] == [(0.0, 10), (1.0, 20), (2.0, 30)]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        assert read_trace(p).reordered_rows == 2


def test_workload_from_small_trace(tmp_path):
    rows = "".join(f"{i * 2.0},{100 * (i + 1)},{10 * (i + 1)}\n" for i in range(10))
    p = write(tmp_path, HEADER + rows)
    w = Workload.from_trace(p)
    assert w.arrival == "trace" and w.rate == pytest.approx(0.5)
    reqs = w.generate()
    assert [r.arrival_s for r in reqs] == [2.0 * i for i in range(10)]
    fast = Workload.from_trace(p, rate_scale=4.0, prompt_scale=0.1, max_output=25)
    assert fast.rate == pytest.approx(2.0)
    r = fast.generate()
    assert [x.arrival_s for x in r] == pytest.approx([0.5 * i for i in range(10)])
    assert [x.prompt_tokens for x in r] == [10 * (i + 1) for i in range(10)]
    assert [x.output_tokens for x in r] == [min(25, 10 * (i + 1)) for i in range(10)]
    assert fast.generate(n=3) == r[:3]
    assert fast.generate(duration_s=1.2) == r[:3]
    with pytest.raises(ValueError, match="has 10 requests"):
        fast.generate(n=11)
    win = Workload.from_trace(p, start_s=5.0, limit=3)
    assert [(x.arrival_s, x.prompt_tokens) for x in win.generate()] == [(1.0, 400), (3.0, 500), (5.0, 600)]
    with pytest.raises(ConfigError, match="no request"):
        Workload.from_trace(p, start_s=100.0)
    with pytest.raises(ValueError):
        Workload.from_trace(p, rate_scale=0)
    # the planner sees the same (shaped) lengths
    assert fast.lengths.mean_prompt == pytest.approx(55.0)
    # resampled lengths from a trace
    d = LengthDist.from_trace(p)
    assert d.kind == "empirical" and d.mean_output == pytest.approx(55.0)


def test_workload_from_spec(tmp_path):
    w = workload_from_spec("code", 2.0, seed=3)
    assert (w.arrival, w.rate, w.lengths.name, w.seed) == ("poisson", 2.0, "code", 3)
    b = workload_from_spec("CONV", 1.0, arrival="bursty", cv=2.0, prompt_scale=0.1, max_output=64)
    assert b.arrival == "bursty" and b.cv == 2.0 and b.lengths.max_output == 64
    with pytest.raises(ConfigError, match="needs a rate"):
        workload_from_spec("code", None)
    with pytest.raises(ConfigError, match="code, conv"):
        workload_from_spec("chat", 1.0)
    with pytest.raises(ValueError):
        workload_from_spec("code", 0.0)
    p = write(tmp_path, HEADER + "".join(f"{i},{100 + i},{5 + i}\n" for i in range(11)))
    t = workload_from_spec(str(p), None)
    assert t.arrival == "trace" and t.rate == pytest.approx(1.0)
    t4 = workload_from_spec(p, 4.0, limit=5)
    assert t4.rate == pytest.approx(4.0) and [r.arrival_s for r in t4.generate()] == pytest.approx(
        [0, 0.25, 0.5, 0.75, 1.0])
    pois = workload_from_spec(p, 3.0, arrival="poisson", seed=1)
    assert pois.arrival == "poisson" and pois.lengths.kind == "empirical"
    assert all(100 <= r.prompt_tokens <= 110 for r in pois.generate(n=50))


# ---- the real Azure LLM inference traces 2023 -----------------------------------------------------

@needs_traces
@pytest.mark.parametrize("path,name,count,rate", [(CODE_CSV, "code", 8819, 2.57),
                                                   (CONV_CSV, "conv", 19366, 5.53)])
def test_real_traces_match_published_figures(path, name, count, rate):
    tr = read_trace(path)
    s = tr.stats()
    fig = PROFILE_FIGURES[name]
    assert s["count"] == count and s["adjusted_rows"] == 0 and s["reordered_rows"] == 0
    assert s["rate"] == pytest.approx(rate, rel=0.01)
    assert 3400 < s["duration_s"] < 3600
    for k, v in fig.items():
        assert s[k] == pytest.approx(v, rel=0.005)
    reqs = Workload.from_trace(tr, rate_scale=2.0).generate()
    assert len(reqs) == count
    assert all(r.prompt_tokens + r.output_tokens <= CONTEXT_TOKENS for r in reqs)
    assert request_stats(reqs)["rate"] == pytest.approx(2 * s["rate"], rel=1e-9)


@needs_traces
def test_real_trace_character():
    code, conv = read_trace(CODE_CSV).stats(), read_trace(CONV_CSV).stats()
    assert code["interarrival_cv"] > 5 > 1.3 > conv["interarrival_cv"] > 0.9  # bursty vs ~Poisson
    # one conv prompt (14050 tokens) exceeds the context: it is clipped when served
    d = LengthDist.from_trace(CONV_CSV)
    assert d.prompts.max() > CONTEXT_TOKENS
    p, o = d.shape(d.prompts, d.outputs)
    assert p.max() == CONTEXT_TOKENS - 1 and (p + o).max() <= CONTEXT_TOKENS


@needs_traces
def test_real_trace_scaled_for_the_runtime():
    w = workload_from_spec(CODE_CSV, 1.0, prompt_scale=1 / 16, output_scale=1.0, max_prompt=256,
                           max_output=32, limit=200, start_s=60.0)
    reqs = w.generate()
    assert len(reqs) == 200 and reqs[0].arrival_s >= 0
    assert max(r.prompt_tokens for r in reqs) <= 256 and max(r.output_tokens for r in reqs) <= 32
    assert request_stats(reqs)["rate"] == pytest.approx(1.0, rel=1e-9)
