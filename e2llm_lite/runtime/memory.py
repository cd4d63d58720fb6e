"""Memory accounting: what a device holds (weights + KV cache + activations) against its budget.

Enforced by accounting, not by the OS: limits such as RLIMIT_AS count torch's own ~0.8 GB of
address space and fail in random places, while a ledger is exact, portable and deterministic.
A stage that does not fit is refused before its weights are read; a step whose KV cache or
activations would overflow is refused before it computes. All sizes in bytes (fp32).

Activations of a step of T tokens are estimated as the largest live tensors of one decoder layer:
``T * 4 B * (2 * hidden + 3 * intermediate)`` (residual in and out, MLP gate, up and product),
plus the logits row ``vocab * 4 B`` on the last stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DeviceOOM
from ..model import ANATOMY, Anatomy

MIB = 2 ** 20


@dataclass
class MemoryAccount:
    """The ledger of one device holding layers [start, end)."""

    device: str
    budget_bytes: int
    start: int
    end: int
    anatomy: Anatomy = ANATOMY
    kv_tokens: dict = field(default_factory=dict)   # request id -> tokens cached here
    peak_bytes: int = 0

    @property
    def weight_bytes(self) -> int:
        return self.anatomy.stage_weight_bytes(self.start, self.end)

    @property
    def kv_bytes(self) -> int:
        return int(round(sum(self.kv_tokens.values()) * self.kv_per_token))

    @property
    def kv_per_token(self) -> int:
        return (self.end - self.start) * self.anatomy.kv_bytes_per_token_layer

    def activation_bytes(self, tokens: int) -> int:
        a = self.anatomy
        act = tokens * a.elem_bytes * (2 * a.hidden + 3 * a.intermediate)
        return act + (a.vocab * a.elem_bytes if self.end == a.n_layers else 0)

    @property
    def used_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes

    def check_weights(self) -> None:
        """Raise ``DeviceOOM`` if the stage's weights alone exceed the budget (before loading)."""
        self._check(self.weight_bytes, f"layers [{self.start},{self.end}) need "
                    f"{self.weight_bytes / MIB:.1f} MiB of weights")
        self.peak_bytes = max(self.peak_bytes, self.weight_bytes)

    def reserve(self, request: int, tokens: int) -> None:
        """Account ``tokens`` new tokens of ``request`` (KV + the step's activations), or refuse."""
        kv_after = self.kv_bytes + tokens * self.kv_per_token
        need = self.weight_bytes + kv_after + self.activation_bytes(tokens)
        self._check(need, f"request {request} needs {need / MIB:.1f} MiB for {tokens} more "
                    f"token(s) (weights {self.weight_bytes / MIB:.1f} + KV {kv_after / MIB:.2f} + "
                    f"activations {self.activation_bytes(tokens) / MIB:.2f})")
        self.kv_tokens[request] = self.kv_tokens.get(request, 0) + tokens
        self.peak_bytes = max(self.peak_bytes, need)

    def reserve_import(self, request: int, layers: int, tokens: int) -> None:
        """Account an imported KV piece of ``layers`` layers x ``tokens`` tokens, or refuse."""
        piece = layers * tokens * self.anatomy.kv_bytes_per_token_layer
        need = self.used_bytes + piece
        self._check(need, f"importing request {request}'s KV ({piece / MIB:.2f} MiB) needs "
                    f"{need / MIB:.1f} MiB")
        # a request's KV is whole once every layer's piece arrived: count tokens per full layer set
        self.kv_tokens[request] = self.kv_tokens.get(request, 0) + tokens * layers / (self.end - self.start)
        self.peak_bytes = max(self.peak_bytes, need)

    def free(self, request: int | None = None) -> None:
        if request is None:
            self.kv_tokens.clear()
        else:
            self.kv_tokens.pop(request, None)

    def _check(self, need: int, what: str) -> None:
        if need > self.budget_bytes:
            raise DeviceOOM(f"device {self.device!r}: {what}, but its budget is "
                            f"{self.budget_bytes / MIB:.1f} MiB")
