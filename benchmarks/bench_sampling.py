"""KV-cached MaskGIT sampling vs GENIE's uncached sampler and the truncated uncached one.

GENIE-35M shape by default (32 layers, d_model 256, 8 heads, T = 16, S = 256, 2 x 512 factored vocabulary), random
weights, fp32, batch 1, 8 prompt + 8 new frames. Prints frames/s of each sampler, the speed-up of the cached one,
whether the tokens are identical, the matmul FLOP ratio (from the forwards each sampler actually ran) and the
cache's memory. Every number in a table comes from one run of this script (the baseline is measured in the same
run). The samplers (`--samplers`, default cached,genie,truncated,cached):

    cached           maskgit_generate: the FrameKVCache sampler
    genie            GENIE's uncached sampler (use_cache=False) on the same model and kernels: the baseline of the
                     speed-up targets
    truncated        the uncached sampler over frames 0..t only
    genie-reference  GENIE's uncached sampler on wmkernels.reference.genie.GenieSTMaskGIT with the same weights,
                     the public GENIE model's math in plain PyTorch (SDPA attention): what the public code runs

Example:

    .venv/bin/python benchmarks/bench_sampling.py --steps 2
    .venv/bin/python benchmarks/bench_sampling.py --steps 4 --samplers cached,truncated
    .venv/bin/python benchmarks/bench_sampling.py --new-frames 24 --samplers cached   # a 32-frame rollout
    .venv/bin/python benchmarks/bench_sampling.py --samplers cached,genie,genie-reference,cached
    .venv/bin/python benchmarks/bench_sampling.py --decode-run --threads 1   # the decode op alone (see decode_run)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from wmkernels.models import STMaskGIT, STMaskGITConfig
from wmkernels.nn import FrameKVCache
from wmkernels.reference.genie import GenieSTMaskGIT
from wmkernels.reference.maskgit import genie_maskgit_generate
from wmkernels.sampling import maskgit_generate


def forward_flops(cfg: STMaskGITConfig, frames: int, keys: int, logit_frames: int) -> float:
    """Matmul FLOPs of a forward over `frames` frames whose temporal attention sees `keys` frames per query, with
    the output head run on `logit_frames` of them."""
    d, s = cfg.d_model, cfg.S
    hidden = int(d * cfg.mlp_ratio)
    per_token = 2 * d * 3 * d * 2 + 2 * d * d * 2 + 2 * 2 * d * hidden  # qkv x2, proj x2, mlp
    per_token += 4 * s * d + 4 * keys * d  # spatial and temporal attention (QK^T and PV)
    flops = cfg.num_layers * per_token * frames * s
    flops += 2 * d * cfg.num_logits * logit_frames * s
    return float(flops)


def count_calls(model, log: list) -> list[str]:
    """Record every forward the samplers run (frames, temporal keys, frames with logits) by wrapping the model's
    methods (those it has: the reference model has only compute_logits). Returns the names wrapped."""
    wrapped = []

    def wrap(name, describe):
        fn = getattr(model, name, None)
        if fn is None:
            return

        def inner(*args, **kwargs):
            log.append(describe(*args, **kwargs))
            return fn(*args, **kwargs)
        setattr(model, name, inner)
        wrapped.append(name)

    wrap("compute_logits", lambda tok: (tok.shape[1], tok.shape[1], tok.shape[1]))
    wrap("prefill", lambda tok, cache: (tok.shape[1], tok.shape[1], 0))
    # decode / commit see the cached frames plus themselves; the reference decode attends over all T_max slots.
    # A decode with `commit` (B, S) or (B, n, S) is one forward over those frames and the decoded one, with the
    # head on the decoded frame only.
    wrap("decode_logits", lambda frame, cache, commit=None: (
        1 + (0 if commit is None else commit.shape[1] if commit.dim() == 3 else 1), cache.max_frames, 1))
    wrap("commit_frame", lambda frame, cache: (1, cache.max_frames, 0))
    return wrapped


def decode_run(args) -> None:
    """The sampler's two-frame pass in the decode op alone: per layer, one `frame_decode_step` call on a run of 2
    frames (q, k, v (B, 2, S, H, D); the CPU kernel reads the cached K/V once) against two one-frame calls, over
    every layer's cache (the model's shapes, `--cached-frames` frames already cached), interleaved `--repeats`
    times. Prints the medians and the median of the per-pair ratios."""
    from wmkernels import frame_decode_step

    if not 1 <= args.cached_frames <= args.T - 2:
        raise SystemExit(f"--cached-frames must lie in [1, T - 2 = {args.T - 2}], got {args.cached_frames}")
    d = args.d_model // args.heads
    g = torch.Generator().manual_seed(0)
    kc, vc = (torch.randn(args.layers, args.batch, args.T, args.S, args.heads, d, generator=g) for _ in range(2))
    q, k, v = torch.randn(args.batch, 2, args.S, 3, args.heads, d, generator=g).unbind(3)
    w, b = torch.ones(d), torch.zeros(d)
    nf = torch.tensor(args.cached_frames + 1)

    def one_call():
        for i in range(args.layers):
            frame_decode_step(q, k, v, kc[i], vc[i], nf, qk_norm_weight=w, qk_norm_bias=b)

    def two_calls():
        for i in range(args.layers):
            for j in range(2):
                frame_decode_step(q[:, j], k[:, j], v[:, j], kc[i], vc[i], nf + j, qk_norm_weight=w, qk_norm_bias=b)

    one_call()  # warm-up
    two_calls()
    times = {"run of 2 frames, one call": [], "two one-frame calls": []}
    for _ in range(args.repeats):
        for name, fn in zip(times, (one_call, two_calls)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(f"frame_decode_step over {args.layers} layers' caches (B={args.batch}, T_max={args.T}, S={args.S}, "
          f"H={args.heads}, D={d}), {args.cached_frames} frames cached, fp32, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved pairs:")
    for name, ts in times.items():
        print(f"  {name:<26} median {statistics.median(ts) * 1e3:8.2f} ms")
    one, two = times.values()
    print(f"  speed-up of the run: {statistics.median([b / a for a, b in zip(one, two)]):.2f}x (median per pair)")


def run(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decode_run:
        return decode_run(args)
    torch.manual_seed(0)
    cfg = STMaskGITConfig(num_layers=args.layers, num_heads=args.heads, d_model=args.d_model, T=args.T, S=args.S,
                          image_vocab_size=args.vocab, num_factored_vocabs=2)
    model = STMaskGIT.from_config(cfg, generator=torch.Generator().manual_seed(0)).eval()
    h = cfg.H
    prompt = torch.randint(0, cfg.image_vocab_size, (args.batch, args.prompt_frames, h, h),
                           generator=torch.Generator().manual_seed(1))
    samplers = {
        "cached": lambda g: maskgit_generate(model, prompt, args.new_frames, args.steps, args.temperature,
                                             generator=g, progress=False, window_stride=args.window_stride).tokens,
        "genie": lambda g: genie_maskgit_generate(model, prompt, args.new_frames, args.steps, args.temperature,
                                                  "random", g, args.window_stride)[0],
        "truncated": lambda g: genie_maskgit_generate(model, prompt, args.new_frames, args.steps, args.temperature,
                                                      "random", g, args.window_stride, truncated=True)[0],
        "genie-reference": lambda g: genie_maskgit_generate(reference, prompt, args.new_frames, args.steps,
                                                            args.temperature, "random", g, args.window_stride)[0],
    }
    names = args.samplers.split(",")
    unknown = sorted(set(names) - set(samplers))
    if unknown:
        raise SystemExit(f"--samplers: unknown {', '.join(unknown)}; choose from {', '.join(samplers)}")
    reference = None
    if "genie-reference" in names:  # the public GENIE model's math in plain PyTorch, with the same weights
        reference = GenieSTMaskGIT(cfg.to_dict()).eval()
        reference.load_state_dict(model.state_dict())
    results, all_times, round_times = {}, {}, []
    # A sampler named twice (e.g. "cached,genie,truncated,cached") runs before and after the slow ones, so that
    # load drift on a shared machine hits both sides; its median is over all its runs. With --rounds N the whole
    # list runs N times, and each round also gives its own ratios (load drifts less within a round than across).
    for round_index, name in ((r, n) for r in range(args.rounds) for n in names):
        if len(round_times) == round_index:
            round_times.append({})
        times, log = all_times.setdefault(name, []), []
        first = len(times)
        target = reference if name == "genie-reference" else model
        wrapped = count_calls(target, log)
        for rep in range(args.reps if name != "cached" else max(args.reps, args.cached_reps)):
            log.clear()  # FLOPs of one run
            t0 = time.perf_counter()
            tokens = samplers[name](torch.Generator().manual_seed(2))
            times.append(time.perf_counter() - t0)
        for attr in wrapped:
            delattr(target, attr)
        flops = sum(forward_flops(cfg, f, k, lg) for f, k, lg in log)
        frame_forwards = sum(f for f, _, _ in log)
        if name in results and not torch.equal(results[name][3], tokens):
            raise RuntimeError(f"{name} gave different tokens in two runs")
        results[name] = (statistics.median(times), flops, frame_forwards, tokens)
        round_times[-1].setdefault(name, []).extend(times[first:])
        print(f"  {name}: median {statistics.median(times):.2f} s over {len(times)} run(s)", flush=True)

    cache = FrameKVCache.for_model(model, args.batch)
    print(f"\nshape: {cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} heads, T={cfg.T}, S={cfg.S}; "
          f"batch {args.batch}, {args.prompt_frames} prompt + {args.new_frames} new frames, {args.steps} MaskGIT "
          f"steps, window stride {args.window_stride}, temperature {args.temperature}; fp32, {torch.get_num_threads()} threads")
    print(f"FrameKVCache memory: {cache.nbytes / 2**20:.1f} MiB (K and V, {cfg.num_layers} x {tuple(cache.k.shape[1:])})")
    base = results.get("cached")
    print(f"\n{'sampler':<15} {'s':>9} {'frames/s':>9} {'frame-fwds':>10} {'GFLOP':>9} {'cached speed-up':>16} "
          f"{'FLOP ratio':>11} {'same tokens':>12}")
    for name, (sec, flops, fwd, tokens) in results.items():
        fps = args.batch * args.new_frames / sec
        speed = f"{sec / base[0]:.2f}x" if base else "-"
        ratio = f"{flops / base[1]:.2f}x" if base else "-"
        same = str(torch.equal(tokens, base[3])) if base and name != "cached" else "-"
        print(f"{name:<15} {sec:>9.2f} {fps:>9.3f} {fwd:>10} {flops / 1e9:>9.1f} {speed:>16} {ratio:>11} {same:>12}")
    if args.rounds > 1 and base:
        print("\nper round (that round's medians), cached speed-up:")
        for i, rnd in enumerate(round_times):
            if "cached" not in rnd:
                continue
            ratios = {n: statistics.median(t) / statistics.median(rnd["cached"]) for n, t in rnd.items() if n != "cached"}
            print(f"  round {i + 1}: cached {statistics.median(rnd['cached']):.2f} s, "
                  + ", ".join(f"{n} {statistics.median(rnd[n]):.2f} s = {r:.2f}x" for n, r in ratios.items()))
        for n in results:
            if n != "cached":
                per_round = [statistics.median(r[n]) / statistics.median(r["cached"]) for r in round_times
                             if n in r and "cached" in r]
                print(f"  {n}: median of the per-round speed-ups {statistics.median(per_round):.2f}x "
                      f"(range {min(per_round):.2f}-{max(per_round):.2f}x over {len(per_round)} rounds)")
    if "genie" not in results and base:
        # Not run (too slow here): GENIE runs the whole T-frame window at every step of every frame.
        flops = args.new_frames * args.steps * forward_flops(cfg, cfg.T, cfg.T, cfg.T)
        fwd = args.new_frames * args.steps * cfg.T
        print(f"{'genie':<15} {'not run':>9} {'-':>9} {fwd:>10} {flops / 1e9:>9.1f} {'-':>16} "
              f"{flops / base[1]:>10.2f}x {'-':>12}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--S", type=int, default=256)
    p.add_argument("--vocab", type=int, default=2**18)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-frames", type=int, default=8)
    p.add_argument("--new-frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--reps", type=int, default=1, help="runs of each sampler (median reported)")
    p.add_argument("--cached-reps", type=int, default=3, help="runs of the (fast) cached sampler")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--samplers", default="cached,genie,truncated,cached")
    p.add_argument("--rounds", type=int, default=1, help="run the whole sampler list this many times")
    p.add_argument("--window-stride", type=int, default=1, help="frames dropped when the window is full")
    p.add_argument("--decode-run", action="store_true", help="time only the decode op: a 2-frame run vs 2 calls")
    p.add_argument("--cached-frames", type=int, default=11, help="--decode-run: frames already in the cache")
    p.add_argument("--repeats", type=int, default=15, help="--decode-run: interleaved pairs")
    run(p.parse_args())


if __name__ == "__main__":
    main()
