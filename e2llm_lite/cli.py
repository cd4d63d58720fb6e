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
from .runtime.limits import CONNECT_TIMEOUT_S, INTERRUPTED

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


def _whole(low: int):
    """An argparse type: a whole number >= ``low``, named in the message."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _env_int(name: str, default: int | None = None, low: int = 0, high: int | None = None) -> int:
    """The environment variable ``name`` as a whole number in ``low..high``; ValueError naming it."""
    import os

    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"the environment variable {name} is not set")
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"the environment variable {name} must be a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"the environment variable {name} must be in {low}..{high if high is not None else ''}"
                         f", got {value}")
    return value


def _master() -> tuple[str, int]:
    """MASTER_ADDR (default 127.0.0.1, checked to resolve) and MASTER_PORT (1..65535)."""
    import os
    import socket

    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = _env_int("MASTER_PORT", 29500, 1, 65535)
    try:
        socket.getaddrinfo(addr, port)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"the environment variable MASTER_ADDR={addr!r} does not resolve to an "
                         f"address ({e})") from None
    return addr, port


def _ranges(args) -> list[tuple[int, int]]:
    from .model import ANATOMY
    from .split import even_split

    if args.split:
        ANATOMY.check_split(args.split)
        return args.split
    return even_split(args.slices)


def _load_cluster(args):
    from .devices import default_cluster, load_cluster

    if args.cluster and args.devices:
        raise ValueError("give either --cluster or --devices, not both")
    if args.devices is not None:
        return default_cluster(args.devices)
    return load_cluster(args.cluster)


def cmd_generate(args) -> dict:
    if args.cluster or args.devices is not None:
        return _generate_emulated(args)
    if args.calibrate:
        raise ValueError("--calibrate applies to emulated devices: add --cluster or --devices")
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


def _generate_emulated(args) -> dict:
    from .generation import check_lengths
    from .model import ANATOMY, chat_ids, checkpoint_dir, load_tokenizer
    from .runtime.driver import EmulatedCluster
    from .split import even_split

    cluster = _load_cluster(args)
    ranges = args.split or even_split(len(cluster))
    ANATOMY.check_split(ranges)
    if len(ranges) > len(cluster):
        raise ValueError(f"{len(ranges)} layer ranges but the cluster has only {len(cluster)} devices")
    folder = checkpoint_dir(progress=False)
    tok = load_tokenizer(folder)
    ids = chat_ids(tok, args.prompt)
    check_lengths(len(ids), args.max_new_tokens, ANATOMY.max_positions)  # before any worker starts
    stages = [(d.name, a, b) for d, (a, b) in zip(cluster.devices, ranges)]
    net = {"connect_timeout_s": args.connect_timeout}
    if args.external:  # workers started elsewhere with `e2llm-lite worker`
        import os

        if "MASTER_PORT" not in os.environ:
            raise ValueError("--external needs MASTER_PORT (and MASTER_ADDR) in the environment")
        addr, port = _master()
        net |= {"spawn": False, "addr": addr, "port": port}
        print(f"waiting up to {args.connect_timeout:g} s for {len(cluster)} workers at {addr}:{port} "
              f"(start each with RANK=1..{len(cluster)} WORLD_SIZE={len(cluster) + 1} "
              "e2llm-lite worker) ...", file=sys.stderr)
    cm = None
    if args.calibrate:
        from .costmodel import CostModel

        cm = CostModel.load(args.calibrate if isinstance(args.calibrate, str) else None)
    with EmulatedCluster(cluster, dilation=args.dilation, calibrate=cm is not None, costmodel=cm,
                         **net) as rt:
        pipe = rt.pipeline(stages)
        gen = pipe.generate(ids, args.max_new_tokens, [tok.eos_token_id], free=False)
        report = rt.report()
        timeline = rt.timeline()
    text = tok.decode(gen.tokens, skip_special_tokens=True)
    prefill = [r for r in timeline if r["phase"] == "prefill"]
    first_token_ms = (max(r["end_ms"] for r in prefill) if prefill else 0.0)
    end_ms = max(r["end_ms"] + r["link_ms"] for r in timeline)
    decode_steps = max(1, len(gen.tokens) - 1)
    overruns = sum(d["overruns"] for d in report.values())
    out = {"prompt": args.prompt, "text": text, "tokens": gen.tokens,
           "prompt_tokens": len(ids), "stop_reason": gen.stop_reason, "cluster": cluster.name,
           "dilation": rt.dilation, "stages": [list(s) for s in stages],
           "device_time_ms": {"first_token": round(first_token_ms, 2), "total": round(end_ms, 2),
                              "per_token": round((end_ms - first_token_ms) / decode_steps, 2)},
           "wall_ms_per_token": round(gen.ms_per_token, 2), "overruns": overruns,
           "faithful": overruns == 0,
           "devices": {n: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}
                       for n, d in report.items() if d["layers"]}}
    if not args.json:
        print(text)
        print(f"[{len(gen.tokens)} tokens through {len(stages)} emulated devices of {cluster.name!r} "
              f"(clock dilated {rt.dilation:g}x); device time: first token {first_token_ms:.0f} ms, "
              f"{out['device_time_ms']['per_token']:.1f} ms/token; overruns: {overruns}]",
              file=sys.stderr)
        for n, d in out["devices"].items():
            print(f"  {n:>14s} layers {d['layers']}: prefill {d['prefill_ms']:.0f} ms, decode "
                  f"{d['decode_ms']:.0f} ms, links {d['link_ms']:.1f} ms, peak {d['peak_mib']:.0f}/"
                  f"{d['budget_mib']:.0f} MiB" + (
                      f", host x{d['host_factor']['prefill']:.2f} prefill / "
                      f"x{d['host_factor']['decode']:.2f} decode" if d.get("host_factor") else ""),
                  file=sys.stderr)
    return out


def cmd_worker(args) -> dict:
    """One device process of a multi-host run (rendezvous through the usual torch env vars)."""
    import os

    from .runtime.worker import run_worker

    for name in ("RANK", "WORLD_SIZE"):
        if name not in os.environ:
            raise ValueError(f"e2llm-lite worker needs the environment variable {name} "
                             "(and MASTER_ADDR, MASTER_PORT)")
    world = _env_int("WORLD_SIZE", low=2)
    rank = _env_int("RANK", low=1, high=world - 1)   # rank 0 is the driver
    addr, port = _master()
    if not args.json:
        print(f"e2llm-lite worker {rank}: " + (f"waiting for the driver at {addr}:{port} to let this "
              "device join" if args.join else f"joining the driver at {addr}:{port}") +
              f" (up to {args.connect_timeout:g} s)", file=sys.stderr)
    run_worker(rank, world, addr, port, bind=os.environ.get("E2LLM_BIND_ADDR") or None,
               connect_timeout_s=args.connect_timeout, peers="ask" if args.join else None)
    return {}


def cmd_demo(args) -> dict:
    """The main job: (1) the real model split over emulated devices gives the single-process
    tokens; (2) E2LLM and Splitwise plans serve a few real requests on emulated devices, next to
    the simulator's figures for the same requests; (3) the comparison in the simulator (table and
    figures)."""
    import time

    from .generation import greedy_decode, reference_generate, stages_forward
    from .model import ANATOMY, chat_ids, checkpoint_dir, load_full_model, load_tokenizer
    from .split import even_split
    from .stage import load_stages

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

    from .devices import preset
    from .runtime.driver import EmulatedCluster

    trio = preset("home4").subset(["pi5", "orin", "laptop"], name="home4-trio")
    placement = [("pi5", 0, 8), ("orin", 8, 18), ("laptop", 18, 30)]
    say(f"\nthe same prompt on 3 emulated devices (separate processes, throttled, memory-capped, "
        f"linked): {', '.join(f'{d} [{a},{b})' for d, a, b in placement)}")
    with EmulatedCluster(trio) as rt:
        emu = rt.pipeline(placement).generate(ids, args.max_new_tokens, [tok.eos_token_id], free=False)
        report, timeline = rt.report(), rt.timeline()
    for name, d in report.items():
        say(f"  {name:7s} {trio.device(name).kind:21s} prefill {d['prefill_ms']:6.1f} ms, decode "
            f"{d['decode_ms']:6.1f} ms, links {d['link_ms']:5.1f} ms, memory {d['peak_mib']:5.1f} of "
            f"{d['budget_mib']:.0f} MiB")
    end_ms = max(r["end_ms"] + r["link_ms"] for r in timeline)
    overruns = sum(d["overruns"] for d in report.values())
    emu_same = emu.tokens == ref
    say(f"emulated devices give {'the same' if emu_same else 'DIFFERENT'} tokens; "
        f"{end_ms:.0f} ms of device time (clock dilated {rt.dilation:g}x), overruns: {overruns}")
    if not emu_same:
        raise E2LLMError("emulated devices' tokens differ from the single-process model")
    out = {"text": gen.text, "tokens": gen.tokens, "reference_tokens": ref, "identical": same,
           "stages": [list(r) for r in ranges],
           "emulated": {"devices": placement, "identical": emu_same, "device_time_ms": end_ms,
                        "dilation": rt.dilation, "overruns": overruns, "report": report}}
    if args.model_only:
        return out
    out["real_pair"] = _demo_real(args, say)
    out["comparison"] = _demo_compare(args, say)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    say(f"\ndemo finished in {out['wall_s']:.0f} s; figures and summary in {args.out}/")
    return out


def _demo_real(args, say) -> dict:
    """Demo part 2: E2LLM and Splitwise plans of ``--real-cluster`` serve the same few requests
    on the emulated devices (real model), with the simulator's figures for the same requests."""
    from .compare.real import real_pair
    from .devices import load_cluster

    cluster = load_cluster(args.real_cluster)
    say(f"\nE2LLM and Splitwise plans of {cluster.name!r} ({len(cluster)} devices) serve the same "
        f"{args.real_requests} conv requests (lengths x {args.prompt_scale:g}) on the emulated "
        f"devices, at {args.real_load:g} x Splitwise's sustainable rate (uncalibrated, for time: "
        f"`compare --real` calibrates) ...")
    real = real_pair(cluster, "conv", load=args.real_load, n_requests=args.real_requests,
                     prompt_scale=args.prompt_scale, progress=not args.json and sys.stderr.isatty(),
                     calibrate=False)
    for name, r in real["strategies"].items():
        say(f"  {name}: " + ", ".join(f"{m[:-2]} real {r['real'][m]:.3g} s / simulated {r['sim'][m]:.3g} s"
                                      for m in ("waiting_s", "ttft_s", "e2e_s")
                                      if r["real"].get(m) is not None and r["sim"].get(m) is not None)
            + f" ({r['wall_s']:.0f} s wall, dilation {r['dilation']:g})")
        for rid, text in list(r["texts"].items())[:2]:
            say(f"    request {rid}: {text!r}")
    for m in ("waiting_s", "ttft_s", "e2e_s"):
        rr, rs = real["ratio_real"].get(m), real["ratio_sim"].get(m)
        if rr is not None and rs is not None:
            say(f"  E2LLM / Splitwise mean {m[:-2]}: real {rr:.2f}, simulated {rs:.2f} "
                f"({'same direction' if real['agree'].get(m) else 'different direction'})")
    return real


