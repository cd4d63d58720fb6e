"""The concurrent runtime: completions with device times, links that overlap compute and share
their bandwidth, asynchronous KV hand-offs, batched logits through the workers."""

import time

import pytest
import torch

from e2llm_lite.devices import Cluster, DeviceSpec, Link
from e2llm_lite.model import ANATOMY
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.runtime.protocol import HEADER_LEN, Postbox, message_bytes


def two_sites(n: int = 3, wan_mbps: float = 1000.0, wan_ms: float = 0.0, speed: float = 1.0) -> Cluster:
    """``n`` host-speed devices, each on its own site, every pair joined by the WAN link."""
    devs = [DeviceSpec(name=f"dev{i}", kind="host", prefill_speed=speed, decode_speed=speed,
                       memory_mib=2048, site=f"s{i}") for i in range(n)]
    return Cluster(name="sites", devices=devs, lan={f"s{i}": Link(1e7, 0.0) for i in range(n)},
                   wan=Link(wan_mbps, wan_ms))


# ---- units -------------------------------------------------------------------------------------
def test_postbox_hands_items_out_at_their_time_in_order():
    box = Postbox()
    now = time.monotonic()
    box.put("late", now + 0.3)
    box.put("first")
    box.put("second", now - 5)          # in the past: due, behind what is due already
    assert [box.get(1.0), box.get(1.0)] == ["first", "second"]
    with pytest.raises(Exception):
        box.get(0.05)                   # "late" is not due yet
    assert box.get(1.0) == "late" and time.monotonic() >= now + 0.3


def test_a_link_is_shared_messages_queue_behind_each_other():
    """Two messages booked on one link at once: the second leaves when the first has left
    (bytes / bandwidth later), each arrives a latency after it left; another link is free."""
    from e2llm_lite.runtime.throttle import Throttle
    from e2llm_lite.runtime.worker import Worker

    w = Worker.__new__(Worker)
    w.rank, w.throttle, w.link_free, w.link_s = 1, Throttle(dilation=2.0), {}, 0.0
    w.links = torch.tensor([[8.0, 10.0], [0.0, 0.0], [8.0, 10.0]]).numpy()  # 8 Mbit/s, 10 ms
    t0 = time.monotonic()
    a = w.book_link(2, 1_000_000)      # 1 s of device time on the wire, + 10 ms
    b = w.book_link(2, 1_000_000)
    c = w.book_link(0, 1_000_000)
    assert a - t0 == pytest.approx(2 * 1.010, abs=0.01)   # wall = dilation x device
    assert b - a == pytest.approx(2 * 1.0, abs=1e-6)
    assert c - t0 == pytest.approx(2 * 1.010, abs=0.01)
    assert w.link_s == pytest.approx(3 * 1.010)
    assert w.book_link(1, 10**9) == 0.0                      # to itself: no link


def test_message_bytes_counts_header_and_payload():
    assert message_bytes(None) == HEADER_LEN * 8
    assert message_bytes(torch.zeros(3, 4)) == HEADER_LEN * 8 + 48


# ---- through real workers ----------------------------------------------------------------------
def test_completions_carry_each_devices_interval_and_the_bytes(haiku_ids):
    """A prompt through 3 devices: the completion names every device with its step, in pipeline
    order, each stage starting after the previous one's output crossed the link (5 ms), and the
    bytes moved: the hidden state twice and the token back."""
    cluster = two_sites(3, wan_mbps=1000.0, wan_ms=5.0)
    with EmulatedCluster(cluster, dilation=1.0) as rt:
        pipe = rt.pipeline([("dev0", 0, 10), ("dev1", 10, 20), ("dev2", 20, 30)])
        t_submit = rt.now_s()
        pipe.submit(haiku_ids, 1)
        (c,) = rt.poll(60)
        assert c.ok and c.kind == "prefill" and c.requests == (1,)
        assert list(c.devices) == ["dev0", "dev1", "dev2"]
        spans = [c.devices[d] for d in ("dev0", "dev1", "dev2")]
        hidden = len(haiku_ids) * ANATOMY.hidden_bytes_per_token
        hop_s = (5.0 + hidden * 8 / 1e9 * 1e3) / 1e3
        assert t_submit <= c.started_s == spans[0][0]
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            assert s0 < e0 and s1 >= e0 + hop_s * 0.95
        assert c.end_s >= spans[2][1] + 0.005 * 0.95
        assert c.bytes == 2 * (hidden + HEADER_LEN * 8) + HEADER_LEN * 8
        assert c.overruns >= 0 and c.token == pipe.forward(haiku_ids, 2, logits=False)


