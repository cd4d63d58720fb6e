"""The memory rule: what a device holding a stage must keep, against its budget (bytes, fp32).

One rule for every part that needs it — the planner sizes replicas with it, the runtime's device
workers enforce it, and a scheduler can admit requests by it — so a plan that fits on paper is a
plan the workers accept. Torch-free.

What a stage holding layers ``[start, end)`` needs::

    weights        Anatomy.stage_weight_bytes(start, end)   layers (+ embedding on the first stage,
                                                             + norm + lm_head copy on the last)
    + KV cache     tokens * (end - start) * 1536            K and V, 3 kv-heads x 64 x 4 B per layer
    + working      working_bytes(step tokens, logit rows)   the largest step's live tensors

**Working memory** of one step of ``T`` tokens (:func:`working_bytes`): the largest live tensors
of one decoder layer, ``T * 4 B * (2 * hidden + 3 * intermediate)`` (the residual in and out, the
MLP's gate, up and their product), plus, on the last stage, one row of logits per sequence
(``vocab * 4 B``). It is a different thing from the *hidden state* a stage hands the next
(``tokens * hidden * 4 B``, :meth:`~e2llm_lite.costmodel.CostModel.hidden_state_bytes`): that
travels over a link, this is held while computing.

Enforced by accounting, not by the OS: limits such as ``RLIMIT_AS`` count torch's own ~0.8 GB of
address space and fail in random places, while a ledger is exact, portable and deterministic. A
stage that does not fit is refused before its weights are read; a step whose KV cache or working
memory would overflow is refused before it computes (:class:`MemoryLedger`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from .errors import DeviceOOM
from .model import ANATOMY, Anatomy

__all__ = ["MIB", "MemoryLedger", "stage_need_bytes", "working_bytes"]

MIB = 2 ** 20  # bytes per MiB


def working_bytes(tokens: int, logit_rows: int = 0, last: bool = False, anatomy: Anatomy = ANATOMY) -> int:
    """Bytes a step of ``tokens`` tokens holds while it computes (module docstring): the largest
    live tensors of one decoder layer, plus ``logit_rows`` rows of logits if the stage is the
    ``last`` one."""
    a = anatomy
    need = int(tokens) * a.elem_bytes * (2 * a.hidden + 3 * a.intermediate)
    if last:
        need += int(logit_rows) * a.vocab * a.elem_bytes
    return need


def stage_need_bytes(start: int, end: int, kv_tokens: int, act_tokens: int, logit_rows: int,
                     anatomy: Anatomy = ANATOMY) -> int:
    """Bytes a stage holding layers ``[start, end)`` needs with room for ``kv_tokens`` tokens of
    KV cache and a step of ``act_tokens`` tokens producing ``logit_rows`` rows of logits (if it is
    the last stage): weights + KV + working memory (module docstring)."""
    a = anatomy
    return (a.stage_weight_bytes(start, end) + a.stage_kv_bytes(start, end, int(kv_tokens))
            + working_bytes(act_tokens, logit_rows, end == a.n_layers, a))


@dataclass
class MemoryLedger:
    """The ledger of one device holding layers ``[start, end)``: weights + each request's KV
    cache, against ``budget_bytes``. A device worker keeps one; a scheduler can keep its own
    copy to admit requests by the very same rule (:meth:`fits`) without asking the device.

    ``kv_tokens``: request id -> tokens of KV cached here (an imported piece of ``l`` of the
    stage's layers counts ``l / (end - start)`` of its tokens). ``peak_bytes``: the most ever
    needed (weights + KV + the step's working memory).
    """

    device: str
    budget_bytes: int
    start: int
    end: int
    anatomy: Anatomy = ANATOMY
    kv_tokens: dict = field(default_factory=dict)   # request id -> tokens cached here
    peak_bytes: int = 0
    _kv_total: float = field(default=0.0, repr=False)   # sum of kv_tokens: change both via add_kv / free

    @cached_property
    def weight_bytes(self) -> int:
        return self.anatomy.stage_weight_bytes(self.start, self.end)

    @cached_property
    def kv_per_token(self) -> int:
        """KV bytes of one token over this stage's layers."""
        return self.anatomy.stage_kv_bytes(self.start, self.end, 1)

    @property
    def kv_bytes(self) -> int:
        return int(round(self._kv_total * self.kv_per_token))

    @property
    def used_bytes(self) -> int:
        """Weights + KV held now."""
        return self.weight_bytes + self.kv_bytes

    def working_bytes(self, tokens: int) -> int:
        """Working memory of a step of ``tokens`` tokens here (one logits row on the last stage)."""
        return working_bytes(tokens, 1, self.end == self.anatomy.n_layers, self.anatomy)

    def need_bytes(self, tokens: int) -> int:
        """What this device would need to take a step of ``tokens`` new tokens for one request:
        weights + the KV after the step + the step's working memory."""
        return self.used_bytes + tokens * self.kv_per_token + self.working_bytes(tokens)

    def fits(self, tokens: int) -> bool:
        """Whether a step of ``tokens`` new tokens would be accepted now (:meth:`reserve`)."""
        return self.need_bytes(tokens) <= self.budget_bytes

    def step_need_bytes(self, new_kv_tokens: float, step_tokens: int, logit_rows: int) -> int:
        """What this device would need for a batched step: weights + the KV held now +
        ``new_kv_tokens`` more tokens of KV + the working memory of a step of ``step_tokens``
        tokens producing ``logit_rows`` rows of logits (one per sequence, on the last stage)."""
        return self.need_with(self._kv_total + new_kv_tokens, step_tokens, logit_rows)

    def need_with(self, kv_tokens: float, step_tokens: int, logit_rows: int) -> int:
        """What this device needs holding ``kv_tokens`` tokens of KV (in all) during a step of
        ``step_tokens`` tokens producing ``logit_rows`` logits rows — the rule, without the
        ledger's own count (a simulator that keeps one count per replica)."""
        per_token, per_row = self._working_coef
        return int(self.weight_bytes + kv_tokens * self.kv_per_token
                   + step_tokens * per_token + logit_rows * per_row)

    @cached_property
    def _working_coef(self) -> tuple[int, int]:
        """:func:`working_bytes` here is linear: (bytes per step token, bytes per logits row)."""
        last = self.end == self.anatomy.n_layers
        return (working_bytes(1, 0, last, self.anatomy), working_bytes(0, 1, last, self.anatomy))

    def fits_step(self, new_kv_tokens: float, step_tokens: int, logit_rows: int) -> bool:
        """Whether :meth:`step_need_bytes` is within the budget."""
        return self.step_need_bytes(new_kv_tokens, step_tokens, logit_rows) <= self.budget_bytes

    def check_weights(self) -> None:
        """Raise ``DeviceOOM`` if the stage's weights alone exceed the budget (before loading)."""
        self._check(self.weight_bytes, f"layers [{self.start},{self.end}) need "
                    f"{self.weight_bytes / MIB:.1f} MiB of weights")
        self.peak_bytes = max(self.peak_bytes, self.weight_bytes)

    def reserve(self, request: int, tokens: int) -> None:
        """Account ``tokens`` new tokens of ``request`` (KV + the step's working memory), or
        raise ``DeviceOOM`` and account nothing."""
        need = self.need_bytes(tokens)
        kv_after = self.kv_bytes + tokens * self.kv_per_token
        self._check(need, f"request {request} needs {need / MIB:.1f} MiB for {tokens} more "
                    f"token(s) (weights {self.weight_bytes / MIB:.1f} + KV {kv_after / MIB:.2f} + "
                    f"activations {self.working_bytes(tokens) / MIB:.2f})")
        self.add_kv(request, tokens)
        self.peak_bytes = max(self.peak_bytes, need)

    def add_kv(self, request: int, tokens: float) -> None:
        """Count ``tokens`` more tokens of ``request``'s KV here, unchecked (a scheduler's own
        copy of the ledger, or a step already checked)."""
        self.kv_tokens[request] = self.kv_tokens.get(request, 0) + tokens
        self._kv_total += tokens

    def reserve_batch(self, requests) -> None:
        """Account a batched decode step: one new token for each of ``requests`` (KV) and the
        step's working memory (``len(requests)`` tokens and logits rows), or raise ``DeviceOOM``
        and account nothing."""
        n = len(requests)
        need = self.step_need_bytes(n, n, n)
        self._check(need, f"a decode batch of {n} sequences needs {need / MIB:.1f} MiB (weights "
                    f"{self.weight_bytes / MIB:.1f} + KV {(self.kv_bytes + n * self.kv_per_token) / MIB:.2f}"
                    f" + activations {(need - self.used_bytes - n * self.kv_per_token) / MIB:.2f})")
        for r in requests:
            self.add_kv(r, 1)
        self.peak_bytes = max(self.peak_bytes, need)

    def release(self, request: int, tokens: int) -> None:
        """Undo :meth:`reserve` of ``tokens`` tokens (a step that failed after reserving)."""
        self.add_kv(request, -tokens)

    def reserve_import(self, request: int, layers: int, tokens: int) -> None:
        """Account an imported KV piece of ``layers`` layers x ``tokens`` tokens, or refuse."""
        piece = self.anatomy.stage_kv_bytes(0, layers, tokens)
        need = self.used_bytes + piece
        self._check(need, f"importing request {request}'s KV ({piece / MIB:.2f} MiB) needs "
                    f"{need / MIB:.1f} MiB")
        # a request's KV is whole once every layer's piece arrived: count tokens per full layer set
        self.add_kv(request, tokens * layers / (self.end - self.start))
        self.peak_bytes = max(self.peak_bytes, need)

    def free(self, request: int | None = None) -> None:
        """Forget ``request``'s KV (every request's with None)."""
        if request is None:
            self.kv_tokens.clear()
            self._kv_total = 0.0
        else:
            self._kv_total -= self.kv_tokens.pop(request, 0)

    def _check(self, need: int, what: str) -> None:
        if need > self.budget_bytes:
            raise DeviceOOM(f"device {self.device!r}: {what}, but its budget is "
                            f"{self.budget_bytes / MIB:.1f} MiB")