def _demo_compare(args, say) -> dict:
    """Demo part 3: the comparison on ``--cluster`` in the simulator; table and figures."""
    from pathlib import Path

    from .compare import compare
    from .compare.plots import plot_plans, plot_ratio_vs_load, plot_waiting_vs_load
    from .compare.report import format_table, headline_lines, write_csv, write_markdown
    from .devices import load_cluster
    from .workload import workload_from_spec

    cluster = load_cluster(args.cluster)
    loads = (0.5, 0.9, 1.1)
    say(f"\nthe comparison in the simulator: {cluster.name!r}, conv, loads {', '.join(map(str, loads))} "
        f"x Splitwise's sustainable rate, {args.requests} requests per run ...")
    comp = compare(cluster, workload_from_spec("conv", 1.0), loads=loads,
                   strategies=("e2llm", "splitwise", "colocated"), n=args.requests)
    say(format_table(comp))
    for line in headline_lines(comp):
        say(line)
    d = Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    figs = {"waiting vs load": d / "waiting_vs_load.png", "ratios vs load": d / "ratio_vs_load.png",
            "plans": d / "plans.png"}
    plot_waiting_vs_load(comp).savefig(figs["waiting vs load"], dpi=110, bbox_inches="tight")
    plot_ratio_vs_load(comp).savefig(figs["ratios vs load"], dpi=110, bbox_inches="tight")
    plot_plans(comp).savefig(figs["plans"], dpi=100, bbox_inches="tight")
    write_csv(comp.results, d / "summary.csv")
    write_markdown(comp, d / "summary.md", figs)
    return comp.to_json()


