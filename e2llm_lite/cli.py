"""The ``e2llm-lite`` command line.

Every command that reports figures takes ``--json``. Errors the user can fix (bad files, bad
arguments, missing weights) print one line ``e2llm-lite: error: ...`` and exit with status 2;
Ctrl-C exits with 130 after the workers are stopped.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import E2LLMError

DEFAULT_PROMPT = "Explain pipeline parallelism in two sentences."


def _parse_split(text: str) -> list[tuple[int, int]]:
    """'0,10,20,30' -> [(0,10),(10,20),(20,30)]."""
    try:
        bounds = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--split takes layer boundaries like 0,10,20,30, got {text!r}")
    if len(bounds) < 2:
        raise argparse.ArgumentTypeError("--split needs at least two boundaries, e.g. 0,30")
    return list(zip(bounds[:-1], bounds[1:]))


def _ranges(args) -> list[tuple[int, int]]:
    from .stage import check_split, even_split

    if args.split:
        check_split(args.split)
        return args.split
    return even_split(args.slices)


def cmd_generate(args) -> dict:
    from .generation import generate_text

    ranges = _ranges(args)
    gen = generate_text(args.prompt, args.max_new_tokens, ranges)
    out = {"prompt": args.prompt, "text": gen.text, "tokens": gen.tokens,
           "prompt_tokens": len(gen.prompt_tokens), "stop_reason": gen.stop_reason,
           "stages": [list(r) for r in ranges], "prefill_ms": round(gen.prefill_ms, 2),
           "ms_per_token": round(gen.ms_per_token, 2)}
    if not args.json:
        print(gen.text)
        print(f"[{len(gen.tokens)} tokens through {len(ranges)} in-process stage(s) {ranges}; "
              f"prefill {gen.prefill_ms:.0f} ms, {gen.ms_per_token:.1f} ms/token]", file=sys.stderr)
    return out


def cmd_demo(args) -> dict:
    import time

    from .generation import greedy_decode, reference_generate, stages_forward
    from .model import ANATOMY, chat_ids, checkpoint_dir, load_full_model, load_tokenizer
    from .stage import even_split, load_stages

    say = (lambda *a: None) if args.json else print
    t0 = time.perf_counter()
    folder = checkpoint_dir(progress=not args.json)
    tok = load_tokenizer(folder)
    say(f"model: SmolLM2-135M-Instruct, {ANATOMY.n_layers} layers, {ANATOMY.total_params:,} "
        f"parameters, checkpoint {folder} ({time.perf_counter() - t0:.1f} s)")
    ids = chat_ids(tok, args.prompt)
    ranges = even_split(args.slices)
    stages = load_stages(ranges, folder)
    gen = greedy_decode(stages_forward(stages), ids, args.max_new_tokens, [tok.eos_token_id])
    gen.text = tok.decode(gen.tokens, skip_special_tokens=True)
    say(f"prompt: {args.prompt!r} ({len(ids)} tokens with the chat template)")
    for s in stages:
        say(f"  stage [{s.start:2d},{s.end:2d}): {s.weight_bytes / 2**20:6.1f} MiB weights, "
            f"{s.kv_bytes() / 2**10:6.1f} KiB KV cache after {s.position()} tokens")
    say(f"answer through {len(stages)} slices: {gen.text}")
    ref = reference_generate(load_full_model(folder), ids, args.max_new_tokens, [tok.eos_token_id])
    same = ref == gen.tokens
    say(f"single-process model gives {'the same' if same else 'DIFFERENT'} {len(ref)} tokens; "
        f"prefill {gen.prefill_ms:.0f} ms, {gen.ms_per_token:.1f} ms/token; "
        f"total {time.perf_counter() - t0:.1f} s")
    if not same:
        raise E2LLMError("sliced tokens differ from the single-process model")
    return {"text": gen.text, "tokens": gen.tokens, "reference_tokens": ref, "identical": same,
            "stages": [list(r) for r in ranges]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e2llm-lite", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--json", action="store_true", help="print results as JSON on stdout")
        return sp

    d = common(sub.add_parser("demo", help="the main job: the real model split over stages"))
    d.add_argument("--prompt", default=DEFAULT_PROMPT)
    d.add_argument("--max-new-tokens", type=int, default=24)
    d.add_argument("--slices", type=int, default=3)
    d.set_defaults(func=cmd_demo)

    g = common(sub.add_parser("generate", help="greedy generation from a chat prompt"))
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--slices", type=int, default=1, help="even in-process slices (default 1)")
    g.add_argument("--split", type=_parse_split, help="layer boundaries, e.g. 0,7,20,30")
    g.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("e2llm-lite: interrupted", file=sys.stderr)
        return 130
    except (E2LLMError, ValueError, FileNotFoundError) as e:
        print(f"e2llm-lite: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