@pytest.mark.quiet
def test_a_slow_link_overlaps_compute_and_shares_its_bandwidth(haiku_ids):
    """Two prompts into a 2-stage pipeline over a slow link: the first stage computes the second
    prompt while the first one's hidden state is still on the wire, and the second waits for the
    link behind the first (delivered one transfer later)."""
    cluster = two_sites(2, wan_mbps=2.0, wan_ms=0.0)
    hidden = len(haiku_ids) * ANATOMY.hidden_bytes_per_token
    wire_s = hidden * 8 / 2e6                                # ~0.1 s per prompt at 2 Mbit/s
    with EmulatedCluster(cluster, dilation=1.0) as rt:
        pipe = rt.pipeline([("dev0", 0, 15), ("dev1", 15, 30)])
        pipe.submit(haiku_ids, 1)
        pipe.submit(haiku_ids, 2)
        got = {}
        while rt.outstanding:
            got.update({c.request: c for c in rt.poll(60)})
        a, b = got[1], got[2]
        assert a.ok and b.ok and a.token == b.token
        assert b.devices["dev0"][0] < a.devices["dev1"][0]     # computing while A crosses
        assert a.devices["dev1"][0] >= a.devices["dev0"][1] + wire_s * 0.95
        # B left only once A had left the wire: it reaches dev1 a transfer after A did
        assert b.devices["dev1"][0] >= a.devices["dev0"][1] + 2 * wire_s * 0.95


def test_batched_logits_through_the_workers_equal_one_at_a_time(tokenizer):
    """A batch of 4 ragged sequences through 3 workers: the batch's logits equal each request's
    own decode step (<= 1e-4), and its tokens are their argmax."""
    cluster = two_sites(3)
    prompts = [tokenizer.encode("The moon " * (1 + 40 * i)) for i in range(4)]
    with EmulatedCluster(cluster, dilation=1.0) as rt:
        pipe = rt.pipeline([("dev0", 0, 7), ("dev1", 7, 22), ("dev2", 22, 30)])
        first = {}
        for i, p in enumerate(prompts):
            first[10 + i] = pipe.forward(p, request=10 + i, logits=False)
            pipe.forward(p, request=20 + i, logits=False)
        one = {i: pipe.forward([first[10 + i]], request=10 + i, phase="decode")
               for i in range(4)}
        opid = pipe.submit_decode({20 + i: first[10 + i] for i in range(4)}, logits=True)
        (c,) = rt.poll(60)
        assert c.ok and c.request == opid and c.kind == "batch" and c.requests == (20, 21, 22, 23)
        assert c.logits.shape == (4, 1, ANATOMY.vocab)
        for i in range(4):
            assert torch.allclose(c.logits[i], one[i][0], atol=1e-4)
            assert c.tokens[20 + i] == int(one[i].argmax())
        assert set(c.devices) == {"dev0", "dev1", "dev2"}


def test_an_asynchronous_kv_handoff_runs_beside_decode_steps(haiku_ids, reference_tokens):
    """A prompt prefilled on replica A; its KV handed to replica B (a different split, slow links)
    while B decodes another request: both completions arrive, the hand-off's bytes are the KV of
    every layer, B's decoding is untouched and the handed-off request then decodes on B to the
    single-process tokens; submit_free ends with a completion too."""
    cluster = two_sites(4, wan_mbps=50.0, wan_ms=2.0)
    with EmulatedCluster(cluster, dilation=1.0) as rt:
        a = rt.pipeline([("dev0", 0, 12), ("dev1", 12, 30)], name="A")
        b = rt.pipeline([("dev2", 0, 20), ("dev3", 20, 30)], name="B")
        tok = a.forward(haiku_ids, request=1, logits=False)
        other = [b.forward(haiku_ids, request=2, logits=False)]
        kv = rt.submit_move_kv(1, a, b)
        b.submit([other[-1]], 2, "decode")
        got = {}
        while rt.outstanding:
            for c in rt.poll(60):
                assert c.ok, c.error
                got[c.request] = c
                if c.request == 2 and len(other) < 4:
                    other.append(c.token)
                    b.submit([c.token], 2, "decode")
        assert got[kv].kind == "kv" and got[kv].requests == (1,)
        assert got[kv].bytes == len(haiku_ids) * 30 * ANATOMY.kv_bytes_per_token_layer
        assert got[kv].end_s > got[kv].started_s
        assert other == reference_tokens[:4]
        tokens = [tok]
        while len(tokens) < 6:
            tokens.append(b.forward([tokens[-1]], request=1, phase="decode", logits=False))
        assert tokens == reference_tokens[:6]
        free = rt.submit_free(1, a)
        (c,) = rt.poll(30)
        assert c.ok and c.request == free and c.kind == "free"
        assert rt.stats()["dev0"]["kv_bytes"] == 0


def test_a_kv_handoff_is_stored_while_its_destination_computes(haiku_ids):
    """A device's network and memory take a hand-off beside its compute: the KV reaching a device
    in the middle of a long prefill is stored (and acknowledged) before that step ends, not after
    it (the hand-off would otherwise cost the decoder a whole step)."""
    cluster = two_sites(4, wan_mbps=1000.0, wan_ms=0.5)
    with EmulatedCluster(cluster, dilation=6.0) as rt:
        a = rt.pipeline([("dev0", 0, 15), ("dev1", 15, 30)], name="A")
        b = rt.pipeline([("dev2", 0, 15), ("dev3", 15, 30)], name="B")
        a.forward(haiku_ids, request=1, logits=False)
        long_prompt = (haiku_ids * 8)[:120]
        busy = b.submit(long_prompt, 2, "prefill")
        time.sleep(0.3)                               # dev2 is now in its (stretched) step
        kv = rt.submit_move_kv(1, a, b)
        got = {}
        while rt.outstanding:
            for c in rt.poll(60):
                assert c.ok, c.error
                got[c.request] = c
        assert got[kv].end_s < got[busy].devices["dev2"][1]


