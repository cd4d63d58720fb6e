"""``Stage(start, end)``: a contiguous slice of the model's decoder layers that runs on its own.

A stage is what one emulated device holds. It owns

* decoder layers ``[start, end)`` (built with their *absolute* ``layer_idx``),
* the token embedding if it is the first stage (``start == 0``),
* the final RMSNorm and the lm_head (its own copy of the tied embedding) if it is the last,
* one KV cache per request id, each with its own position counter.

``forward`` takes token ids ``[1, T]`` (first stage) or hidden states ``[1, T, 576]`` and returns
hidden states, or logits ``[1, 1, vocab]`` for the last position on the last stage. Chaining stages
``[0, a) [a, b) ... [z, 30)`` gives exactly the full model's last-position logits.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .model import Anatomy, checkpoint_dir, load_config, read_shard


#: Spare room a batched decode step keeps behind a request's cache, per layer: a quarter of its
#: tokens, at least this many, so that each step writes its token in place instead of copying the
#: whole cache (what ``DynamicLayer.update``'s ``torch.cat`` does every step: 29 % of a B = 16 step).
KV_ROOM_MIN = 64


def _append_kv(layer, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append one token's K and V (``[1, heads, 1, head_dim]``) to a DynamicLayer in place;
    returns the layer's keys and values (views of its buffer, as ``update`` would return)."""
    n = layer.keys.shape[-2]
    room = getattr(layer, "_room", None)
    if room is None or room[0].data_ptr() != layer.keys.data_ptr() or room[0].shape[-2] < n + 1:
        cap = n + max(KV_ROOM_MIN, n // 4)
        room = tuple(t.new_empty(t.shape[0], t.shape[1], cap, t.shape[3])
                     for t in (layer.keys, layer.values))
        room[0][:, :, :n] = layer.keys
        room[1][:, :, :n] = layer.values
        layer._room = room
    room[0][:, :, n:n + 1] = k
    room[1][:, :, n:n + 1] = v
    layer.keys, layer.values = room[0][:, :, :n + 1], room[1][:, :, :n + 1]
    return layer.keys, layer.values


@dataclass
class _RequestKV:
    cache: object  # transformers DynamicCache with slots for every layer; only [start, end) used
    pos: int = 0   # tokens already in the cache (the next token's position)


class Stage(nn.Module):
    """Decoder layers ``[start, end)`` of SmolLM2 with per-request KV caches. Units: bytes, tokens."""

    def __init__(self, config, start: int, end: int):
        super().__init__()
        from transformers.models.llama.modeling_llama import (LlamaDecoderLayer, LlamaRMSNorm,
                                                              LlamaRotaryEmbedding)

        self.anatomy = Anatomy.from_config(config)
        self.anatomy.check_slice(start, end)
        self.config, self.start, self.end = config, start, end
        self.first, self.last = start == 0, end == self.anatomy.n_layers
        self.rotary_emb = LlamaRotaryEmbedding(config=config)  # buffers only: build off the meta device
        with torch.device("meta"):  # no RAM until the real weights are assigned
            self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(start, end))
            self.embed_tokens = (nn.Embedding(config.vocab_size, config.hidden_size)
                                 if self.first else None)
            self.norm = (LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
                         if self.last else None)
            self.lm_head = (nn.Linear(config.hidden_size, config.vocab_size, bias=False)
                            if self.last else None)
        self._kv: dict[int, _RequestKV] = {}

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def load(cls, start: int, end: int, folder: Path | None = None) -> "Stage":
        """Build the stage and read only its own shards from the converted checkpoint."""
        folder = Path(folder) if folder else checkpoint_dir()
        config = load_config(folder)
        stage = cls(config, start, end)
        sd = {}
        for i in range(start, end):
            for k, v in read_shard(folder / f"layer_{i:02d}.safetensors").items():
                sd[f"layers.{i - start}.{k}"] = v
        if stage.first or stage.last:
            embed = read_shard(folder / "embed.safetensors")["weight"]
            if stage.first:
                sd["embed_tokens.weight"] = embed
            if stage.last:
                sd["lm_head.weight"] = embed.clone() if stage.first else embed
                sd["norm.weight"] = read_shard(folder / "norm.safetensors")["weight"]
        missing, unexpected = stage.load_state_dict(sd, strict=False, assign=True)
        if unexpected or any(not k.startswith("rotary_emb") for k in missing):
            raise RuntimeError(f"checkpoint does not match the stage: missing={missing}, "
                               f"unexpected={unexpected}")
        return stage.eval()

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def weight_bytes(self) -> int:
        """Bytes of the parameters this stage holds (counted from the loaded tensors)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def kv_bytes(self, request_id: int | None = None) -> int:
        """Bytes of KV cache held for one request, or for all requests if ``request_id`` is None."""
        items = self._kv.values() if request_id is None else [self._kv[request_id]]
        total = 0
        for r in items:
            for layer in r.cache.layers[self.start:self.end]:
                if layer.is_initialized and layer.keys is not None:
                    total += layer.keys.numel() * layer.keys.element_size()
                    total += layer.values.numel() * layer.values.element_size()
        return total

    def position(self, request_id: int = 0) -> int:
        """Tokens already cached for a request (0 if it has none)."""
        r = self._kv.get(request_id)
        return r.pos if r else 0

    @property
    def requests(self) -> list[int]:
        return list(self._kv)

    # ---- KV life cycle -------------------------------------------------------------------------
    def _request(self, request_id: int) -> _RequestKV:
        from transformers import DynamicCache

        if request_id not in self._kv:
            self._kv[request_id] = _RequestKV(DynamicCache(config=self.config))
        return self._kv[request_id]

    def free(self, request_id: int | None = None) -> None:
        """Drop one request's KV cache (or all of them)."""
        if request_id is None:
            self._kv.clear()
        else:
            self._kv.pop(request_id, None)

    def export_kv(self, request_id: int, start: int | None = None,
                  end: int | None = None) -> tuple[np.ndarray, int]:
        """A request's KV for layers [start, end) (default: all of this stage's) and its position.

        Returns one float32 array ``[layers, 2, kv_heads, tokens, head_dim]`` (2 = key, value)
        and the number of tokens cached.
        """
        r = self._kv.get(request_id)
        if r is None:
            raise KeyError(f"stage [{self.start},{self.end}) holds no KV for request {request_id}")
        start, end = self._subrange(start, end)
        layers = r.cache.layers[start:end]
        if not all(l.is_initialized for l in layers):
            raise ValueError(f"request {request_id} has no KV yet for all of layers [{start},{end})")
        kv = torch.stack([torch.stack([l.keys[0], l.values[0]]) for l in layers])
        return kv.numpy(), r.pos

    def import_kv(self, request_id: int, kv: np.ndarray, pos: int, start: int | None = None) -> None:
        """Install a request's KV for layers [start, start + len(kv)) (default: this whole stage).

        The KV may come from a stage with any other split (the PREFILL -> DECODER hand-off); a
        stage whose layers come from several senders imports each piece separately, all at the
        same ``pos``.
        """
        a = self.anatomy
        start = self.start if start is None else start
        n = kv.shape[0] if kv.ndim == 5 else -1
        start, end = self._subrange(start, start + max(n, 1))
        want = (end - start, 2, a.n_kv_heads, pos, a.head_dim)
        if tuple(kv.shape) != want:
            raise ValueError(f"KV of shape {tuple(kv.shape)} does not fit layers [{start},{end}) "
                             f"of stage [{self.start},{self.end}) at {pos} tokens: expected {want}")
        r = self._kv.get(request_id)
        if r is not None and r.pos != pos:
            raise ValueError(f"request {request_id} is at position {r.pos} here, the imported KV "
                             f"at {pos}")
        r = self._request(request_id)
        t = torch.as_tensor(kv)
        for j, layer in enumerate(r.cache.layers[start:end]):
            layer.keys = layer.values = layer._room = None
            layer.is_initialized = False
            layer.update(t[j, 0].unsqueeze(0).contiguous(), t[j, 1].unsqueeze(0).contiguous())
        r.pos = pos

    def _subrange(self, start: int | None, end: int | None) -> tuple[int, int]:
        start = self.start if start is None else start
        end = self.end if end is None else end
        if not self.start <= start < end <= self.end:
            raise ValueError(f"layers [{start},{end}) are not inside stage [{self.start},{self.end})")
        return start, end

    # ---- compute -------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, x: torch.Tensor, request_id: int = 0, all_logits: bool = False) -> torch.Tensor:
        """Run the slice on ``x`` for one request, appending to its KV cache.

        x: token ids ``[1, T]`` (int64) on the first stage, hidden states ``[1, T, 576]`` otherwise.
        Returns hidden states ``[1, T, 576]``, or on the last stage logits ``[1, 1, vocab]`` for
        the last position (``[1, T, vocab]`` with ``all_logits=True``).
        """
        from transformers.masking_utils import create_causal_mask

        if self.first:
            if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"the first stage takes token ids [1, T], got {tuple(x.shape)} {x.dtype}")
            h = self.embed_tokens(x)
        else:
            if x.dim() != 3 or x.shape[-1] != self.anatomy.hidden:
                raise ValueError(f"stage [{self.start},{self.end}) takes hidden states "
                                 f"[1, T, {self.anatomy.hidden}], got {tuple(x.shape)}")
            h = x
        r = self._request(request_id)
        if r.pos and not all(l.is_initialized for l in r.cache.layers[self.start:self.end]):
            raise ValueError(f"request {request_id} has KV for only some layers of stage "
                             f"[{self.start},{self.end}): import the rest before running it")
        T = h.shape[1]
        if r.pos + T > self.anatomy.max_positions:
            raise ValueError(f"request {request_id} would reach {r.pos + T} tokens, more than the "
                             f"model's context of {self.anatomy.max_positions}")
        pid = torch.arange(r.pos, r.pos + T).unsqueeze(0)
        mask = create_causal_mask(config=self.config, inputs_embeds=h, attention_mask=None,
                                  cache=r.cache, position_ids=pid, layer_idx=self.start)
        pe = self.rotary_emb(h, position_ids=pid)
        for layer in self.layers:
            h = layer(h, attention_mask=mask, position_ids=pid, cache=r.cache, use_cache=True,
                      position_embeddings=pe)
        r.pos += T
        if self.last:
            return self.lm_head(self.norm(h if all_logits else h[:, -1:]))
        return h

    @torch.inference_mode()
    def forward_batch(self, x: torch.Tensor, request_ids) -> torch.Tensor:
        """One **decode step** for ``B`` requests at once, each with its own KV cache and length
        (ragged contexts): x is token ids ``[B, 1]`` (first stage) or hidden states ``[B, 1, 576]``.
        Norms, projections and the MLP run batched (one pass over the weights for all B — what
        makes decode batching pay); attention runs per sequence against its own cache, with the
        same attention function as :meth:`forward`. Returns hidden states ``[B, 1, 576]``, or on
        the last stage logits ``[B, 1, vocab]``. Every request must already have a cache here."""
        from transformers.models.llama.modeling_llama import (ALL_ATTENTION_FUNCTIONS,
                                                              apply_rotary_pos_emb,
                                                              eager_attention_forward)

        ids = [int(r) for r in request_ids]
        B = len(ids)
        if B == 0 or len(set(ids)) != B:
            raise ValueError(f"forward_batch needs distinct request ids, got {ids}")
        if self.first:
            if x.dim() != 2 or tuple(x.shape) != (B, 1):
                raise ValueError(f"the first stage takes token ids [{B}, 1], got {tuple(x.shape)}")
            h = self.embed_tokens(x)
        else:
            if x.dim() != 3 or tuple(x.shape) != (B, 1, self.anatomy.hidden):
                raise ValueError(f"stage [{self.start},{self.end}) takes hidden states "
                                 f"[{B}, 1, {self.anatomy.hidden}], got {tuple(x.shape)}")
            h = x
        reqs = []
        for rid in ids:
            r = self._kv.get(rid)
            if r is None or not r.pos or not all(l.is_initialized
                                                 for l in r.cache.layers[self.start:self.end]):
                raise ValueError(f"request {rid} has no KV cache on stage [{self.start},{self.end}) "
                                 "to decode from")
            if r.pos + 1 > self.anatomy.max_positions:
                raise ValueError(f"request {rid} would pass the model's context of "
                                 f"{self.anatomy.max_positions}")
            reqs.append(r)
        pid = torch.tensor([[r.pos] for r in reqs])
        cos, sin = self.rotary_emb(h, position_ids=pid)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                       eager_attention_forward)
        for layer in self.layers:
            attn = layer.self_attn
            residual = h
            z = layer.input_layernorm(h)
            shape = (B, 1, -1, attn.head_dim)
            q = attn.q_proj(z).view(shape).transpose(1, 2)
            k = attn.k_proj(z).view(shape).transpose(1, 2)
            v = attn.v_proj(z).view(shape).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            out = []
            for i, r in enumerate(reqs):
                keys, values = _append_kv(r.cache.layers[attn.layer_idx], k[i:i + 1], v[i:i + 1])
                o, _ = attend(attn, q[i:i + 1], keys, values, None, dropout=0.0,
                              scaling=attn.scaling)
                out.append(o.reshape(1, 1, -1))
            h = residual + attn.o_proj(torch.cat(out))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        for r in reqs:
            r.pos += 1
        if self.last:
            return self.lm_head(self.norm(h))
        return h

    def extra_repr(self) -> str:
        return f"layers=[{self.start}, {self.end}), first={self.first}, last={self.last}"


def preload() -> None:
    """Import what building and running a stage imports lazily (transformers' Llama layers, its
    config, cache and masks: ~4.8 s of CPU), so that a process forked after this call (the worker
    zygote, :mod:`e2llm_lite.runtime.zygote`) starts without them."""
    for name in ("transformers.cache_utils", "transformers.masking_utils",
                 "transformers.models.auto.configuration_auto",
                 "transformers.models.llama.modeling_llama"):
        importlib.import_module(name)


def load_stages(ranges: list[tuple[int, int]], folder: Path | None = None) -> list[Stage]:
    """Load one in-process ``Stage`` per range (a single-process pipeline)."""
    folder = folder or checkpoint_dir()
    Anatomy.from_config(load_config(folder)).check_split(ranges)
    return [Stage.load(a, b, folder) for a, b in ranges]
