"""E2LLM vs Splitwise on the real emulated devices (compare/real.py): both strategies served for
real and simulated on the same requests, the real tokens the single-process greedy ones, the
ratios and their agreement computed from the means."""

from dataclasses import replace

import pytest

from e2llm_lite.compare.real import METRICS, real_pair
from e2llm_lite.devices import default_cluster
from e2llm_lite.generation import greedy_decode, stages_forward
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.serving.prompts import prompt_ids
from e2llm_lite.stage import load_stages
from e2llm_lite.workload import workload_from_spec

N, SCALE = 4, 0.02


@pytest.mark.filterwarnings("ignore:after calibration")   # dilation 1 here: overruns are expected
@pytest.mark.filterwarnings("ignore:the plan keeps")
def test_real_pair_serves_both_strategies_and_compares_them(monkeypatch, tokenizer, folder):
    # seconds, not minutes: no calibration (~30 s per plan) and an unstretched clock, as in
    # test_serving_real.py; the figures are then not meant to match, the bookkeeping is
    monkeypatch.setattr(EmulatedCluster, "calibrate", lambda self, *a, **k: {})
    out = real_pair(default_cluster(2), "conv", n_requests=N, prompt_scale=SCALE, dilation=1.0,
                    texts=N)
    assert set(out["strategies"]) == {"e2llm", "splitwise"}
    assert out["requests"] == N and out["rate_rps"] == pytest.approx(0.9 * out["saturation_rps"])

    wl = workload_from_spec("conv", 1.0, seed=0, prompt_scale=SCALE, output_scale=SCALE)
    requests = replace(wl, rate=out["rate_rps"]).generate(n=N)
    local = load_stages([(0, 30)], folder)
    reference = {}
    for r in requests:
        local[0].free()
        ids = greedy_decode(stages_forward(local), prompt_ids(tokenizer, r.prompt_tokens, r.id),
                            r.output_tokens).tokens
        reference[str(r.id)] = tokenizer.decode(ids)

    for name, s in out["strategies"].items():
        assert s["requests_done"] == s["sim_summary"]["requests_done"] == N and not s["rejected"]
        assert s["texts"] == reference, name                 # the single-process greedy answers
        assert s["dilation"] == 1.0 and s["wall_s"] > 0
        for kind in ("real", "sim"):
            assert s[kind] == {m: s[f"{kind}_summary"]["summary"][m]["mean"] for m in METRICS}
    e, w = out["strategies"]["e2llm"], out["strategies"]["splitwise"]
    for m in METRICS:
        for kind in ("real", "sim"):   # a mean of 0 (no request waited) gives no ratio
            want = e[kind][m] / w[kind][m] if w[kind][m] else None
            assert out[f"ratio_{kind}"][m] == (None if want is None else pytest.approx(want))
        rr, rs = out["ratio_real"][m], out["ratio_sim"][m]
        assert out["agree"][m] == (None if rr is None or rs is None else (rr < 1) == (rs < 1))
    assert out["ratio_real"]["e2e_s"] is not None and out["agree"]["e2e_s"] is not None
