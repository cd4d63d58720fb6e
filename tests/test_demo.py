"""`e2llm-lite demo`, the main job, end to end at a small size: the model on emulated devices,
a real E2LLM / Splitwise pair, the simulated comparison — one JSON object, figures written."""

from __future__ import annotations

import json

from e2llm_lite.cli import main
from e2llm_lite.devices import default_cluster


def test_demo_runs_every_part(tmp_path, capsys):
    pair = tmp_path / "pair.json"
    default_cluster(2).save(pair)
    out = tmp_path / "demo"
    code = main(["demo", "--json", "--max-new-tokens", "4", "--real-cluster", str(pair),
                 "--real-requests", "2", "--prompt-scale", "0.02", "--cluster", "home4",
                 "--requests", "30", "--out", str(out)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["identical"] and data["emulated"]["identical"]
    real = data["real_pair"]
    assert set(real["strategies"]) == {"e2llm", "splitwise"}
    for r in real["strategies"].values():
        assert r["requests_done"] == 2 and r["texts"]
    comp = data["comparison"]
    assert {(e["strategy"], e["load"]) for e in comp["results"]} == \
        {(s, x) for s in ("e2llm", "splitwise", "colocated") for x in (0.5, 0.9, 1.1)}
    assert {"summary.md", "summary.csv", "waiting_vs_load.png", "plans.png"} <= {p.name for p in out.iterdir()}
