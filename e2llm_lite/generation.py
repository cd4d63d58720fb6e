"""Greedy generation, written once for every way of running the model.

``greedy_decode`` only needs a ``forward(token_ids) -> last-position logits`` function: the
single-process reference, a chain of in-process ``Stage`` objects and a pipeline of emulated
device processes all plug into it, which is why their tokens can be compared one for one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from .model import chat_ids, checkpoint_dir, load_tokenizer
from .stage import load_stages

ForwardFn = Callable[[list[int]], "torch.Tensor | int"]


@dataclass
class Generation:
    """What one greedy generation produced. Times in ms (wall clock of this process)."""

    prompt_tokens: list[int]
    tokens: list[int]
    text: str = ""
    stop_reason: str = "length"          # "eos" or "length"
    prefill_ms: float = 0.0
    decode_ms: list[float] = field(default_factory=list)  # one entry per generated token after the first

    @property
    def ms_per_token(self) -> float:
        """Mean decode time per generated token after the first (ms); 0 if none."""
        return sum(self.decode_ms) / len(self.decode_ms) if self.decode_ms else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ms_per_token"] = self.ms_per_token
        return d


def check_lengths(n_prompt: int, max_new_tokens: int, context: int = 8192) -> None:
    """Raise ``ValueError`` for an empty prompt, a non-positive budget or one beyond the context."""
    if n_prompt <= 0:
        raise ValueError("the prompt has no tokens")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if n_prompt + max_new_tokens > context:
        raise ValueError(f"prompt ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"the model's context of {context} tokens")


def next_token(logits) -> int:
    """The greedy next token of a forward's output: the argmax of the last row of ``logits``, or
    the token itself when the forward already took it (an ``int``, a pipeline's last device)."""
    if isinstance(logits, int):
        return logits
    return int(torch.as_tensor(logits).reshape(-1, logits.shape[-1])[-1].argmax())


def greedy_decode(forward: ForwardFn, prompt_ids: Sequence[int], max_new_tokens: int,
                  stop_ids: Sequence[int] = (), context: int = 8192) -> Generation:
    """Prefill ``prompt_ids`` with one ``forward`` call, then feed back the argmax token by token.

    Stops after ``max_new_tokens`` tokens or when a token in ``stop_ids`` is produced (that token
    is kept). ``forward`` receives the new token ids of each step and returns logits whose last
    row is the next-token distribution, or directly the greedy token (an ``int``) when the argmax
    was taken where the logits are (a pipeline's last device).
    """
    prompt_ids = list(prompt_ids)
    check_lengths(len(prompt_ids), max_new_tokens, context)
    stop = set(stop_ids)
    t0 = time.perf_counter()
    logits = forward(prompt_ids)
    gen = Generation(prompt_tokens=prompt_ids, tokens=[],
                     prefill_ms=(time.perf_counter() - t0) * 1e3)
    while True:
        token = next_token(logits)
        gen.tokens.append(token)
        if token in stop:
            gen.stop_reason = "eos"
            break
        if len(gen.tokens) >= max_new_tokens:
            break
        t0 = time.perf_counter()
        logits = forward([token])
        gen.decode_ms.append((time.perf_counter() - t0) * 1e3)
    return gen


def stages_forward(stages, request_id: int = 0) -> ForwardFn:
    """A ``forward`` that chains in-process ``Stage`` objects (one process, no emulation)."""

    def forward(ids: list[int]) -> torch.Tensor:
        h = torch.tensor([ids], dtype=torch.int64)
        for s in stages:
            h = s(h, request_id=request_id)
        return h

    return forward


@torch.inference_mode()
def reference_generate(model, prompt_ids: Sequence[int], max_new_tokens: int,
                       stop_ids: Sequence[int] = ()) -> list[int]:
    """Greedy tokens from transformers' own ``generate`` on the whole model: the ground truth."""
    prompt_ids = list(prompt_ids)
    check_lengths(len(prompt_ids), max_new_tokens, model.config.max_position_embeddings)
    out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                         dtype=torch.int64), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=list(stop_ids) or None, pad_token_id=(list(stop_ids) or [0])[0])
    tokens = out[0, len(prompt_ids):].tolist()
    # generate pads finished sequences only in batches; a single sequence just stops.
    return tokens


def generate_text(prompt: str, max_new_tokens: int = 32, ranges=None, folder=None) -> Generation:
    """Chat with the model in this process, through in-process stages ``ranges`` (default: one).

    A convenience for notebooks and the CLI; ``Generation.text`` holds the decoded answer.
    """
    folder = folder or checkpoint_dir()
    tok = load_tokenizer(folder)
    ids = chat_ids(tok, prompt)
    stages = load_stages(list(ranges or [(0, 30)]), folder)
    gen = greedy_decode(stages_forward(stages), ids, max_new_tokens, [tok.eos_token_id])
    gen.text = tok.decode(gen.tokens, skip_special_tokens=True)
    return gen
