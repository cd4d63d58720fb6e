"""A real (tiny) profile of this host: it runs, it is well formed, it round-trips through JSON."""

import json

import pytest
import torch

from e2llm_lite import cli
from e2llm_lite.costmodel import N_COEF, CostModel
from e2llm_lite.errors import ConfigError
from e2llm_lite.profiling import FULL_GRID, QUICK_GRID, profile, save_profile, tiny_grid


@pytest.fixture(scope="module")
def tiny(folder):
    threads = torch.get_num_threads()
    d = profile(tiny_grid(layers=2), folder, progress=False)
    assert torch.get_num_threads() == threads  # profiling uses 1 thread and restores the setting
    return d


def test_tiny_profile_measures_every_point(tiny):
    grid = tiny_grid(layers=2)
    assert len(tiny["measurements"]) == len(grid.points())
    for m in tiny["measurements"]:
        assert m["ms"] > 0 and m["wall_ms"] > 0 and m["repeats"] >= 1
    assert tiny["host"]["threads"] == 1 and tiny["host"]["torch"] == torch.__version__
    assert tiny["grid"]["layers"] == 2
    assert all(len(tiny["fit"][op]["coef"]) == k for op, k in N_COEF.items())


def test_profile_round_trips_through_save_and_load(tiny, tmp_path):
    path = save_profile(tiny, tmp_path / "host.json")
    cm = CostModel.load(path)
    assert cm.coef == {op: tuple(tiny["fit"][op]["coef"]) for op in N_COEF}
    assert cm.host == tiny["host"] and len(cm.measurements) == len(tiny["measurements"])
    assert cm.layer_ms("prefill", tokens=32) > 0 and cm.layer_ms("decode", batch=1, context=8) > 0
    # what the tiny profile measured, the model reproduces roughly (fit points, noisy host)
    for m in tiny["measurements"]:
        if m["op"] in ("prefill_layer", "decode_layer"):
            assert cm.predict(m) == pytest.approx(m["ms"], rel=0.5)
    assert json.loads(path.read_text())["format"] == "e2llm-lite/profile"


def test_save_refuses_an_invalid_profile(tiny, tmp_path):
    bad = dict(tiny, version=7)
    with pytest.raises(ConfigError, match="refusing to save"):
        save_profile(bad, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        save_profile(tiny, tmp_path / "no" / "such" / "x.json")


def test_several_runs_keep_the_median_of_each_point(folder):
    d = profile(tiny_grid(layers=1), folder, progress=False, runs=2)
    assert d["host"]["runs"] == 2
    for m in d["measurements"]:
        assert len(m["run_ms"]) == 2 and m["ms"] == pytest.approx(sum(m["run_ms"]) / 2, abs=1e-4)
    with pytest.raises(ValueError, match="runs"):
        profile(tiny_grid(layers=1), folder, progress=False, runs=0)


def test_grids_hold_out_points_between_the_fitted_ones():
    for grid in (FULL_GRID, QUICK_GRID):
        pts = grid.points()
        fit = {m["tokens"] for m in pts if m["op"] == "prefill_layer" and m["role"] == "fit"}
        held = {m["tokens"] for m in pts if m["op"] == "prefill_layer" and m["role"] == "holdout"}
        assert held and not fit & held and min(fit) < min(held) and max(held) < max(fit)
        dec = [m for m in pts if m["op"] == "decode_layer"]
        assert {m["role"] for m in dec} == {"fit", "holdout"}


def test_cli_profile_writes_a_loadable_profile(monkeypatch, tmp_path, capsys):
    import e2llm_lite.profiling as profiling

    monkeypatch.setattr(profiling, "QUICK_GRID", tiny_grid(layers=1))
    out = tmp_path / "p.json"
    assert cli.main(["profile", "--quick", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["profile"] == str(out) and res["grid"] == "tiny"
    assert CostModel.load(out).coef == {op: tuple(c) for op, c in res["fit"].items()}


def test_decode_points_share_one_kv_buffer_and_see_exactly_their_context(folder):
    """Every decode run sees C cached tokens (views of one shared buffer) and computes what a
    cache holding that same KV gives; the buffer is not modified by the runs."""
    from transformers import DynamicCache

    from e2llm_lite.profiling import _forward_layers, _kv_base, _runner
    from e2llm_lite.stage import Stage

    stage = Stage.load(28, 30, folder)
    base = _kv_base(stage, 4, 64)
    before = [k.clone() for k in base[0]]
    for B, C in [(1, 16), (3, 64), (4, 40)]:
        prepare, run, layers = _runner(stage, {"op": "decode_layer", "batch": B, "context": C}, base)
        assert layers == 2
        for _ in range(3):  # a run appends a token; the next prepare() drops it again
            cache = prepare()
            assert cache.get_seq_length(28) == C
            out = run(cache)
        ref = DynamicCache(config=stage.config)
        for j, i in enumerate(range(28, 30)):
            ref.update(base[0][j][:B, :, :C].clone(), base[1][j][:B, :, :C].clone(), i)
        h = torch.randn(B, 1, stage.config.hidden_size)
        a = _forward_layers(stage, h, ref, C)
        b = _forward_layers(stage, h, prepare(), C)
        assert out.shape == (B, 1, stage.config.hidden_size)
        assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.equal(k, k0) for k, k0 in zip(base[0], before))
    with pytest.raises(ValueError, match="larger than the shared KV buffer"):
        _runner(stage, {"op": "decode_layer", "batch": 8, "context": 16}, base)
