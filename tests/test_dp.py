"""The DP layer partitioner agrees with brute force, returns valid plans, and rejects bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from e2llm_lite.errors import InfeasiblePlan
from e2llm_lite.planning.bruteforce import brute_force_partition
from e2llm_lite.planning.dp import MAX_EXACT_DEVICES, Partition, evaluate, partition

OBJECTIVES = ("bottleneck", "latency")


# ---------------------------------------------------------------------------------------------
# an independent referee for a returned plan
# ---------------------------------------------------------------------------------------------


def check_plan(plan: Partition, inst: dict) -> None:
    """Assert ``plan`` is a valid plan for ``inst`` and that its times and cost are true."""
    compute, comm = np.asarray(inst["compute"], float), np.asarray(inst["comm"], float)
    layer_mem, device_mem = np.asarray(inst["layer_mem"]), np.asarray(inst["device_mem"])
    n, L = compute.shape
    first_ms = inst.get("extra_first_ms")
    last_ms = inst.get("extra_last_ms")
    stages = list(plan.stages)
    assert stages, "no stages"
    devices = [d for d, _, _ in stages]
    assert len(set(devices)) == len(devices), f"a device hosts two stages: {stages}"
    assert all(0 <= d < n for d in devices)
    assert stages[0][1] == 0 and stages[-1][2] == L, f"does not cover 0..{L}: {stages}"
    for (_, _, end), (_, start, _) in zip(stages, stages[1:]):
        assert end == start, f"not contiguous: {stages}"
    times = []
    for i, (d, s, e) in enumerate(stages):
        assert s < e, f"empty stage: {stages}"
        need = layer_mem[s:e].sum()
        t = compute[d, s:e].sum()
        if i == 0:
            need += inst.get("extra_first_mem", 0)
            t += 0 if first_ms is None else first_ms[d]
        if i == len(stages) - 1:
            need += inst.get("extra_last_mem", 0)
            t += 0 if last_ms is None else last_ms[d]
        else:
            t += comm[d, stages[i + 1][0]]
        assert need <= device_mem[d], f"stage {i} does not fit device {d}"
        times.append(t)
    assert plan.stage_times == pytest.approx(times, abs=1e-9)
    expected = max(times) if plan.objective == "bottleneck" else sum(times)
    assert plan.cost == pytest.approx(expected, abs=1e-9)
    assert plan.bottleneck == pytest.approx(max(times), abs=1e-9)


def solve(fn, inst, objective, **kw):
    """The plan, or None when fn raises InfeasiblePlan."""
    try:
        return fn(**inst, objective=objective, **kw)
    except InfeasiblePlan:
        return None


# ---------------------------------------------------------------------------------------------
# random instances: DP == brute force
# ---------------------------------------------------------------------------------------------

# layers per device count, small enough for brute force to stay fast
MAX_LAYERS = {1: 30, 2: 30, 3: 12, 4: 9, 5: 7, 6: 6}


def random_instance(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    L = int(rng.integers(2, MAX_LAYERS[n] + 1))
    speed = rng.uniform(0.1, 1.0, n)
    compute = rng.uniform(0.5, 2.0, (n, L)) / speed[:, None]  # heterogeneous devices and layers
    comm = rng.uniform(0.0, 3.0, (n, n))  # asymmetric
    if rng.random() < 0.3:
        comm[rng.random((n, n)) < 0.3] *= 50  # some slow links
    layer_mem = rng.integers(1, 100, L)  # bytes (integers, like real byte counts)
    inst = dict(compute=compute, layer_mem=layer_mem, comm=comm)
    if rng.random() < 0.4:  # embedding and lm_head
        inst["extra_first_mem"] = int(rng.integers(0, 100))
        inst["extra_last_mem"] = int(rng.integers(0, 100))
        inst["extra_first_ms"] = rng.uniform(0, 2, n)
        inst["extra_last_ms"] = rng.uniform(0, 5, n)
    need = layer_mem.sum() + inst.get("extra_first_mem", 0) + inst.get("extra_last_mem", 0)
    # budgets from "too small for anything" to "each device holds the whole model"
    scale = rng.choice([0.5, 1.5, 2.5, 4.0, 8.0])
    inst["device_mem"] = rng.integers(0, int(scale * need / n * 2) + 2, n)
    return inst


SEEDS = range(340)


@pytest.mark.parametrize("seed", SEEDS)
def test_dp_matches_brute_force(seed):
    inst = random_instance(seed)
    for objective in OBJECTIVES:
        dp = solve(partition, inst, objective)
        bf = solve(brute_force_partition, inst, objective)
        assert (dp is None) == (bf is None), f"feasibility differs: dp={dp} bf={bf}"
        if dp is None:
            continue
        assert dp.exact and dp.objective == objective
        assert abs(dp.cost - bf.cost) <= 1e-9, (dp, bf)
        check_plan(dp, inst)
        check_plan(bf, inst)


def test_random_instances_cover_the_interesting_cases():
    """The seeds above include infeasible ones, multi-stage optima and 6-device instances."""
    infeasible = multi_stage = six = 0
    for seed in SEEDS:
        inst = random_instance(seed)
        six += inst["compute"].shape[0] == 6
        plan = solve(partition, inst, "bottleneck")
        infeasible += plan is None
        multi_stage += plan is not None and len(plan.stages) >= 3
    assert infeasible >= 30 and multi_stage >= 30 and six >= 30, (infeasible, multi_stage, six)


# ---------------------------------------------------------------------------------------------
# hand-made cases
# ---------------------------------------------------------------------------------------------


def plain(compute, layer_mem, device_mem, comm):
    return dict(
        compute=np.asarray(compute, float),
        layer_mem=np.asarray(layer_mem),
        device_mem=np.asarray(device_mem),
        comm=np.asarray(comm, float),
    )


def test_one_device_takes_everything():
    inst = plain([[1.0, 2.0, 3.0]], [1, 1, 1], [3], [[0.0]])
    for objective in OBJECTIVES:
        plan = partition(**inst, objective=objective)
        assert plan.stages == ((0, 0, 3),)
        assert plan.cost == 6.0 and plan.stage_times == (6.0,) and plan.exact


def test_one_device_with_extras():
    inst = plain([[1.0, 2.0]], [1, 1], [4], [[0.0]])
    plan = partition(**inst, extra_first_mem=1, extra_last_mem=1, extra_first_ms=[0.5], extra_last_ms=[4.0])
    assert plan.stages == ((0, 0, 2),) and plan.cost == pytest.approx(7.5)
    with pytest.raises(InfeasiblePlan):  # the extras no longer fit
        partition(**inst, extra_first_mem=1, extra_last_mem=2)


def test_memory_forces_a_split():
    # device 0 is 10x faster but holds only 2 of the 6 layers
    inst = plain([[1.0] * 6, [10.0] * 6], [1] * 6, [2, 6], [[0, 1.0], [1.0, 0]])
    bf = brute_force_partition(**inst)
    for objective in OBJECTIVES:
        plan = partition(**inst, objective=objective)
        check_plan(plan, inst)
        assert len(plan.stages) == 2
        assert {d for d, _, _ in plan.stages} == {0, 1}
        assert [e - s for d, s, e in plan.stages if d == 0] == [2]  # the fast device is filled
    assert partition(**inst).cost == pytest.approx(bf.cost)


def test_slow_link_makes_the_dp_avoid_a_device():
    # device 2 is the fastest, but every link to or from it costs 100 ms; memory needs two devices
    comm = np.full((3, 3), 0.1)
    comm[2, :] = comm[:, 2] = 100.0
    inst = plain([[1.0] * 4, [1.0] * 4, [0.5] * 4], [1] * 4, [2, 2, 2], comm)
    plan = partition(**inst)
    assert 2 not in plan.devices
    assert plan.stages == ((0, 0, 2), (1, 2, 4))
    assert plan.cost == pytest.approx(2.1)
    # with a fast link the fastest device is used
    inst["comm"] = np.full((3, 3), 0.1)
    assert 2 in partition(**inst).devices


def test_asymmetric_link_decides_the_order():
    comm = np.array([[0.0, 5.0], [0.1, 0.0]])  # 0 -> 1 is slow, 1 -> 0 is fast
    inst = plain([[1.0] * 4, [1.0] * 4], [1] * 4, [2, 2], comm)
    plan = partition(**inst)
    assert plan.devices == (1, 0) and plan.cost == pytest.approx(2.1)


def test_objectives_differ():
    # both devices hold the whole model; splitting halves the bottleneck but adds a transfer
    inst = plain([[1.0] * 4, [1.0] * 4], [1] * 4, [4, 4], [[0, 0.5], [0.5, 0]])
    assert partition(**inst, objective="bottleneck").stages == ((0, 0, 2), (1, 2, 4))
    assert partition(**inst, objective="bottleneck").cost == pytest.approx(2.5)
    assert partition(**inst, objective="latency").stages == ((0, 0, 4),)
    assert partition(**inst, objective="latency").cost == pytest.approx(4.0)


def test_lm_head_extra_moves_the_last_stage():
    # device 0's lm_head would take 10 ms, so device 1 must hold the last stage
    inst = plain([[1.0] * 4, [1.0] * 4], [1] * 4, [2, 2], np.zeros((2, 2)))
    plan = partition(**inst, extra_last_ms=[10.0, 0.0])
    assert plan.devices == (0, 1) and plan.cost == pytest.approx(2.0)
    plan = partition(**inst, extra_first_ms=[0.0, 10.0])
    assert plan.devices == (0, 1)
    plan = partition(**inst, extra_first_ms=[10.0, 0.0])
    assert plan.devices == (1, 0)


def test_ties_are_broken_as_documented():
    inst = plain(np.ones((3, 3)), [1] * 3, [3] * 3, np.zeros((3, 3)))
    # bottleneck 1 needs all three devices: first device 0, earliest end, smallest next device
    assert partition(**inst).stages == ((0, 0, 1), (1, 1, 2), (2, 2, 3))
    # latency 3 for every plan: fewest devices, then smallest device set
    assert partition(**inst, objective="latency").stages == ((0, 0, 3),)
    # same answer every time
    assert len({partition(**random_instance(7)).stages for _ in range(3)}) == 1


def test_stage_validity_on_a_real_sized_replica():
    rng = np.random.default_rng(1)
    n, L = 8, 30
    speed = rng.uniform(0.05, 1, n)
    inst = plain(
        rng.uniform(1.5, 2.5, L)[None, :] / speed[:, None],
        np.full(L, 19),
        rng.integers(100, 300, n),
        rng.uniform(0.1, 5, (n, n)),
    )
    for objective in OBJECTIVES:
        plan = partition(**inst, objective=objective)
        assert plan.exact and len(plan.stages) >= 2  # 570 bytes, no device holds more than 300
        check_plan(plan, inst)


def test_infeasible_message_states_the_figures():
    inst = plain(np.ones((2, 3)), [5, 50, 5], [40, 40], np.zeros((2, 2)))
    for fn in (partition, brute_force_partition):
        with pytest.raises(InfeasiblePlan) as err:
            fn(**inst)
        msg = str(err.value)
        assert "80 bytes in total" in msg and "60 bytes" in msg and "layer 1 with 50 bytes" in msg
    # enough in total, but a contiguous split does not fit
    inst = plain(np.ones((2, 3)), [30, 30, 30], [45, 45], np.zeros((2, 2)))
    with pytest.raises(InfeasiblePlan, match="total would suffice"):
        partition(**inst)


def test_partition_is_frozen():
    plan = partition(**plain([[1.0]], [1], [1], [[0.0]]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.cost = 0.0  # type: ignore[misc]
    assert plan.latency == plan.bottleneck == 1.0


def test_evaluate_a_hand_made_plan():
    inst = plain(np.ones((2, 4)), [1] * 4, [4, 4], [[0, 0.5], [0.25, 0]])
    plan = evaluate([(1, 0, 1), (0, 1, 4)], **inst)
    assert plan.stage_times == (1.25, 3.0) and plan.cost == 3.0 and not plan.exact
    for bad in ([(0, 0, 2)], [(0, 0, 2), (0, 2, 4)], [(0, 0, 2), (1, 3, 4)], [(2, 0, 4)], []):
        with pytest.raises(ValueError):
            evaluate(bad, **inst)
    with pytest.raises(InfeasiblePlan):
        evaluate([(0, 0, 4)], **{**inst, "device_mem": np.array([3, 3])})


# ---------------------------------------------------------------------------------------------
# above MAX_EXACT_DEVICES: the heuristic is valid, never better than the optimum, and flagged
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_heuristic_is_valid_and_flagged(seed):
    inst = random_instance(1000 + seed)
    n = inst["compute"].shape[0]
    for objective in OBJECTIVES:
        exact = solve(brute_force_partition, inst, objective)
        for limit in range(0, n):
            plan = solve(partition, inst, objective, max_exact_devices=limit)
            if plan is None:
                continue
            assert exact is not None, "heuristic found a plan where none exists"
            assert not plan.exact
            check_plan(plan, inst)
            assert plan.cost >= exact.cost - 1e-9


def test_many_devices_use_the_heuristic_by_default():
    rng = np.random.default_rng(3)
    n, L = MAX_EXACT_DEVICES + 2, 8
    inst = plain(rng.uniform(1, 5, (n, L)), [1] * L, rng.integers(2, 5, n), rng.uniform(0, 1, (n, n)))
    plan = partition(**inst)
    assert not plan.exact
    check_plan(plan, inst)
    exact = partition(**inst, max_exact_devices=n)
    assert exact.exact and exact.cost <= plan.cost + 1e-9


# ---------------------------------------------------------------------------------------------
# malformed input
# ---------------------------------------------------------------------------------------------

GOOD = plain(np.ones((2, 3)), [1, 1, 1], [3, 3], np.zeros((2, 2)))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(compute=np.ones(3)), "2-D"),
        (dict(compute=np.ones((0, 3))), "at least one device"),
        (dict(compute=np.ones((2, 0)), layer_mem=np.ones(0)), "at least one layer"),
        (dict(compute=[["a", "b", "c"], ["d", "e", "f"]]), "numbers"),
        (dict(compute=np.array([[1, np.nan, 1], [1, 1, 1]])), "finite"),
        (dict(compute=np.array([[1, -1, 1], [1, 1, 1]])), ">= 0"),
        (dict(layer_mem=[1, 1]), r"layer_mem must have shape \(3,\)"),
        (dict(layer_mem=[1, np.inf, 1]), "finite"),
        (dict(layer_mem=[1, -1, 1]), ">= 0"),
        (dict(device_mem=[3, 3, 3]), r"device_mem must have shape \(2,\)"),
        (dict(device_mem=[3, np.nan]), "finite"),
        (dict(comm=np.zeros((2, 3))), r"comm must have shape \(2, 2\)"),
        (dict(comm=np.array([[0, np.inf], [0, 0]])), "finite"),
        (dict(comm=np.array([[0, -1.0], [0, 0]])), ">= 0"),
        (dict(objective="throughput"), "unknown objective"),
        (dict(extra_first_ms=[1.0]), "extra_first_ms"),
        (dict(extra_last_ms=[1.0, np.nan]), "extra_last_ms"),
        (dict(extra_first_mem=-1), "extra_first_mem"),
        (dict(extra_last_mem=[1, 2]), "extra_last_mem"),
    ],
)
def test_malformed_input_is_a_value_error(change, match):
    args = {**GOOD, **change}
    for fn in (partition, brute_force_partition):
        with pytest.raises(ValueError, match=match):
            fn(**args)


def test_exact_dp_refuses_a_table_that_cannot_fit():
    n = 21
    inst = plain(np.ones((n, 2)), [1, 1], [2] * n, np.zeros((n, n)))
    with pytest.raises(ValueError, match="max_exact_devices"):
        partition(**inst, max_exact_devices=n)
    assert not partition(**inst).exact
