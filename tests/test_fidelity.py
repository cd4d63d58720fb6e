"""serving/fidelity.py: pairing a real run with a simulated one, the error table, step errors."""

import pytest

from e2llm_lite.costmodel import CostModel
from e2llm_lite.devices import default_cluster
from e2llm_lite.planning import make_plan
from e2llm_lite.serving.fidelity import (METRICS, error_table, median_error_by_size, paired,
                                         step_errors)
from e2llm_lite.serving.simulator import simulate_requests
from e2llm_lite.traces import Request


@pytest.fixture(scope="module")
def runs():
    cluster = default_cluster(2)
    plan = make_plan(cluster, "splitwise", "conv", 1.0)
    reqs = [Request(i, 0.2 * i, 20 + i, 3) for i in range(6)]
    a = simulate_requests(plan, cluster, reqs)
    b = simulate_requests(plan, cluster, reqs[:5])        # one request the "simulation" lacks
    return cluster, a, b


def test_paired_rows_follow_the_records(runs):
    _, a, b = runs
    rows = paired(a, b)
    assert [r["id"] for r in rows] == sorted(a.records)
    for r in rows[:5]:
        for m in METRICS:
            assert r[m][0] == pytest.approx(r[m][1])          # same stream, same simulator
    assert all(rows[5][m][1] is None for m in METRICS)        # missing on one side: None
    rec = a.records[0]
    assert rows[0]["e2e_s"][0] == pytest.approx(rec.end_s - rec.arrival_s)


def test_error_table_is_real_over_sim_minus_one():
    real = {"summary": {m: {"mean": 1.1, "p90": 2.0} for m in METRICS}}
    sim = {"summary": {m: {"mean": 1.0, "p90": 0.0} for m in METRICS}}
    t = error_table(real, sim)
    assert t["ttft_s"]["error"]["mean"] == pytest.approx(0.1)
    assert t["ttft_s"]["error"]["p90"] is None                # nothing to compare with
    assert t["e2e_s"]["real"] == {"mean": 1.1, "p90": 2.0}


def test_step_errors_against_the_cost_model(runs):
    cluster, _, _ = runs
    cm = CostModel.load()
    dev = cluster.devices[0]
    model = cm.stage_ms(dev, 0, 30, "prefill", tokens=16)
    dec = cm.stage_ms(dev, 0, 30, "decode", batch=4, context=64)
    rows = [{"device": dev.name, "phase": "prefill", "tokens": 16, "start_ms": 0.0, "end_ms": 1.5 * model},
            {"device": dev.name, "phase": "decode", "tokens": 4, "start_ms": 10.0, "end_ms": 10.0 + dec}]
    st = step_errors(rows, {dev.name: (0, 30)}, cluster, cm)
    assert st[0]["error"] == pytest.approx(0.5) and st[1]["error"] == pytest.approx(0.0, abs=1e-9)
    assert median_error_by_size(st, "prefill") == {16: pytest.approx(0.5)}
    at300 = cm.stage_ms(dev, 0, 30, "decode", batch=4, context=300)   # a row that records its context
    st = step_errors([dict(rows[1], context=300.0, end_ms=10.0 + at300)], {dev.name: (0, 30)}, cluster, cm)
    assert st[0]["model_ms"] == pytest.approx(at300) and st[0]["error"] == pytest.approx(0.0, abs=1e-9)