def cmd_profile(args) -> dict:
    """Measure this host (one thread) and fit the cost model; or --show an existing profile."""
    import time

    from .costmodel import CostModel
    from .profiling import FULL_GRID, QUICK_GRID, profile, save_profile

    say = (lambda *a: None) if args.json else print
    if args.show is not None:
        cm = CostModel.load(args.show or None)
        out = {"profile": cm.source, "host": cm.host,
               "fit": {op: list(c) for op, c in cm.coef.items()},
               "holdout_error": cm.errors("holdout")}
    else:
        grid = QUICK_GRID if args.quick else FULL_GRID
        t0 = time.perf_counter()
        say(f"profiling this host with one thread ({grid.name} grid, "
            f"{len(grid.points())} points, {args.runs} run(s)) ...")
        d = profile(grid, progress=None if not args.json else False, runs=args.runs)
        path = save_profile(d, args.out)
        cm = CostModel.load(path)  # what the planner will read back
        out = {"profile": str(path), "seconds": round(time.perf_counter() - t0, 1),
               "grid": grid.name, "host": cm.host,
               "fit": {op: list(c) for op, c in cm.coef.items()},
               "holdout_error": cm.errors("holdout")}
    say(f"profile: {out['profile']}  (host: {cm.host.get('cpu', '?')}, {cm.host.get('date', '?')}"
        + (f"; measured in {out['seconds']} s" if "seconds" in out else "") + ")")
    say(cm.describe())
    for op, e in out["holdout_error"].items():
        say(f"held-out error {op:14s} median {100 * e['median']:5.1f} %  "
            f"P90 {100 * e['p90']:5.1f} %  ({e['n']} points)")
    try:
        ref = CostModel.load()
    except E2LLMError:  # no reference shipped (e.g. while generating it)
        ref = cm
    say(f"examples: prefill 512 tokens = {cm.layer_ms('prefill', tokens=512):.1f} ms/layer "
        f"(reference profile {ref.layer_ms('prefill', tokens=512):.1f}); decode batch 1, "
        f"context 512 = {cm.layer_ms('decode', batch=1, context=512):.2f} ms/layer "
        f"(reference {ref.layer_ms('decode', batch=1, context=512):.2f})")
    return out


