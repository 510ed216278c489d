"""Spatial + temporal attention of one GENIE ST block, on the CPU: wmkernels against GENIE's two compositions.

Shape: the GENIE-35M block, B=2, T=16, S=256, 8 heads, head dim 32, float32. Every method starts from the qkv
projection outputs (B, T, S, 3 * H * D) of the spatial and the temporal attention and ends with (B, T, S, H * D),
so getting into and out of each method's layout is part of its time:

    wmkernels  the fused projection viewed (B, T, S, 3, H, D), spatial_attention_qkv / temporal_attention_qkv (their
               backward writes the one fused gradient), a free view at the end
    sdpa       GENIE's rearrange + torch.nn.functional.scaled_dot_product_attention (+ rearrange back)
    explicit   GENIE's explicit path: rearrange, q @ k^T * scale, (causal mask), softmax, @ v, rearrange back

The methods run interleaved, `--repeats` times each, and medians are reported with ratios measured in this run
(the machine may be shared: only same-run ratios mean anything). Also reported: the achieved GFLOP/s of the
spatial attention core (no layout changes; 4 * B*T*H * S^2 * D flops) for wmkernels and SDPA beside torch.mm of
two 2048 x 2048 float32 matrices, and the peak memory of each method (high-water RSS of a fresh process that
runs it once after a warm-up, above its RSS before the call: Linux VmHWM, reset through /proc/self/clear_refs;
glibc mmap threshold fixed so RSS follows live tensors; median of 3 processes).

    .venv/bin/python benchmarks/bench_attention.py [--repeats 15] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import wmkernels

B, T, S, H, D = 2, 16, 256, 8, 32


def inputs(requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, S, 3 * H * D, generator=g, requires_grad=requires_grad) for _ in range(2)]


def wmkernels_spatial(x_s):
    # As wmkernels.nn.SelfAttention does: the fused projection viewed (B, T, S, 3, H, D), handed to the op whole.
    return wmkernels.spatial_attention_qkv(x_s.view(B, T, S, 3, H, D)).view(B, T, S, H * D)


def wmkernels_temporal(x_t):
    return wmkernels.temporal_attention_qkv(x_t.view(B, T, S, 3, H, D), causal=True).view(B, T, S, H * D)


def wmkernels_block(x_s, x_t):
    return wmkernels_spatial(x_s), wmkernels_temporal(x_t)


def _explicit(q, k, v, causal):
    scores = (q @ k.transpose(-2, -1)) * D**-0.5
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(dim=-1) @ v


def _genie_spatial(x_s, attend):
    # (B, T, S, 3HD) -> (B*T, H, S, D) each, attend, back to (B, T, S, HD).
    q, k, v = x_s.reshape(B * T, S, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    return attend(q, k, v, False).transpose(1, 2).reshape(B, T, S, H * D)


def _genie_temporal(x_t, attend):
    # (B, T, S, 3HD) -> (B*S, H, T, D) each, attend causally, back to (B, T, S, HD).
    q, k, v = x_t.permute(0, 2, 1, 3).reshape(B * S, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    return attend(q, k, v, True).transpose(1, 2).reshape(B, S, T, H * D).permute(0, 2, 1, 3).contiguous()


def _genie_block(x_s, x_t, attend):
    return _genie_spatial(x_s, attend), _genie_temporal(x_t, attend)


def _sdpa(q, k, v, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def sdpa_block(x_s, x_t):
    return _genie_block(x_s, x_t, _sdpa)


def explicit_block(x_s, x_t):
    return _genie_block(x_s, x_t, _explicit)


METHODS = {"wmkernels": wmkernels_block, "sdpa": sdpa_block, "explicit": explicit_block}


def run_once(method, backward, xs):
    y_s, y_t = METHODS[method](*xs)
    if backward:
        (y_s.sum() + y_t.sum()).backward()


def timed(fns, repeats):
    """Interleaved medians (ms) of each zero-argument function.

    The order rotates from one repeat to the next, so each method follows every other one equally often: what ran
    just before (the allocator's state after another method freed its buffers) moves a method's time by up to 1.6x
    here (SDPA: 28 ms after wmkernels, 46 ms after the explicit path), and a fixed order would bias the medians."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(v) for name, v in times.items()}


def peak_memory_mb(method, backward, runs=3):
    """Median over `runs` fresh processes of the peak RSS above the pre-call RSS while running the method once.

    The child runs with a fixed glibc mmap threshold: every buffer above 64 KiB is then mapped on allocation and
    unmapped on free, so RSS follows the live tensors. With glibc's default (a threshold that grows as buffers are
    freed), freed tensors stay in the heap or not depending on history, and the same run read 48 to 112 MiB."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    peaks = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, __file__, "--peak-child", method, str(int(backward))],
                             capture_output=True, text=True, check=True, env=env)
        peaks.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])
    return statistics.median(peaks)


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_child(method, backward):
    xs = inputs(requires_grad=backward)
    run_once(method, backward, inputs(requires_grad=backward, seed=1))  # one-time set-up (thread pools, ...)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the RSS high-water mark (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    run_once(method, backward, xs)
    print(json.dumps({"peak_mb": (_status_kib("VmHWM") - before) / 1024}))


def core_gflops(repeats):
    q, k, v = torch.randn(B, T, S, 3, H, D).unbind(3)
    qs, ks, vs = (t.permute(0, 1, 3, 2, 4).reshape(B * T, H, S, D).contiguous() for t in (q, k, v))
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    ms = timed({
        "wmkernels spatial core": lambda: wmkernels.spatial_attention(q, k, v),
        "sdpa spatial core": lambda: F.scaled_dot_product_attention(qs, ks, vs),
        "torch.mm 2048^2": lambda: torch.mm(a, b),
    }, repeats)
    flops = {"wmkernels spatial core": 4 * B * T * H * S * S * D, "sdpa spatial core": 4 * B * T * H * S * S * D,
             "torch.mm 2048^2": 2 * 2048**3}
    return {name: (ms[name], flops[name] / ms[name] / 1e6) for name in ms}


def block_forward_ms(repeats):
    """A whole GENIE ST block forward (qk_norm on, as GENIE-35M): wmkernels.nn.STBlock vs the reference block
    (GENIE's code path: rearrange + SDPA) holding the same weights."""
    from wmkernels.nn import STBlock
    from wmkernels.reference.genie import GenieSTBlock

    torch.manual_seed(0)
    ours = STBlock(H * D, H, qk_norm=True).eval()
    ref = GenieSTBlock(H, H * D, qk_norm=True).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(B, T, S, H * D)
    with torch.no_grad():
        return timed({"wmkernels STBlock": lambda: ours(x), "GENIE block (SDPA)": lambda: ref(x)}, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--peak-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_child:
        _peak_child(args.peak_child[0], bool(int(args.peak_child[1])))
        return
    print(f"GENIE-35M block B={B} T={T} S={S} H={H} D={D} float32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.repeats} interleaved repeats, medians")
    for backward in (False, True):
        xs = inputs(requires_grad=backward)
        with torch.set_grad_enabled(backward):
            ms = timed({m: (lambda m=m: run_once(m, backward, xs)) for m in METHODS}, args.repeats)
        mode = "forward+backward" if backward else "forward"
        print(f"\n{mode}: spatial + temporal attention of one block, incl. layout changes")
        for m in METHODS:
            ratio = "" if m == "wmkernels" else f"   wmkernels is {ms[m] / ms['wmkernels']:.2f}x faster"
            print(f"  {m:10s} {ms[m]:8.2f} ms{ratio}")
        peaks = {m: peak_memory_mb(m, backward) for m in METHODS}
        print("  peak memory above inputs (MiB): " + ", ".join(f"{m} {peaks[m]:.1f}" for m in METHODS))
    print("\nforward by part (incl. layout changes):")
    x = inputs()[0]
    parts = {"spatial": (wmkernels_spatial, lambda x: _genie_spatial(x, _sdpa)),
             "temporal": (wmkernels_temporal, lambda x: _genie_temporal(x, _sdpa))}
    for part, (ours, sdpa) in parts.items():
        ms = timed({"wmkernels": lambda: ours(x), "sdpa": lambda: sdpa(x)}, args.repeats)
        print(f"  {part:8s} wmkernels {ms['wmkernels']:8.2f} ms   sdpa {ms['sdpa']:8.2f} ms   "
              f"ratio {ms['sdpa'] / ms['wmkernels']:.2f}x")
    ms = block_forward_ms(args.repeats)
    print(f"\nwhole ST block forward (attention, projections, MLP): wmkernels {ms['wmkernels STBlock']:.2f} ms   "
          f"GENIE {ms['GENIE block (SDPA)']:.2f} ms   ratio {ms['GENIE block (SDPA)'] / ms['wmkernels STBlock']:.2f}x")
    print("\nattention core (spatial, no layout changes) beside a square matmul, same run:")
    for name, (ms_, gf) in core_gflops(args.repeats).items():
        print(f"  {name:24s} {ms_:8.2f} ms {gf:8.1f} GFLOP/s")


if __name__ == "__main__":
    main()
