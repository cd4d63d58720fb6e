"""The DP's arrays built from a cluster and the cost model, the exo split, and replace_device."""

import numpy as np
import pytest

from e2llm_lite.costmodel import CostModel
from e2llm_lite.devices import preset
from e2llm_lite.errors import ConfigError
from e2llm_lite.model import ANATOMY
from e2llm_lite.planning.arrays import MIB, DPArrays, dp_arrays, replace_device
from e2llm_lite.planning.baselines import exo_stages
from e2llm_lite.planning.bruteforce import brute_force_partition
from e2llm_lite.planning.dp import evaluate, partition


@pytest.fixture(scope="module")
def cm():
    return CostModel.load()


@pytest.fixture(scope="module")
def home4():
    return preset("home4")


def test_prefill_arrays_match_the_cost_model(cm, home4):
    a = dp_arrays(home4, cm, "prefill", tokens=512)
    n, L = len(home4), ANATOMY.n_layers
    assert isinstance(a, DPArrays) and a.names == tuple(home4.names)
    assert a.compute.shape == (n, L) and a.comm.shape == (n, n)
    # a whole-model single stage on a device costs what the cost model says
    for i, dev in enumerate(home4.devices):
        whole = a.compute[i].sum() + a.extra_first_ms[i] + a.extra_last_ms[i]
        assert whole == pytest.approx(cm.stage_ms(dev, 0, L, "prefill", tokens=512))
        assert a.device_mem[i] == dev.memory_mib * MIB
    # transfers: the hidden state of 512 tokens over the pair's link, zero diagonal
    nbytes = 512 * ANATOMY.hidden_bytes_per_token
    assert a.comm[0, 1] == pytest.approx(home4.link(0, 1).transfer_ms(nbytes))
    assert a.comm[0, 3] == pytest.approx(home4.link(0, 3).transfer_ms(nbytes))
    assert np.all(np.diag(a.comm) == 0)
    # memory: weights + KV of the prompt per layer; embedding first, norm + lm_head copy last
    assert a.layer_mem[0] == ANATOMY.layer_bytes + 512 * ANATOMY.kv_bytes_per_token_layer
    assert a.extra_first_mem == ANATOMY.embed_bytes
    assert a.extra_last_mem == ANATOMY.embed_bytes + ANATOMY.norm_bytes
    # a single stage holding everything needs exactly the anatomy's weights (+ KV)
    need = a.layer_mem.sum() + a.extra_first_mem + a.extra_last_mem
    assert need == ANATOMY.stage_weight_bytes(0, L) + ANATOMY.stage_kv_bytes(0, L, 512)


def test_decode_arrays_and_kv_tokens(cm, home4):
    a = dp_arrays(home4, cm, "decode", batch=2, context=100)
    assert a.layer_mem[0] == ANATOMY.layer_bytes + 2 * 101 * ANATOMY.kv_bytes_per_token_layer
    assert a.comm[0, 1] == pytest.approx(home4.link(0, 1).transfer_ms(2 * ANATOMY.hidden_bytes_per_token))
    assert a.compute[1, 0] == pytest.approx(
        cm.layer_ms("decode", batch=2, context=100) / home4.devices[1].decode_speed)
    w = dp_arrays(home4, cm, "decode", batch=2, context=100, kv_tokens=0)
    assert w.layer_mem[0] == ANATOMY.layer_bytes
    with pytest.raises(ValueError, match="kv_tokens"):
        dp_arrays(home4, cm, "decode", kv_tokens=-1)
    with pytest.raises(ValueError, match="tokens"):
        dp_arrays(home4, cm, "prefill")  # a prefill needs tokens=


def test_arrays_feed_partition_and_brute_force(cm, home4):
    a = dp_arrays(home4, cm, "prefill", tokens=64)
    p = partition(**a.kwargs())
    assert p.exact and p.stages[0][1] == 0 and p.stages[-1][2] == ANATOMY.n_layers
    small = a.head(8)
    assert small.compute.shape == (4, 8) and small.layer_mem.shape == (8,)
    assert partition(**small.kwargs()).cost == pytest.approx(brute_force_partition(**small.kwargs()).cost)
    with pytest.raises(ValueError):
        a.head(0)


def test_exo_split_is_memory_proportional_largest_first():
    assert exo_stages([1, 1, 2], 8) == [(2, 0, 4), (1, 4, 6), (0, 6, 8)]  # ties: index descending
    assert exo_stages([1, 1, 2], 8, names=["b", "a", "c"]) == [(2, 0, 4), (0, 4, 6), (1, 6, 8)]
    # exo's truncation: a third of 30 layers is int(0.33333 * 30) = 9; the last device runs to L
    mem = [235.3, 235.3, 470.6, 470.6]
    assert exo_stages(mem, 30, names=["pi5", "orin", "nuc", "laptop"]) == \
        [(2, 0, 9), (3, 9, 19), (0, 19, 24), (1, 24, 30)]
    # a device whose share truncates to zero layers is left out; stages always cover 0..L
    assert exo_stages([10, 1, 1], 4) == [(0, 0, 3), (1, 3, 4)]  # device 2: int(3.67) - int(3.33) = 0
    for bad in ([], [1, 0], [[1, 2]], [1, float("nan")]):
        with pytest.raises(ValueError):
            exo_stages(bad, 4)
    with pytest.raises(ValueError):
        exo_stages([1, 2], 0)
    with pytest.raises(ValueError, match="names"):
        exo_stages([1, 2], 4, names=["a"])


def test_exo_split_on_home4_is_valid_and_slower_than_dp(cm, home4):
    a = dp_arrays(home4, cm, "prefill", tokens=512)
    exo = evaluate(exo_stages(a.device_mem, ANATOMY.n_layers, a.names), **a.kwargs())
    assert sorted(d for d, _, _ in exo.stages) == [0, 1, 2, 3]
    assert partition(**a.kwargs()).bottleneck < exo.bottleneck


def test_replace_device(home4):
    c = replace_device(home4, "orin", speed=2, memory=0.5)
    orin, old = c.device("orin"), home4.device("orin")
    assert orin.prefill_speed == 2 * old.prefill_speed and orin.decode_speed == 2 * old.decode_speed
    assert orin.memory_mib == 0.5 * old.memory_mib
    assert c.device("pi5") == home4.device("pi5") and home4.device("orin") == old  # a copy
    assert c.link("laptop", "orin") == home4.link("laptop", "orin")
    assert replace_device(home4, "nuc", memory_mib=100).device("nuc").memory_mib == 100
    with pytest.raises(ConfigError):
        replace_device(home4, "no-such-device")
    with pytest.raises(ConfigError):
        replace_device(home4, "nuc", speed=0)