def cmd_plan(args) -> dict:
    """Plan replicas (devices, roles, layer ranges) for a workload and rate, or --check a plan file."""
    from .costmodel import CostModel
    from .planning import Plan, ReplicaPlanner, make_plan, workload_stats
    from .planning.queueing import predict
    from .planning.ga import GAConfig
    from .workload import workload_from_spec

    if not args.cluster and args.devices is None:
        raise ValueError("plan needs --cluster FILE (or a preset name: home4, mixed8, edge16)")
    cluster = _load_cluster(args)
    cm = CostModel.load(args.profile) if args.profile else CostModel.load()
    say = (lambda *a: None) if args.json else print
    if args.check:
        plan = Plan.load(args.check, cluster)  # one ConfigError if it does not match the cluster
        stats, rate = plan.workload, plan.rate
        if args.workload is not None or args.rate is not None:
            wl = workload_from_spec(args.workload or plan.workload.name,
                                    plan.rate if args.rate is None else args.rate, seed=args.seed)
            stats, rate = workload_stats(wl, cm), wl.rate
        planner = ReplicaPlanner(cluster, cm, stats)
        plan.replicas = [planner.retime(r) for r in plan.replicas]
        pred = predict(plan.replicas, stats, rate, cluster=cluster)
        plan.predicted, plan.rate, plan.workload = pred.to_dict(), rate, stats
        say(f"{args.check}: valid for cluster {cluster.name!r}; evaluated for {stats.name} at "
            f"{rate:g} requests/s")
    else:
        wl = workload_from_spec(args.workload or "conv", args.rate, seed=args.seed)
        stats = workload_stats(wl, cm)
        roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
        cfg = GAConfig(population=20, generations=60, patience=15) if args.quick else None
        if args.refine_sim:
            plan = _plan_refined(args, cluster, cm, wl, stats, roles, cfg, say)
        else:
            plan = make_plan(cluster, args.strategy, stats, wl.rate, seed=args.seed, costmodel=cm,
                             progress=False if args.json else None, config=cfg, roles=roles,
                             objective=args.objective, mixed_pool=not args.no_mixed_pool)
        if args.out:
            plan.save(args.out)
    say(plan.summary())
    if args.out and not args.check:
        say(f"plan written to {args.out}")
    out = plan.to_dict()
    if args.out and not args.check:
        out["out"] = str(args.out)
    return out


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors (usage stays in ``--help``)."""

    def error(self, message: str):
        print(f"e2llm-lite: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _serving_requests(args, plan, scale: float = 1.0):
    """The request stream of ``simulate`` (and, later, ``serve``): ``--workload`` profile at
    ``--rate`` (default: the plan's), or a trace replayed at its own times x ``--time-scale``, or
    re-drawn as Poisson at ``--rate``; cut to ``--requests`` / ``--duration``; prompt and output
    lengths x ``scale`` (``serve --prompt-scale``: :meth:`~e2llm_lite.workload.LengthDist.scaled`)."""
    from pathlib import Path

    from .workload import PROFILES, workload_from_spec

    spec = args.workload or plan.workload.name
    is_profile = spec.strip().lower() in PROFILES
    if args.rate is not None and args.time_scale is not None:
        raise ValueError("give either --rate (Poisson arrivals) or --time-scale (a trace's own "
                         "arrival times, stretched), not both")
    if is_profile:
        if args.time_scale is not None:
            raise ValueError(f"--time-scale stretches a trace's own arrival times; workload {spec!r} "
                             "is a profile: give --rate")
        wl = workload_from_spec(spec, args.rate or plan.rate, seed=args.seed, prompt_scale=scale,
                                output_scale=scale)
    elif args.rate is not None:
        wl = workload_from_spec(spec, args.rate, seed=args.seed, arrival="poisson",
                                prompt_scale=scale, output_scale=scale)
    else:
        if not Path(spec).expanduser().exists():
            raise ValueError(f"workload {spec!r} is neither a profile (code, conv) nor a trace file")
        from .workload import Workload

        wl = Workload.from_trace(spec, rate_scale=1.0 / (args.time_scale or 1.0), seed=args.seed,
                                 prompt_scale=scale, output_scale=scale)
    n = args.requests
    if n is None and args.duration is None and wl.arrival != "trace":
        n = DEFAULT_SIM_REQUESTS
    requests = wl.generate(n=n, duration_s=args.duration)
    if not requests:
        raise ValueError(f"no request of workload {spec!r} arrives within --duration {args.duration:g} s")
    return wl, requests


DEFAULT_SIM_REQUESTS = 1000
DEFAULT_SERVE_REQUESTS = 20


def cmd_serve(args) -> dict:
    """Serve a workload with a plan on the emulated devices (the scheduler on the real runtime)."""
    import time

    from .costmodel import CostModel
    from .devices import load_cluster
    from .model import checkpoint_dir, load_tokenizer
    from .planning import Plan
    from .runtime.driver import EmulatedCluster
    from .serving.adapt import AdaptConfig
    from .serving.emulated import serve_requests
    from .serving.metrics import fault_report, format_faults, format_summary, write_csv
    from .serving.prompts import prompt_ids
    from .serving.simulator import script_events, simulate_requests

    if not 0 < args.prompt_scale <= 1:
        raise ValueError(f"--prompt-scale must be in (0, 1], got {args.prompt_scale:g}")
    plan = Plan.load(args.plan)
    cluster = load_cluster(args.cluster or plan.cluster)
    plan = Plan.load(args.plan, cluster)
    cm = CostModel.load(args.profile) if args.profile else CostModel.load()
    if args.requests is None and args.duration is None:
        args.requests = DEFAULT_SERVE_REQUESTS
    wl, requests = _serving_requests(args, plan, args.prompt_scale)
    tok = load_tokenizer(checkpoint_dir(progress=False))
    prompts = {r.id: prompt_ids(tok, r.prompt_tokens, r.id) for r in requests}
    show = not args.json and sys.stderr.isatty()
    kw = dict(max_batch_tokens=args.max_batch_tokens, stream_kv=args.stream_kv,
              decode_microbatches=args.decode_microbatches)
    faults = dict(fail=script_events(args.fail, cluster, "fail"),   # checked before any worker starts
                  join=script_events(args.join, cluster, "join"),
                  adapt=AdaptConfig() if args.adapt else None, seed=args.seed)
    t0 = time.perf_counter()
    with EmulatedCluster(cluster, dilation=args.dilation, calibrate=args.calibrate, costmodel=cm,
                         concurrency="all", absent=[d for d, _ in faults["join"]]) as rt:
        pipes = rt.load_plan(plan)
        rt.free(reset_stats=True)
        result = serve_requests(rt, pipes, plan, cluster, requests, prompts, costmodel=cm,
                                progress=show, **kw, **faults)
    out = result.metrics()
    out.update(fault_report(result.records.values(), result.marks, result.replans))
    if result.deaths:
        out["deaths"] = result.deaths
    out.update({"plan": str(args.plan), "strategy": plan.strategy, "cluster": cluster.name,
                "workload": wl.name if hasattr(wl, "name") else str(args.workload),
                "rate": wl.rate, "prompt_scale": args.prompt_scale, **kw,
                "events": len(result.events), "dilation": result.dilation, "calibrated": args.calibrate,
                "overruns": result.overruns, "wall_s": round(time.perf_counter() - t0, 3),
                "texts": {str(r): tok.decode(t) for r, t in sorted(result.tokens.items())[:3]}})
    if args.with_sim:
        sim = simulate_requests(plan, cluster, requests, costmodel=cm, **kw, **faults)
        out["sim"] = sim.metrics()
    if args.requests_out:
        write_csv(result.records.values(), args.requests_out)
        out["requests_out"] = str(args.requests_out)
    if args.plot:
        from .viz import plot_waiting_over_time

        plot_waiting_over_time(result.records.values(), result.marks).savefig(args.plot, dpi=120)
        out["plot"] = str(args.plot)
    if not args.json:
        print(f"{plan.strategy} plan on {cluster.name!r}, served for real: {len(requests)} requests "
              f"at {wl.rate:.4g} requests/s, prompt scale {args.prompt_scale:g} ({out['wall_s']:.0f} s "
              f"wall, dilation {result.dilation:g}, overruns {sum(result.overruns.values())})")
        print(format_summary(out))
        if args.with_sim:
            print("the same requests in the simulator (mean, s):")
            for m in ("waiting_s", "ttft_s", "tbt_s", "e2e_s"):
                real, simv = out["summary"][m]["mean"], out["sim"]["summary"][m]["mean"]
                if real is not None and simv is not None:
                    diff = f"({real / simv - 1:+.1%})" if simv > 0 else f"({real - simv:+.3g} s)"
                    print(f"  {m[:-2]:8s} real {real:8.3f}  simulated {simv:8.3f}  {diff}")
        for line in format_faults(out):
            print(line)
        for d in out.get("deaths", []):
            after = d["detected_after_s"]
            print(f"  worker of {d['device']} found dead" + ("" if after is None else
                  f" {after:.2f} s (wall) after it was killed"))
        for r, text in out["texts"].items():
            print(f"  request {r}: {text!r}")
        if args.requests_out:
            print(f"per-request figures written to {args.requests_out}")
        if args.plot:
            print(f"waiting time over the run drawn in {args.plot}")
    return out


def cmd_simulate(args) -> dict:
    """Serve a workload with a plan in virtual time (the scheduler on the simulator)."""
    import time

    from .costmodel import CostModel
    from .devices import load_cluster
    from .planning import Plan
    from .serving.adapt import AdaptConfig
    from .serving.metrics import fault_report, format_faults, format_summary, write_csv
    from .serving.simulator import simulate_requests

    plan = Plan.load(args.plan)   # the plan names its cluster: a preset, unless --cluster
    cluster = load_cluster(args.cluster or plan.cluster)
    plan = Plan.load(args.plan, cluster)   # checked against it
    cm = CostModel.load(args.profile) if args.profile else CostModel.load()
    wl, requests = _serving_requests(args, plan)
    t0 = time.perf_counter()
    show = not args.json and sys.stderr.isatty()
    result = simulate_requests(plan, cluster, requests, costmodel=cm,
                               max_batch_tokens=args.max_batch_tokens, stream_kv=args.stream_kv,
                               decode_microbatches=args.decode_microbatches, progress=show,
                               fail=args.fail, join=args.join,
                               adapt=AdaptConfig() if args.adapt else None, seed=args.seed)
    out = result.metrics()
    out.update({"plan": str(args.plan), "strategy": plan.strategy, "cluster": cluster.name,
                "workload": wl.name if hasattr(wl, "name") else str(args.workload),
                "rate": wl.rate, "max_batch_tokens": args.max_batch_tokens,
                "stream_kv": args.stream_kv, "decode_microbatches": args.decode_microbatches,
                "events": result.events, "wall_s": round(time.perf_counter() - t0, 3)})
    out.update(fault_report(result.records.values(), result.marks, result.replans))
    if args.requests_out:
        write_csv(result.records.values(), args.requests_out)
        out["requests_out"] = str(args.requests_out)
    if args.plot:
        from .viz import plot_waiting_over_time

        plot_waiting_over_time(result.records.values(), result.marks).savefig(args.plot, dpi=120)
        out["plot"] = str(args.plot)
    if not args.json:
        print(f"{plan.strategy} plan on {cluster.name!r}: {len(requests)} requests at "
              f"{wl.rate:.4g} requests/s (simulated in {out['wall_s']:.1f} s, {result.events} events)")
        print(format_summary(out))
        for line in format_faults(out):
            print(line)
        if args.requests_out:
            print(f"per-request figures written to {args.requests_out}")
        if args.plot:
            print(f"waiting time over the run drawn in {args.plot}")
    return out


def _device_at(text: str) -> tuple[str, float]:
    """``DEVICE@SECONDS`` -> (device, seconds)."""
    dev, sep, t = text.rpartition("@")
    try:
        seconds = float(t)
    except ValueError:
        seconds = -1.0
    if not sep or not dev or not (0 <= seconds < float("inf")):
        raise argparse.ArgumentTypeError(f"expected DEVICE@SECONDS (e.g. office-nuc@60), got {text!r}")
    return dev, seconds


def _csv_floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not (v > 0 and v < float("inf")) for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return vals


def cmd_compare(args) -> dict:
    """E2LLM vs Splitwise (and the other strategies) on the simulator: the same devices and
    request streams at loads relative to Splitwise's sustainable rate; tables, plots, JSON."""
    import time
    from pathlib import Path

    from .compare import compare
    from .compare.loadmap import load_map
    from .compare.plots import (plot_comparison_cdfs, plot_plans, plot_ratio_map, plot_ratio_vs_load,
                                plot_waiting_vs_load)
    from .compare.report import format_table, headline_lines, write_csv, write_markdown
    from .compare.strategies import ALL_STRATEGIES, DEFAULT_STRATEGIES
    from .costmodel import CostModel
    from .devices import load_cluster
    from .planning.ablations import ABLATIONS
    from .workload import workload_from_spec

    strategies = list(DEFAULT_STRATEGIES) if args.strategies is None else \
        [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in ALL_STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"unknown strategy {', '.join(unknown) or '(none given)'}; use one of "
                         f"{', '.join(ALL_STRATEGIES)}")
    if args.ablations:
        strategies += [a for a in ABLATIONS if a not in strategies]
    cluster = load_cluster(args.cluster)
    cm = CostModel.load(args.profile) if args.profile else CostModel.load()
    wl = workload_from_spec(args.workload, 1.0)
    say = (lambda *a: None) if args.json else print
    show = not args.json and sys.stderr.isatty()
    bar = None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=1, unit="run", file=sys.stderr, leave=False)

    def progress(done, total, text):
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.set_description_str(text[:60])
            bar.refresh()

    t0 = time.perf_counter()
    say(f"comparing {', '.join(strategies)} on {cluster.name!r} ({len(cluster)} devices) for "
        f"workload {args.workload!r}: loads {', '.join(f'{x:g}' for x in args.loads)} x Splitwise's "
        f"sustainable rate, {args.seeds} seed(s), {args.requests} requests per run")
    try:
        comp = compare(cluster, wl, loads=args.loads, strategies=strategies,
                       seeds=range(args.seeds), n=args.requests, costmodel=cm, progress=progress,
                       keep_records=True)
        lmap = None
        if args.map:
            progress(0, 1, "load x workload map")
            lmap = load_map(cluster, loads=[x for x in args.loads if x <= 1.0] or args.loads,
                            seeds=range(args.seeds), n=min(args.requests, 300), costmodel=cm,
                            progress=progress)
    finally:
        if bar is not None:
            bar.close()
    out = comp.to_json()
    say(f"Splitwise sustains {comp.saturation_rps:.4g} requests/s (simulated, "
        f"{len(comp.saturation_probes)} probes); loads are fractions of it")
    say(format_table(comp))
    for line in headline_lines(comp)[1:]:
        say(line)
    if lmap is not None:
        out["map"] = lmap.to_json()
        say("E2LLM / Splitwise mean waiting over load (rows) x conv share (columns):")
        say("        " + " ".join(f"{w:>6g}" for w in lmap.mixes))
        for x, row in zip(lmap.loads, lmap.ratio):
            say(f"  {x:4g}x " + " ".join("  sat." if v != v else f"{v:6.2f}" for v in row))
    if args.real:
        from .compare.real import real_pair

        say("the headline pair on the emulated devices (real model, real processes) ...")
        real = real_pair(cluster, args.workload, load=args.real_load, n_requests=args.real_requests,
                         prompt_scale=args.prompt_scale, costmodel=cm, progress=show)
        out["real"] = real
        for m in ("waiting_s", "ttft_s", "e2e_s"):
            rr, rs = real["ratio_real"].get(m), real["ratio_sim"].get(m)
            say(f"  E2LLM / Splitwise {m[:-2]:8s} real {_ratio(rr)}  simulated {_ratio(rs)}  "
                f"{'same direction' if real['agree'].get(m) else 'DIFFERENT direction' if real['agree'].get(m) is False else ''}")
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        figs = {"waiting vs load": d / "waiting_vs_load.png", "ratios vs load": d / "ratio_vs_load.png",
                "plans": d / "plans.png"}
        plot_waiting_vs_load(comp).savefig(figs["waiting vs load"], dpi=110, bbox_inches="tight")
        if "e2llm" in strategies:
            plot_ratio_vs_load(comp).savefig(figs["ratios vs load"], dpi=110, bbox_inches="tight")
        else:
            del figs["ratios vs load"]
        high = [e["load"] for e in comp.results if e["strategy"] == "splitwise" and not e["saturated"]]
        if high:
            figs["CDFs at high load"] = d / "cdfs_high_load.png"
            plot_comparison_cdfs(comp, max(high)).savefig(figs["CDFs at high load"], dpi=110,
                                                          bbox_inches="tight")
        plot_plans(comp).savefig(figs["plans"], dpi=100, bbox_inches="tight")
        if lmap is not None:
            figs["ratio map"] = d / "ratio_map.png"
            plot_ratio_map(lmap).savefig(figs["ratio map"], dpi=110, bbox_inches="tight")
        write_csv(comp.results, d / "summary.csv")
        write_markdown(comp, d / "summary.md", figs)
        (d / "summary.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
        out["files"] = sorted(str(p) for p in d.iterdir())
        say(f"wrote {d / 'summary.md'}, summary.csv, summary.json and {len(figs)} figure(s) in {d}")
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def _ratio(x) -> str:
    return "   -  " if x is None else f"{x:6.2f}"


def _plan_refined(args, cluster, cm, wl, stats, roles, cfg, say):
    """``plan --refine-sim K``: the GA, then its K best distinct candidates re-ranked by
    simulating ``--refine-requests`` requests of the workload (e2llm_lite.serving.refine)."""
    from .planning import SearchProblem, plan_e2llm
    from .serving.refine import refine_by_simulation

    if args.strategy != "e2llm":
        raise ValueError("--refine-sim re-ranks the GA's candidates: it needs --strategy e2llm")
    problem = SearchProblem(cluster, stats, wl.rate, costmodel=cm, roles=roles,
                            objective=args.objective)
    problem.check_cluster()
    plan, hist = plan_e2llm(problem, seed=args.seed, config=cfg,
                            progress=False if args.json else None)
    requests = wl.generate(n=args.refine_requests) if wl.arrival != "trace" else \
        wl.generate()[:args.refine_requests]
    plan, table = refine_by_simulation(problem, hist.final, requests, args.refine_sim,
                                       search=plan.search, costmodel=cm, notes=plan.notes)
    say(f"re-ranked the GA's {len(table)} best candidates by simulating {len(requests)} requests:")
    for row in table:
        say(f"  formula #{row['formula_rank']}: fitness {row['formula_fitness']:.4g}; simulated mean "
            f"waiting {row['simulated_waiting_s']:.4g} s, TTFT {row['simulated_ttft_s']:.4g} s"
            + (f", {row['rejected']} rejected" if row["rejected"] else "")
            + ("  <- chosen" if row["formula_rank"] == plan.search["refine_sim"]["chosen"] else ""))
    return plan


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="e2llm-lite", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def connect_timeout(sp):
        sp.add_argument("--connect-timeout", type=_positive_float, default=CONNECT_TIMEOUT_S,
                        metavar="S", help="the longest to wait for the device workers to start "
                        f"and join (s, default {CONNECT_TIMEOUT_S:g})")

    def common(sp):
        sp.add_argument("--json", action="store_true", help="print results as JSON on stdout")
        return sp

    d = common(sub.add_parser("demo", help="the main job: the real model on emulated devices, E2LLM vs Splitwise for real and in the simulator"))
    d.add_argument("--prompt", default=DEFAULT_PROMPT)
    d.add_argument("--max-new-tokens", type=_whole(1), default=24)
    d.add_argument("--slices", type=_whole(1), default=3)
    d.add_argument("--cluster", default="mixed8", help="cluster of the simulated comparison (default mixed8)")
    d.add_argument("--real-cluster", default="home4", help="cluster of the real E2LLM / Splitwise "
                   "pair (default home4)")
    d.add_argument("--real-requests", type=_whole(2), default=6, help="requests of the real pair (default 6)")
    d.add_argument("--real-load", type=_positive_float, default=0.9, help="load of the real pair, x "
                   "Splitwise's sustainable rate (default 0.9)")
    d.add_argument("--prompt-scale", type=_positive_float, default=0.05,
                   help="real pair: prompt and output length scale (default 0.05)")
    d.add_argument("--requests", type=_whole(10), default=300, help="requests per simulated run (default 300)")
    d.add_argument("--out", default="demo-out", help="folder for the figures and summary (default demo-out)")
    d.add_argument("--model-only", action="store_true", help="only part 1: the model on emulated devices")
    d.set_defaults(func=cmd_demo)

    g = common(sub.add_parser("generate", help="greedy generation from a chat prompt"))
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=_whole(1), default=32)
    g.add_argument("--slices", type=_whole(1), default=1, help="even in-process slices (default 1)")
    g.add_argument("--split", type=_parse_split, help="layer boundaries, e.g. 0,7,20,30")
    g.add_argument("--cluster", help="run on emulated devices: a cluster.json or a preset name "
                   "(home4, mixed8, edge16); layers split evenly unless --split")
    g.add_argument("--devices", type=_whole(1), help="run on N emulated default devices (speed 1.0)")
    g.add_argument("--dilation", type=_positive_float, default=None,
                   help="clock dilation factor (default: automatic from the fastest device)")
    g.add_argument("--calibrate", nargs="?", const=True, default=None, metavar="PROFILE",
                   help="calibrate each device against the cost model (the reference profile, or "
                   "PROFILE): devices then run at the speeds the planner and simulator assume, "
                   "whatever this host's speed today (about 2 s per device)")
    g.add_argument("--external", action="store_true",
                   help="do not spawn workers: wait for `e2llm-lite worker` processes (ranks "
                   "1..N, device i = rank i+1) at MASTER_ADDR:MASTER_PORT")
    connect_timeout(g)
    g.set_defaults(func=cmd_generate)

    w = sub.add_parser("worker", help="start one device worker of a multi-host run "
                       "(env: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)")
    connect_timeout(w)
    w.add_argument("--join", action="store_true",
                   help="a device absent at the start: join the running cluster when the driver "
                        "lets it in (EmulatedCluster.join; serve --join DEVICE@S)")
    w.set_defaults(func=cmd_worker, json=False)

    pr = common(sub.add_parser("profile", help="measure per-layer times on this host and fit the "
                                                 "cost model"))
    pr.add_argument("--quick", action="store_true", help="a small grid (well under 2 minutes)")
    pr.add_argument("--out", default="profile.json", help="where to write the profile "
                                                          "(default: profile.json)")
    pr.add_argument("--runs", type=_whole(1), default=1,
                    help="measure the grid N times and keep each point's median (default 1; the "
                         "shipped reference used 3)")
    pr.add_argument("--show", nargs="?", const="", metavar="FILE",
                    help="do not measure: validate and summarise a profile FILE (default: the "
                         "shipped reference profile)")
    pr.set_defaults(func=cmd_profile)
    pl = common(sub.add_parser("plan", help="plan replicas, roles and layer splits for a workload "
                                            "(E2LLM's GA or a baseline) and write plan.json"))
    pl.add_argument("--cluster", help="a cluster.json or a preset name (home4, mixed8, edge16)")
    pl.add_argument("--strategy", default="e2llm",
                    choices=["e2llm", "splitwise", "pipeline", "exo", "colocated"],
                    help="e2llm = GA over groups and roles with the DP inside (default); the "
                         "others are the baselines")
    pl.add_argument("--workload", help="code, conv or a trace CSV (default conv; with --check: "
                    "the plan's own)")
    pl.add_argument("--rate", type=_positive_float, help="arrival rate, requests/s (required for code/conv; "
                    "with --check: default the plan's own)")
    pl.add_argument("--seed", type=_whole(0), default=0, help="GA seed (default 0)")
    pl.add_argument("--out", help="write the plan to this file (plan.json)")
    pl.add_argument("--check", metavar="PLAN", help="do not plan: validate PLAN against the "
                    "cluster and re-evaluate it for --workload / --rate")
    pl.add_argument("--quick", action="store_true", help="a smaller, faster GA")
    pl.add_argument("--roles", default="prefill,decoder,both",
                    help="roles the GA may give a replica (default prefill,decoder,both; "
                         "E2LLM's strict roles: prefill,decoder)")
    pl.add_argument("--objective", default="waiting", choices=["waiting", "ttft"],
                    help="what the GA minimises: mean waiting time (default) or TTFT")
    pl.add_argument("--no-mixed-pool", action="store_true",
                    help="Splitwise without its mixed pool (prompt and token pools only)")
    pl.add_argument("--refine-sim", type=_whole(1), metavar="K", help="re-rank the GA's K best "
                    "distinct candidates by simulating the workload; keep the best simulated")
    pl.add_argument("--refine-requests", type=_whole(1), default=1000, metavar="N",
                    help="requests simulated per candidate with --refine-sim (default 1000)")
    pl.add_argument("--profile", help="cost-model profile (default: the shipped reference)")
    pl.set_defaults(func=cmd_plan, devices=None)

    sm = common(sub.add_parser("simulate", help="serve a workload with a plan in virtual time "
                                                 "(the scheduler on the discrete-event simulator)"))
    _serving_args(sm)
    sm.set_defaults(func=cmd_simulate)

    cp = common(sub.add_parser("compare", help="E2LLM vs Splitwise and the other strategies in the "
                                                "simulator, at loads relative to Splitwise's capacity"))
    cp.add_argument("--cluster", default="mixed8", help="a cluster.json or a preset (default mixed8)")
    cp.add_argument("--workload", default="conv", help="code, conv, mix (code shifting to conv) or "
                    "a trace CSV (replayed, time-scaled to each load) (default conv)")
    cp.add_argument("--loads", type=_csv_floats, default=[0.3, 0.5, 0.7, 0.9, 1.1],
                    help="fractions of Splitwise's sustainable rate (default 0.3,0.5,0.7,0.9,1.1)")
    cp.add_argument("--strategies", help="comma-separated (default e2llm,splitwise,colocated,"
                    "pipeline,exo; also e2llm-no-ga, e2llm-no-dp, e2llm-no-roles, e2llm-splitwise-roles)")
    cp.add_argument("--ablations", action="store_true", help="add E2LLM's four ablations")
    cp.add_argument("--seeds", type=_whole(1), default=1, help="seeds 0..N-1: request streams and "
                    "GA seeds (default 1)")
    cp.add_argument("--requests", type=_whole(10), default=400, help="requests per run (default 400)")
    cp.add_argument("--map", action="store_true", help="also map the E2LLM / Splitwise waiting "
                    "ratio over load x workload mix (heatmap with the 0.5 contour)")
    cp.add_argument("--real", action="store_true", help="also run the E2LLM / Splitwise pair on the "
                    "emulated devices (prompt-scaled) next to the simulator's prediction")
    cp.add_argument("--real-load", type=_positive_float, default=0.9, help="load of the --real "
                    "run (default 0.9)")
    cp.add_argument("--real-requests", type=_whole(1), default=12, help="requests of the --real run "
                    "(default 12)")
    cp.add_argument("--prompt-scale", type=_positive_float, default=0.05, help="--real: prompt and "
                    "output length scale (default 0.05)")
    cp.add_argument("--out", default="compare-out", help="folder for summary.md/.csv/.json and the "
                    "figures (default compare-out)")
    cp.add_argument("--profile", help="cost-model profile (default: the shipped reference)")
    cp.set_defaults(func=cmd_compare)

    sv = common(sub.add_parser("serve", help="serve a workload with a plan for real: the same "
                                              "scheduler driving the emulated devices"))
    _serving_args(sv)
    sv.add_argument("--prompt-scale", type=_positive_float, default=1.0, metavar="X",
                    help="multiply every request's prompt and output tokens by X (at least 1 "
                    "each), so that a real run fits minutes (default 1)")
    sv.add_argument("--with-sim", action="store_true", help="also simulate the very same request "
                    "stream and print both side by side")
    sv.add_argument("--dilation", type=_positive_float, help="clock dilation (default: picked for "
                    "every device computing at once)")
    sv.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                    help="skip calibrating each device against the cost model (about a minute on "
                    "2 cores): the devices then run at their speed relative to this host's thread "
                    "as it is now, so the simulation beside (--with-sim) is off by this host's factor")
    sv.set_defaults(func=cmd_serve)
    return p


