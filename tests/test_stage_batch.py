"""Batched decode with ragged contexts (``Stage.forward_batch``): B sequences whose caches have
different lengths step together and give the same logits (<= 1e-4) and greedy tokens as one at a
time — the first piece of the concurrent runtime (batched decode)."""

from __future__ import annotations

import pytest
import torch

from e2llm_lite.stage import load_stages

SPLITS = {1: [(0, 30)], 3: [(0, 7), (7, 20), (20, 30)],
          5: [(0, 1), (1, 2), (2, 10), (10, 29), (29, 30)]}


def run(stages, x, rid):
    for s in stages:
        x = s(x, request_id=rid)
    return x


def run_batch(stages, x, rids):
    for s in stages:
        x = s.forward_batch(x, rids)
    return x


@pytest.fixture(scope="module")
def loaded(folder):
    return {n: load_stages(split, folder) for n, split in SPLITS.items()}


@pytest.mark.parametrize("n", sorted(SPLITS))
@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_batched_decode_equals_one_at_a_time(loaded, n, batch):
    """Contexts 3, 113, 223, ... tokens (>= 100 apart); four greedy steps."""
    stages = loaded[n]
    for s in stages:
        s.free()
    g = torch.Generator().manual_seed(batch)
    contexts = [3 + 110 * i for i in range(batch)]
    prompts = [torch.randint(100, 20000, (1, c), generator=g) for c in contexts]
    one, many = list(range(batch)), list(range(100, 100 + batch))
    last_one, last_many = [], []
    for i, p in enumerate(prompts):   # one prefill; the batched copy starts from its KV
        last_one.append(int(run(stages, p, one[i])[0, -1].argmax()))
        for s in stages:
            s.import_kv(many[i], *s.export_kv(one[i]))
    last_many = list(last_one)
    for _ in range(4):
        ref = torch.stack([run(stages, torch.tensor([[t]]), r)[0, -1] for t, r in zip(last_one, one)])
        got = run_batch(stages, torch.tensor(last_many).unsqueeze(1), many)[:, -1]
        assert (got - ref).abs().max().item() <= 1e-4
        last_one, last_many = ref.argmax(-1).tolist(), got.argmax(-1).tolist()
        assert last_one == last_many
    assert [stages[0].position(r) for r in many] == [c + 4 for c in contexts]


def test_forward_batch_refuses_what_it_cannot_do(loaded):
    stages = loaded[3]
    for s in stages:
        s.free()
    run(stages, torch.tensor([[101, 102, 103]]), 0)
    with pytest.raises(ValueError, match="no KV cache"):
        stages[0].forward_batch(torch.tensor([[5], [6]]), [0, 1])
    with pytest.raises(ValueError, match="distinct"):
        stages[0].forward_batch(torch.tensor([[5], [6]]), [0, 0])
    with pytest.raises(ValueError, match=r"\[1, 1\]"):
        stages[0].forward_batch(torch.tensor([[5, 6]]), [0])
    assert stages[0].position(0) == 3   # nothing half-done


def test_kv_written_in_place_survives_growth_export_and_single_steps(folder):
    """Batched steps write each token into spare room behind the cache (no copy of the whole
    cache per step); across the room's regrowth (> KV_ROOM_MIN steps), single-request steps in
    between and a KV export/import, the hidden states equal those of one-at-a-time steps."""
    from e2llm_lite.stage import KV_ROOM_MIN, Stage

    stage = Stage.load(3, 5, folder)
    g = torch.Generator().manual_seed(7)
    ctx = {1: 5, 2: 40}
    for r, c in ctx.items():
        x = torch.randn(1, c, 576, generator=g)
        stage(x, request_id=r)
        stage(x, request_id=10 + r)
    for step in range(KV_ROOM_MIN + 20):
        x = torch.randn(2, 1, 576, generator=g)
        if step % 25 == 7:   # a single step of request 1 between batches (DynamicLayer.update)
            got = stage(x[:1], request_id=1)
            want = stage(x[:1], request_id=11)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)
            continue
        got = stage.forward_batch(x, [1, 2])
        for i, r in enumerate((1, 2)):
            assert torch.allclose(got[i:i + 1], stage(x[i:i + 1], request_id=10 + r), atol=1e-4, rtol=1e-5)
    kv, pos = stage.export_kv(2)
    assert pos == stage.position(12) and kv.shape[3] == pos
    assert stage.kv_bytes(2) == stage.kv_bytes(12)   # counts the tokens held, not the spare room
    stage.free(2)
    stage.import_kv(2, kv, pos)
    x = torch.randn(2, 1, 576, generator=g)
    got = stage.forward_batch(x, [1, 2])
    assert torch.allclose(got[1:], stage(x[1:], request_id=12), atol=1e-4, rtol=1e-5)
