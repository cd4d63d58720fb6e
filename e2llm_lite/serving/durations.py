"""How long the simulator's iterations and hand-offs take: the cost model on the plan's devices
and links (ms of device time), by the formulas the planner uses.

A stage of an iteration on device ``d`` holding layers ``[s, e)``:

* prompts ``p_1..p_k``: ``sum_i stage_ms(d, s, e, prefill, tokens=p_i)`` — the cost model has no
  batched-prefill term (a prefill is compute-bound already: batching prompts saves little), so a
  batch of prompts costs the sum of its prompts;
* a decode step of ``B`` sequences with contexts ``c_1..c_B``: ``stage_ms(d, s, e, decode,
  batch=B, context=mean c)`` (the cost model's decode time is linear in ``batch x context``, so the
  mean context is exact); the context is rounded to :data:`CONTEXT_STEP` tokens so that steps can be
  cached (< 0.1 % of a step);
* a chunk of ``c`` tokens of a prompt whose first ``k`` tokens are cached (chunked prefill):
  ``stage_ms(tokens=k + c) - stage_ms(tokens=k)``, what it adds to the whole prompt's time (so the
  chunks of a prompt cost the prompt; the per-step overhead of the extra steps is not counted);
* an iteration with both costs both (its prompts, then its decode tokens);
* + the hand-off of the hidden state of all its tokens to the next stage
  (:func:`~e2llm_lite.devices.transfer_ms` over the link), as in the planner's stage times
  (:func:`~e2llm_lite.split.stage_times`: a stage is busy until its output is on the wire);
* the last stage sends each sequence's new token (8 B) back to the first device, as the runtime's
  last worker does; that return trip ends the iteration.

A KV hand-off: :func:`~e2llm_lite.split.kv_handoff_ms` of the prompt's tokens between the two
replicas' splits (each layer's piece to the device holding that layer there; a source's pieces go
one after another, the sources in parallel) — the planner's hand-off formula. **Streamed**
(``stream_kv``, as Splitwise does): each source device starts sending its pieces when its own
stage has finished the prompt's last chunk, so the hand-off ends at ``max over sources of (its
stage's end + its pieces)``, possibly before the prefill iteration is back at the first device.
"""

from __future__ import annotations

from ..costmodel import CostModel
from ..split import kv_handoff_ms, kv_handoff_per_source_ms
from .events import RunIteration

__all__ = ["CONTEXT_STEP", "Durations", "TOKEN_BYTES"]

#: Decode contexts are rounded to this many tokens for caching.
CONTEXT_STEP = 16
#: Bytes of one sampled token travelling from the last stage to the first.
TOKEN_BYTES = 8


