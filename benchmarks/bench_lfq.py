"""lfq_entropy_loss at 18 bits: the streaming O(2^bits) kernel against the full-enumeration reference.

    .venv/bin/python benchmarks/bench_lfq.py [--n 4096] [--bits 18] [--reference-n 64 256] [--repeats 5]

Each measurement runs in a fresh subprocess, so its peak memory is the rise of the process's peak resident
set (ru_maxrss) over its level once x is built: it counts every allocation of the call (logits, softmax,
autograd buffers), not only torch's. Times are medians of --repeats calls after one warm-up call. The
reference builds N x 2^bits logits and probabilities (4 GiB each in float32 at N = 4096, 18 bits), too much
for this machine, so it runs at smaller N; its time and memory grow linearly in N, and the table
extrapolates them to N = --n along the line through its smallest and largest N (marked "extrap.").
The machine is shared: compare ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _worker(impl: str, n: int, bits: int, repeats: int, backward: bool) -> dict:
    import torch

    import wmkernels
    from wmkernels import reference

    torch.manual_seed(0)
    x = (torch.randn(n, bits) * 0.05).requires_grad_(backward)
    fn = reference.lfq_entropy_loss if impl == "reference" else wmkernels.lfq_entropy_loss
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        loss = fn(x, 100.0, 1.0)
        if backward:
            loss.backward()
            x.grad = None
        if i:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return {"impl": impl, "n": n, "bits": bits, "backward": backward, "median_s": statistics.median(times),
            "peak_mib": peak / 1024, "loss": float(loss)}


def _measure(impl, n, bits, repeats, backward) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", impl, str(n), str(bits), str(repeats),
                          str(int(backward))], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--bits", type=int, default=18)
    parser.add_argument("--reference-n", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, n, bits, repeats, backward = args.worker
        print(json.dumps(_worker(impl, int(n), int(bits), int(repeats), bool(int(backward)))))
        return

    import torch

    print(f"lfq_entropy_loss, {args.bits} bits, float32, CPU ({torch.get_num_threads()} threads; shared machine)")
    print(f"N x 2^bits float32 = {args.n * 2**args.bits * 4 / 2**30:.2f} GiB at N = {args.n}\n")
    header = f"{'implementation':<24}{'N':>7}{'pass':>10}{'median ms':>12}{'peak MiB':>11}{'loss':>12}"
    print(header)
    print("-" * len(header))
    for backward in (False, True):
        kind = "fwd+bwd" if backward else "fwd"
        ours = _measure("wmkernels", args.n, args.bits, args.repeats, backward)
        print(f"{'wmkernels (streaming)':<24}{args.n:>7}{kind:>10}{ours['median_s'] * 1e3:>12.1f}"
              f"{ours['peak_mib']:>11.1f}{ours['loss']:>12.5f}")
        refs = [_measure("reference", n, args.bits, max(1, args.repeats // 2), backward) for n in args.reference_n]
        for ref in refs:
            print(f"{'reference (enumeration)':<24}{ref['n']:>7}{kind:>10}{ref['median_s'] * 1e3:>12.1f}"
                  f"{ref['peak_mib']:>11.1f}{ref['loss']:>12.5f}")
        # Linear in N: a straight line through the smallest and largest reference runs (one run: through 0).
        small, big = (refs[0], refs[-1]) if len(refs) > 1 else ({"n": 0, "median_s": 0.0, "peak_mib": 0.0}, refs[0])

        def extrapolate(key):
            slope = (big[key] - small[key]) / (big["n"] - small["n"])
            return big[key] + slope * (args.n - big["n"])

        t, m = extrapolate("median_s"), extrapolate("peak_mib")
        print(f"{'reference (extrap.)':<24}{args.n:>7}{kind:>10}{t * 1e3:>12.1f}{m:>11.1f}{'':>12}")
        memory_ratio = m / max(ours["peak_mib"], 1e-3)
        print(f"  -> {kind}: wmkernels is {t / ours['median_s']:.1f}x faster and needs {memory_ratio:.0f}x"
              f" less peak memory than the reference extrapolated to N = {args.n}\n")


if __name__ == "__main__":
    main()