@pytest.mark.quiet
def test_pipelined_prefills_do_not_overrun_with_the_dilation_for_every_device(haiku_ids):
    """The trap: three prefills pipelined through three devices at the dilation picked for one
    worker computing at a time overran 7 of 9 steps. ``concurrency='all'`` picks the dilation
    for every device computing at once: no overrun, and the dilation is the formula's."""
    from e2llm_lite.devices import default_cluster
    from e2llm_lite.runtime.throttle import auto_dilation

    cluster = default_cluster(3)
    with EmulatedCluster(cluster, concurrency="all") as rt:
        assert rt.dilation == auto_dilation(1.0, 3, 2)
        pipe = rt.pipeline([(cluster.names[0], 0, 10), (cluster.names[1], 10, 20),
                            (cluster.names[2], 20, 30)])
        for rnd in range(2):
            for r in range(3):
                pipe.submit(haiku_ids * 2, 10 * rnd + r)
            while rt.outstanding:
                assert all(c.ok for c in rt.poll(60))
            rt.free()
        steps = {n: int(s["steps"]) for n, s in rt.stats().items()}
        overruns = {n: int(s["overruns"]) for n, s in rt.stats().items()}
    assert min(steps.values()) >= 6 and sum(overruns.values()) == 0, overruns


def test_bad_concurrency_is_refused():
    from e2llm_lite.devices import default_cluster

    for bad in (0, -1, "some", 1.5, True):
        with pytest.raises(ValueError, match="concurrency"):
            EmulatedCluster(default_cluster(2), concurrency=bad)
    assert EmulatedCluster(default_cluster(3), concurrency="all").concurrency == 3


def test_an_idle_group_is_not_a_broken_one(tmp_path):
    """A receiver waits for the next message longer than the group's timeout: a cluster left
    idle (a notebook between cells, tests using other clusters) still answers. It used to die
    after the group's timeout with gloo's "Timed out waiting ... for recv"."""
    import threading

    from e2llm_lite.runtime.protocol import Op, Receiver, make_group, send

    store_file, groups = str(tmp_path / "store"), {}

    def join(rank):
        groups[rank] = make_group(rank, 2, 1.0, store_file=store_file, connect_timeout_s=20)

    threads = [threading.Thread(target=join, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert set(groups) == {0, 1}
    box = Postbox()
    receiver = Receiver(groups[1][1], box, world=2)
    time.sleep(2.5)                                     # idle for 2.5 x the group's timeout
    assert receiver.error is None
    send(groups[0][1], 1, Op.STOP, 0, request=7, payload=torch.arange(3))
    msg = box.get(timeout_s=10)
    assert (msg.op, msg.request, msg.payload.tolist()) == (Op.STOP, 7, [0, 1, 2])
    assert receiver.error is None


def test_payloads_on_both_sides_of_the_inline_limit_arrive_whole(tmp_path):
    """A payload of at most INLINE_PAYLOAD_BYTES travels in its header's gloo message, a larger
    one in a second message: both arrive with their dtype, shape and values, in order, and the
    byte count is the same either way."""
    import threading

    from e2llm_lite.runtime.protocol import INLINE_PAYLOAD_BYTES, Op, Receiver, make_group, send

    store_file, groups = str(tmp_path / "store"), {}

    def join(rank):
        groups[rank] = make_group(rank, 2, 10.0, store_file=store_file, connect_timeout_s=20)

    threads = [threading.Thread(target=join, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    box = Postbox()
    receiver = Receiver(groups[1][1], box, world=2)
    n = INLINE_PAYLOAD_BYTES // 4
    payloads = [torch.arange(n, dtype=torch.float32),              # exactly at the limit: inline
                torch.arange(n + 1, dtype=torch.float32),          # one element over: two messages
                torch.zeros(0, 5, dtype=torch.float64),            # empty
                torch.arange(6, dtype=torch.int64).reshape(1, 2, 3),
                None,
                torch.tensor([200, 7], dtype=torch.uint8)]
    sent = [send(groups[0][1], 1, Op.ACK, 0, request=i, a=-i, payload=p) for i, p in enumerate(payloads)]
    for i, p in enumerate(payloads):
        msg = box.get(timeout_s=10)
        assert (msg.op, msg.src, msg.request, msg.a) == (Op.ACK, 0, i, -i)
        if p is None:
            assert msg.payload is None
        else:
            assert msg.payload.dtype == p.dtype and msg.payload.shape == p.shape
            assert torch.equal(msg.payload, p)
        assert sent[i] == message_bytes(p)
    assert receiver.error is None
    send(groups[0][1], 1, Op.STOP, 0)
    assert box.get(timeout_s=10).op == Op.STOP