def _serving_args(sm) -> None:
    """The flags ``simulate`` and ``serve`` share."""
    sm.add_argument("--plan", required=True, help="a plan.json (from `e2llm-lite plan`)")
    sm.add_argument("--cluster", help="its cluster.json or preset (default: the preset the plan "
                    "names)")
    sm.add_argument("--workload", help="code, conv or a trace CSV (default: the plan's)")
    sm.add_argument("--rate", type=_positive_float, help="Poisson arrivals at this rate, "
                    "requests/s (default for code/conv: the plan's rate)")
    sm.add_argument("--time-scale", type=_positive_float, help="replay a trace with its arrival "
                    "times multiplied by X (X > 1: slower, for clusters slower than Azure's)")
    sm.add_argument("--duration", type=_positive_float, help="only requests arriving within S s")
    sm.add_argument("--requests", type=_whole(1), help=f"only the first N requests (default for "
                    f"code/conv: {DEFAULT_SIM_REQUESTS} simulated, {DEFAULT_SERVE_REQUESTS} served; "
                    "a trace: all)")
    sm.add_argument("--seed", type=_whole(0), default=0, help="workload seed (default 0)")
    sm.add_argument("--max-batch-tokens", type=_whole(1), default=2048,
                    help="the iteration token budget of every replica (default 2048, "
                    "splitwise-sim's figure)")
    sm.add_argument("--stream-kv", action="store_true", help="stream each layer's KV to the "
                    "decoder while the prompt computes (Splitwise's option, for every strategy; "
                    "default off)")
    sm.add_argument("--decode-microbatches", type=_whole(1), default=1, metavar="K",
                    help="decode micro-batches in flight on a multi-stage replica (default 1, as "
                    "the planner assumes)")
    sm.add_argument("--requests-out", metavar="CSV", help="write one row per request")
    sm.add_argument("--profile", help="cost-model profile (default: the shipped reference)")
    sm.add_argument("--fail", action="append", type=_device_at, default=[], metavar="DEVICE@S",
                    help="the device fails S s (device time) into the run (repeatable; serve: its "
                    "worker is SIGKILLed): its requests are re-queued and the devices left are "
                    "re-planned")
    sm.add_argument("--join", action="append", type=_device_at, default=[], metavar="DEVICE@S",
                    help="a device of the cluster, absent until S s, joins (repeatable): the "
                    "next plan may use it (serve: its worker runs from the start, holding no "
                    "layers until then)")
    sm.add_argument("--adapt", action="store_true", help="re-plan when the workload drifts "
                    "(sliding window of 100 arrivals; see e2llm_lite/serving/adapt.py)")
    sm.add_argument("--plot", metavar="PNG", help="save waiting time over the run with the "
                    "failures, joins and re-plans marked")



