"""The shared, torch-free rules: the link formula, the memory rule and ledger, and splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from e2llm_lite.devices import Link, ms_per_byte, preset, transfer_ms
from e2llm_lite.errors import DeviceOOM
from e2llm_lite.memory import MIB, MemoryLedger, stage_need_bytes, working_bytes
from e2llm_lite.model import ANATOMY
from e2llm_lite.planning import ReplicaPlanner, workload_stats
from e2llm_lite.planning.dp import evaluate
from e2llm_lite.planning.queueing import kv_handoff_s
from e2llm_lite.split import check_split, even_split, kv_handoff_ms, kv_pieces, stage_times


# ---------------------------------------------------------------- the link formula

def test_link_formula_is_one_function():
    link = Link(200.0, 3.0)
    assert link.transfer_ms(1e6) == transfer_ms(1e6, 3.0, 200.0) == 3.0 + 1e6 * 8 / 200e6 * 1e3
    assert transfer_ms(123, 2.0, math.inf) == 2.0 and ms_per_byte(math.inf) == 0.0
    bw, lat = np.array([100.0, 1000.0]), np.array([20.0, 0.5])
    assert np.array_equal(transfer_ms(4096, lat, bw), [Link(b, l).transfer_ms(4096) for b, l in zip(bw, lat)])


def test_the_planner_times_links_by_the_link_formula():
    cluster = preset("home4")
    pl = ReplicaPlanner(cluster, stats="conv")
    comm = pl.phase_times(np.arange(4), "decode", 4)[3]
    nbytes = 4 * ANATOMY.hidden_bytes_per_token
    for a in range(4):
        for b in range(4):
            want = 0.0 if a == b else cluster.link(a, b).transfer_ms(nbytes)
            assert comm[a, b] == want


# ---------------------------------------------------------------- the memory rule

def test_working_memory_and_stage_need():
    a = ANATOMY
    assert working_bytes(10) == 10 * 4 * (2 * a.hidden + 3 * a.intermediate)
    assert working_bytes(10, logit_rows=3) == working_bytes(10)  # logits only on the last stage
    assert working_bytes(10, 3, last=True) == working_bytes(10) + 3 * a.vocab * 4
    need = stage_need_bytes(20, 30, kv_tokens=100, act_tokens=8, logit_rows=2)
    assert need == (a.stage_weight_bytes(20, 30) + 100 * 10 * 1536 + working_bytes(8, 2, True))


@pytest.mark.parametrize("start, end", [(0, 8), (8, 20), (20, 30), (0, 30)])
def test_the_ledger_admits_by_the_planners_rule(start, end):
    """A step of t tokens with k cached needs exactly stage_need_bytes(k + t tokens of KV, a t-token
    step, one logits row): the rule the planner sizes stages with is the one the worker enforces."""
    rng = np.random.default_rng(start)
    for _ in range(20):
        k, t = int(rng.integers(0, 4000)), int(rng.integers(1, 600))
        need = stage_need_bytes(start, end, k + t, t, 1)
        for budget in (need - 1, need):
            ledger = MemoryLedger("d", budget, start, end)
            if k:
                ledger.add_kv(7, k)
            assert ledger.need_bytes(t) == need
            assert ledger.fits(t) == (need <= budget)
            if need <= budget:
                ledger.reserve(1, t)
                assert ledger.kv_tokens[1] == t and ledger.peak_bytes == need
            else:
                with pytest.raises(DeviceOOM, match="budget"):
                    ledger.reserve(1, t)
                assert 1 not in ledger.kv_tokens  # refused: nothing accounted


def test_ledger_release_import_and_free():
    ledger = MemoryLedger("d", 500 * MIB, 10, 20)
    ledger.reserve(1, 64)
    ledger.release(1, 64)
    assert ledger.kv_bytes == 0
    ledger.reserve_import(2, 5, 100)  # half the stage's layers
    assert ledger.kv_bytes == 5 * 100 * 1536
    ledger.reserve_import(2, 5, 100)
    assert ledger.kv_tokens[2] == 100 and ledger.kv_bytes == 10 * 100 * 1536
    ledger.free(2)
    assert ledger.used_bytes == ledger.weight_bytes


def test_planned_replicas_pass_the_ledger():
    """Every stage of a planned decoder lets its B sequences take their last decode step (KV of
    ceil(Tm + Om) tokens each) by the ledger's rule."""
    stats = workload_stats("conv")
    cluster = preset("mixed8")
    rp = ReplicaPlanner(cluster, stats=stats).plan(["office-nuc", "home-laptop", "office-orin"], "decoder")
    ctx = stats.context_tokens
    for dev, s, e in rp.stages:
        ledger = MemoryLedger(dev, cluster.device(dev).memory_mib * MIB, s, e)
        ledger.kv_tokens.update({i: ctx - 1 for i in range(rp.batch)})
        assert ledger.fits(1)
        # the planner's reserve (B-token step, B logits rows) is at least what the ledger asks
        assert stage_need_bytes(s, e, rp.kv_tokens, rp.act_tokens, rp.logit_rows) >= ledger.need_bytes(1)


