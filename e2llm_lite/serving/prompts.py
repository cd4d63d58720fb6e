"""Real prompts of a requested length for real serving runs.

A trace gives each request only a prompt *length*. A real run needs token ids: request ``r``
gets ``tokens`` consecutive tokens of :data:`CORPUS` (a fixed English text written for this
project), tokenized once, starting at offset ``(r * OFFSET_STEP) mod len(corpus)`` and wrapping
around, so that requests differ from one another and every run of the same request stream sees
the same prompts.
"""

from __future__ import annotations

__all__ = ["CORPUS", "OFFSET_STEP", "prompt_ids"]

#: The text prompts are cut from (about 330 tokens; wraps around for longer prompts).
CORPUS = (
    "A small cluster of household devices can serve a language model if each device holds only "
    "part of it. The phone in the kitchen keeps the first layers, the old laptop keeps the middle, "
    "and a single-board computer by the router keeps the last layers and the output head. When a "
    "question arrives, the first device turns its words into vectors and passes them on; each "
    "device in turn adds its share of the computation, and the last one picks the next word. "
    "Reading a long question is heavy arithmetic that keeps every processor busy, while writing "
    "the answer one word at a time mostly waits on memory, because every weight must be read again "
    "for each new word. That difference is why some devices are better at reading and others at "
    "writing, and why a scheduler may give a group of devices one of the two jobs. The cost of "
    "moving the remembered keys and values of a conversation from one group to another depends on "
    "the links between them: a wired network moves them quickly, a busy wireless one slowly. A "
    "planner weighs all of this, the speed of each device, the memory it has left, the links, and "
    "the kind of requests that arrive, before it decides who does what. Then the requests come, "
    "some short, some long, and the plan meets the traffic it was made for, or does not. "
)

#: How far apart in the corpus consecutive requests' prompts start (tokens).
OFFSET_STEP = 37

_cache: dict = {}


def prompt_ids(tokenizer, tokens: int, request: int) -> list[int]:
    """``tokens`` token ids for request ``request`` (module docstring)."""
    if tokens < 1:
        raise ValueError(f"a prompt needs at least 1 token, got {tokens}")
    key = id(tokenizer)
    if key not in _cache:
        _cache[key] = tokenizer.encode(CORPUS, add_special_tokens=False)
    ids = _cache[key]
    start = (request * OFFSET_STEP) % len(ids)
    return [ids[(start + i) % len(ids)] for i in range(tokens)]