class Durations:
    """Durations on ``cluster`` for the replicas of ``plan`` (ms of device time)."""

    def __init__(self, plan, cluster, costmodel: CostModel | None = None):
        self.cm = costmodel or CostModel.load()
        self.cluster = cluster
        # the first plan's roles: the reference of the slowdown SLOs (:meth:`unloaded`)
        self.roles = {r.name: r.role for r in plan.replicas}
        self.stages, self.devices, self.links, self.back = {}, {}, {}, {}
        for r in plan.replicas:
            self.add_replica(r.name, r.stages)
        self._prefill: dict = {}
        self._decode: dict = {}
        self._handoff: dict = {}
        self._decode_iteration: dict = {}

    def add_replica(self, name: str, stages) -> None:
        """Durations for one more replica ``name`` (``stages``: ((device, start, end), ...)), e.g.
        one of a new plan rolled in while serving."""
        st = tuple(tuple(x) for x in stages)
        self.stages[name] = st
        self.devices[name] = [self.cluster.device(d) for d, _, _ in st]
        # the link from each stage to the next, and from the last device back to the first
        self.links[name] = [self.cluster.link(a[0], b[0]) for a, b in zip(st, st[1:])]
        self.back[name] = self.cluster.link(st[-1][0], st[0][0])

    def _link_ms(self, a: str, b: str, nbytes: float) -> float:
        return 0.0 if a == b else self.cluster.link(a, b).transfer_ms(nbytes)

    def prefill_ms(self, replica: str, tokens: int) -> tuple[float, ...]:
        """Compute ms of each stage for one prompt of ``tokens`` tokens (no links)."""
        key = (replica, tokens)
        if key not in self._prefill:
            self._prefill[key] = tuple(self.cm.stage_ms(dev, s, e, "prefill", tokens=tokens)
                                       for dev, (_, s, e) in zip(self.devices[replica],
                                                                 self.stages[replica]))
        return self._prefill[key]

    def decode_ms(self, replica: str, batch: int, context: int) -> tuple[float, ...]:
        """Compute ms of each stage for a decode step of ``batch`` sequences at mean ``context``."""
        ctx = min(max(0, int(round(context / CONTEXT_STEP)) * CONTEXT_STEP),
                  self.cm.anatomy.max_positions - 1)   # rounding must not pass the context end
        key = (replica, batch, ctx)
        if key not in self._decode:
            self._decode[key] = tuple(self.cm.stage_ms(dev, s, e, "decode", batch=batch, context=ctx)
                                      for dev, (_, s, e) in zip(self.devices[replica],
                                                                self.stages[replica]))
        return self._decode[key]

    def iteration_ms(self, it: RunIteration) -> tuple[list[float], float]:
        """``(per-stage busy ms, return ms)``: each stage's compute + its hand-off to the next
        stage, and the new tokens' trip from the last device to the first."""
        if not it.prefill:   # the common case, cached: a decode step of B sequences at a context
            b = len(it.decode)
            ctx = int(round(sum(c for _, c in it.decode) / b / CONTEXT_STEP)) * CONTEXT_STEP
            key = (it.replica, b, ctx)
            if key not in self._decode_iteration:
                self._decode_iteration[key] = self._iteration_ms(it)
            return self._decode_iteration[key]
        return self._iteration_ms(it)

    def _iteration_ms(self, it: RunIteration) -> tuple[list[float], float]:
        stages = self.stages[it.replica]
        busy = [0.0] * len(stages)
        for _, tokens, cached in it.prefill:
            times = self.prefill_ms(it.replica, cached + tokens)
            if cached:   # a chunk: what it adds to the whole prompt's time
                times = [a - b for a, b in zip(times, self.prefill_ms(it.replica, cached))]
            for i, t in enumerate(times):
                busy[i] += t
        if it.decode:
            ctx = sum(c for _, c in it.decode) / len(it.decode)
            for i, t in enumerate(self.decode_ms(it.replica, len(it.decode), ctx)):
                busy[i] += t
        hidden = it.tokens * self.cm.anatomy.hidden_bytes_per_token
        for i, link in enumerate(self.links[it.replica]):
            busy[i] += link.transfer_ms(hidden)
        back = self.back[it.replica].transfer_ms(TOKEN_BYTES * (len(it.prefill) + len(it.decode)))
        return busy, back

    def handoff_ms(self, src: str, dst: str, tokens: int) -> float:
        """ms to move ``tokens`` tokens of KV from replica ``src`` to replica ``dst``."""
        key = (src, dst, tokens)
        if key not in self._handoff:
            self._handoff[key] = kv_handoff_ms(self.stages[src], self.stages[dst], self._link_ms,
                                               tokens, self.cm.anatomy.kv_bytes_per_token_layer)
        return self._handoff[key]

    def handoff_per_source_ms(self, src: str, dst: str, tokens: int) -> dict:
        """Source device -> ms of its pieces of that hand-off (for a streamed hand-off, each
        source starts when its own stage has finished the prompt)."""
        return kv_handoff_per_source_ms(self.stages[src], self.stages[dst], self._link_ms, tokens,
                                        self.cm.anatomy.kv_bytes_per_token_layer)

    def unloaded(self, prompt_tokens: int, output_tokens: int) -> dict:
        """A request's figures alone on the plan (s): the fastest path it offers — TTFT on the
        prefill-capable replica with the shortest trip for this prompt; TBT on the decode-capable
        replica with the shortest step at batch 1 and the request's mean context (the same
        replica if it can do both and no decoder is faster); E2E = TTFT + the hand-off (if the
        replicas differ) + (output - 1) TBT. The reference of the slowdown SLOs."""
        def trip(it):
            busy, back = self.iteration_ms(it)
            return (sum(busy) + back) / 1e3

        pre = [n for n, r in self.roles.items() if r in ("prefill", "both")]
        dec = [n for n, r in self.roles.items() if r in ("decoder", "both")] or pre
        p = min(pre, key=lambda n: (trip(RunIteration(n, 0, ((0, prompt_tokens, 0),))), n))
        ttft = trip(RunIteration(p, 0, ((0, prompt_tokens, 0),)))
        if output_tokens == 1:
            return {"ttft_s": ttft, "tbt_s": None, "e2e_s": ttft}
        ctx = prompt_tokens + output_tokens // 2
        d = min(dec, key=lambda n: (trip(RunIteration(n, 0, (), ((0, ctx),))), n))
        tbt = trip(RunIteration(d, 0, (), ((0, ctx),)))
        hand = 0.0 if d == p else self.handoff_ms(p, d, prompt_tokens) / 1e3
        return {"ttft_s": ttft, "tbt_s": tbt, "e2e_s": ttft + hand + (output_tokens - 1) * tbt}
