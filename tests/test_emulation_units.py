"""Throttle arithmetic and memory accounting, without processes."""

import time

import pytest

from e2llm_lite.errors import DeviceOOM
from e2llm_lite.model import ANATOMY
from e2llm_lite.memory import MIB, MemoryLedger
from e2llm_lite.runtime.throttle import HostFactor, Throttle, auto_dilation, outlying


def busy(ms):
    t = time.thread_time()
    while time.thread_time() - t < ms / 1e3:
        pass


def test_host_factor_interpolates_in_log_size_and_holds_outside_its_points():
    f = HostFactor()
    assert f.at(0, 50) == 1.0 and f.at(1, 4) == 1.0              # uncalibrated
    f.add(0, 128, 1.0)
    f.add(0, 16, 1.5)
    assert f.at(0, 16) == 1.5 and f.at(0, 128) == 1.0
    assert f.at(0, 4) == 1.5 and f.at(0, 1000) == 1.0            # nearest point outside
    assert f.at(0, 45.254834) == pytest.approx(1.25)              # sqrt(16 * 128): halfway in log
    assert f.at(1, 8) == 1.0                                      # phases are apart
    f.add(0, 16, 2.0)                                             # a re-calibration replaces
    assert f.points[0] == {0.0: [(16.0, 2.0), (128.0, 1.0)]}
    for bad in [(2, 16, 1.0), (0, 0, 1.0), (0, 16, 0.0), (0, 16, float("nan")), (1, 4, 1.0, -1)]:
        with pytest.raises(ValueError, match="bad calibration point"):
            f.add(*bad)


def test_a_spike_off_its_neighbours_line_is_found():
    """A probe timed in a slow spell of the host stands out of its neighbours' line."""
    steady = [(1, 1.0), (2, 1.1), (3, 1.05), (4, 1.2), (8, 1.35), (16, 1.6)]
    assert outlying(steady) == []
    spiked = [(1, 1.0), (2, 1.1), (3, 1.05), (4, 1.2), (8, 2.9), (16, 1.6)]
    assert outlying(spiked) == [4]
    assert outlying([(1, 1.0), (2, 1.0), (4, 0.5)]) == [2]        # an end: against its one neighbour
    assert outlying([(1, 0.4), (2, 1.0), (4, 1.0)]) == [0]
    assert outlying([(8, 1.0), (64, 5.0)]) == []                   # fewer than 3: no judging
    assert outlying([(1, 3.0), (2, 1.0), (4, 1.0)], ratio=4) == []


def test_a_decode_factor_follows_the_context_too():
    f = HostFactor()
    for b, f8, f256 in ((1, 1.0, 0.8), (16, 1.6, 1.2)):
        f.add(1, b, f8, context=8)
        f.add(1, b, f256, context=256)
    assert f.at(1, 1, 8) == 1.0 and f.at(1, 16, 256) == 1.2
    assert f.at(1, 4, 8) == pytest.approx(1.3) and f.at(1, 4, 256) == pytest.approx(1.0)   # halfway in log B
    assert f.at(1, 16, 8 * 32 ** 0.5) == pytest.approx(1.4)                                # halfway in log context
    assert f.at(1, 16, 2) == 1.6 and f.at(1, 16, 5000) == 1.2                               # nearest context outside
    assert f.at(1, 4) == pytest.approx(1.3)            # no context given: the smallest probed one


@pytest.mark.quiet
def test_throttle_stretches_a_step_to_dilation_times_cpu_over_speed():
    th = Throttle(dilation=2.0)
    th.run(lambda: busy(5), speed=0.5)
    last = th.last
    assert last["target_s"] == pytest.approx(2.0 * last["cpu_s"] / 0.5)
    assert last["end"] - last["start"] >= last["target_s"]
    assert th.sleep_s > 0 and th.steps == 1 and th.overruns == 0


def test_a_step_slower_than_its_target_is_an_overrun():
    th = Throttle(dilation=1.0)
    th.run(lambda: time.sleep(0.02), speed=1.0)     # wall time but almost no CPU time
    assert th.overruns == 1


def test_auto_dilation_keeps_the_fastest_device_below_the_host():
    assert auto_dilation(0.5) == 1.0
    assert auto_dilation(12.8, concurrency=1) == pytest.approx(19.2)
    assert auto_dilation(12.8, concurrency=4, cores=2) == pytest.approx(38.4)
    # a list of speeds: the fastest alone, or the concurrency fastest sharing the cores
    assert auto_dilation([12.8, 1, 1, 1], concurrency=4, cores=2) == pytest.approx(19.2)
    assert auto_dilation([5, 5, 5, 5, 0.5], concurrency=4, cores=2) == pytest.approx(15.0)
    assert auto_dilation([5, 5, 5, 5, 0.5], concurrency=1) == pytest.approx(7.5)
    with pytest.raises(ValueError):
        auto_dilation(0)
    with pytest.raises(ValueError):
        Throttle(dilation=0.5)


def test_memory_ledger_refuses_weights_and_kv_exactly_at_the_budget():
    acc = MemoryLedger("pi", 136 * MIB, 10, 20)
    assert acc.weight_bytes == 10 * ANATOMY.layer_bytes
    acc.check_weights()                                    # 135.04 MiB fits 136
    with pytest.raises(DeviceOOM, match="'pi'.*budget is 136.0 MiB"):
        acc.reserve(1, 64)
    acc = MemoryLedger("pi", 140 * MIB, 10, 20)
    per_tok = 10 * 1536
    room = 140 * MIB - acc.weight_bytes
    n = 0
    with pytest.raises(DeviceOOM):
        while True:
            acc.reserve(1, 1)
            n += 1
    assert acc.kv_bytes == n * per_tok
    assert n * per_tok + acc.working_bytes(1) <= room < (n + 1) * per_tok + acc.working_bytes(1)
    with pytest.raises(DeviceOOM, match="layers \\[0,30\\)"):
        MemoryLedger("tiny", 500 * MIB, 0, 30).check_weights()