# ---------------------------------------------------------------- splits

def test_check_split():
    check_split([(0, 10), (10, 30)], 30)
    check_split([("a", 0, 30)], 30)
    with pytest.raises(ValueError, match="at least one stage"):
        check_split([], 30)
    with pytest.raises(ValueError, match="contiguous"):
        check_split([(0, 10), (11, 30)], 30)
    with pytest.raises(ValueError, match="contiguous"):
        check_split([("a", 0, 0), ("b", 0, 30)], 30)
    with pytest.raises(ValueError, match="not the model's 0..30"):
        check_split([(0, 29)], 30)
    with pytest.raises(ValueError, match="more than one stage"):
        check_split([("a", 0, 10), ("a", 10, 30)], 30)
    assert even_split(3) == [(0, 10), (10, 20), (20, 30)]
    with pytest.raises(ValueError):
        ANATOMY.check_split([(0, 31)])


def test_stage_times_is_the_dps_formula():
    rng = np.random.default_rng(1)
    compute, comm = rng.uniform(1, 2, (3, 6)), rng.uniform(0, 1, (3, 3))
    first, last = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    stages = [(2, 0, 1), (0, 1, 4), (1, 4, 6)]
    times = stage_times(stages, compute, first, last, comm)
    assert times[0] == pytest.approx(compute[2, 0] + first[2] + comm[2, 0])
    assert times[2] == pytest.approx(compute[1, 4:].sum() + last[1])
    part = evaluate(stages, compute, np.zeros(6), np.ones(3), comm, extra_first_ms=first, extra_last_ms=last)
    assert list(part.stage_times) == times


def test_kv_pieces_and_handoff():
    src = [("p1", 0, 12), ("p2", 12, 30)]
    dst = [("d1", 0, 8), ("d2", 8, 20), ("d3", 20, 30)]
    assert kv_pieces(src, dst) == [("p1", "d1", 0, 8), ("p1", "d2", 8, 12), ("p2", "d2", 12, 20),
                                   ("p2", "d3", 20, 30)]
    ms = kv_handoff_ms(src, dst, lambda a, b, n: n / 1e3, 100, 1536)
    assert ms == max(100 * 12 * 1536, 100 * 18 * 1536) / 1e3  # sources in parallel, pieces in a row
    cluster = preset("mixed8")
    pl = ReplicaPlanner(cluster, stats="conv")
    pre, dec = pl.plan(["home-laptop", "office-nuc"], "prefill"), pl.plan(["fog"], "decoder")
    want = max(sum(cluster.link(a, b).transfer_ms(1000 * (e - s) * 1536)
                   for a, b, s, e in kv_pieces(pre.stages, dec.stages) if a == src_dev)
               for src_dev in pre.devices) / 1e3
    assert kv_handoff_s(pre, dec, cluster, 1000) == pytest.approx(want)