_CTRL_C = {"seen": False}


def _on_sigint(signum, frame):
    """Ctrl-C: remember it (a library may turn the KeyboardInterrupt into another error while it
    imports), then interrupt as Python does — except inside a ``__del__``, where Python would
    only print the exception (a traceback for the user) and carry on: then ask again 50 ms later,
    and the runtime's waits see the flag too."""
    import os
    import signal
    import threading

    _CTRL_C["seen"] = True
    INTERRUPTED.set()
    f = frame
    while f is not None:
        if f.f_code.co_name == "__del__":
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
            return
        f = f.f_back
    raise KeyboardInterrupt



def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` came from Ctrl-C: one was seen, or a KeyboardInterrupt is down its chain."""
    if _CTRL_C["seen"]:
        return True
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    import os

    import signal
    import threading

    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # one line, not torch's C++ logs
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("e2llm-lite: interrupted", file=sys.stderr)
        return 130
    except (E2LLMError, ValueError, OSError) as e:  # OSError: a file that cannot be read or written
        if _interrupted(e):
            print("e2llm-lite: interrupted", file=sys.stderr)
            return 130
        print(f"e2llm-lite: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if _interrupted(e):  # Ctrl-C inside a library's import, re-raised as another error
            print("e2llm-lite: interrupted", file=sys.stderr)
            return 130
        raise
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
