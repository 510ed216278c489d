"""vq_encode against the PyTorch compositions it replaces, on the issue-3 problem (CPU, fp32).

    .venv/bin/python benchmarks/bench_vq.py [--n 65536 --d 64 --k 8192 --repeats 5]

Each method runs in a fresh subprocess (same inputs, same seed), which reports the median time of
`--repeats` runs and its peak resident memory above what the inputs already took (ru_maxrss), so the
N x K matrices the compositions build show up. torch.mm of two 2048 x 2048 fp32 matrices gives this
machine's practical fp32 GFLOP/s in the same run. Prints a table of times, ratios, GFLOP/s, memory.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

METHODS = {
    "wmkernels.vq_encode": "Fused distance + argmin (this package)",
    "addmm+argmin": "torch.addmm(|c|^2, x, c.T, alpha=-2).argmin(1), whole N x K",
    "addmm+argmin chunk 1024": "the same in chunks of 1024 rows (the N x K block fits L3)",
    "addmm+argmin chunk 8192": "the same in chunks of 8192 rows",
    "cdist+argmin": "torch.cdist(x, c).argmin(1)",
    "VectorQuantize eval": "vector-quantize-pytorch VectorQuantize(...).eval()(x)",
    "torch.mm 2048^2": "roofline: torch.mm of two 2048 x 2048 matrices",
}

_CHILD = r'''
import json, resource, statistics, sys, time
import torch
method, n, d, k, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
g = torch.Generator().manual_seed(0)
x, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
a, b = torch.randn(2048, 2048, generator=g), torch.randn(2048, 2048, generator=g)
if method == "wmkernels.vq_encode":
    import wmkernels
    fn = lambda: wmkernels.vq_encode(x, c)[0]
elif method == "addmm+argmin":
    fn = lambda: torch.addmm(c.square().sum(1), x, c.T, alpha=-2).argmin(1)
elif method.startswith("addmm+argmin chunk "):
    rows = int(method.split()[-1])
    def fn():
        c2 = c.square().sum(1)
        return torch.cat([torch.addmm(c2, x[i:i + rows], c.T, alpha=-2).argmin(1) for i in range(0, n, rows)])
elif method == "cdist+argmin":
    fn = lambda: torch.cdist(x, c).argmin(1)
elif method == "VectorQuantize eval":
    from vector_quantize_pytorch import VectorQuantize
    vq = VectorQuantize(dim=d, codebook_size=k).eval()
    with torch.no_grad():
        vq._codebook.embed.copy_(c[None])
    def fn():
        with torch.no_grad():
            return vq(x[None])[1][0]
elif method == "torch.mm 2048^2":
    fn = lambda: torch.mm(a, b)
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
before = rss_kib()
out = fn()  # the first call also measures the peak memory
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
times = []
for _ in range(repeats):
    t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
result = {"time": statistics.median(times), "peak_mib": max(peak, 0) / 1024}
if method != "torch.mm 2048^2":
    result["indices"] = out[:4096].tolist()
print(json.dumps(result))
'''


def run(method: str, args) -> dict:
    cmd = [sys.executable, "-c", _CHILD, method, str(args.n), str(args.d), str(args.k), str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()

    import torch

    import wmkernels

    print(f"N={args.n} D={args.d} K={args.k} fp32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; each method in its own process")
    results = {m: run(m, args) for m in args.methods}
    flops = 2.0 * args.n * args.d * args.k
    ours = results.get("wmkernels.vq_encode", {})
    mm = results.get("torch.mm 2048^2", {})
    mm_gflops = 2.0 * 2048**3 / mm["time"] / 1e9 if "time" in mm else None
    print(f"{'method':24} {'time s':>9} {'ours x faster':>14} {'GFLOP/s':>9} {'% of mm':>8} {'peak MiB':>9} "
          f"{'ours/theirs mem':>15} {'same idx':>8}")
    for method, r in results.items():
        if "error" in r:
            print(f"{method:24} failed: {r['error']}")
            continue
        is_mm = method == "torch.mm 2048^2"
        gflops = (2.0 * 2048**3 if is_mm else flops) / r["time"] / 1e9
        speedup = r["time"] / ours["time"] if "time" in ours else float("nan")
        pct = 100 * gflops / mm_gflops if mm_gflops else float("nan")
        mem_ratio = ours["peak_mib"] / r["peak_mib"] if "peak_mib" in ours and r["peak_mib"] > 0 else float("nan")
        same = "-" if is_mm or "indices" not in ours else ("yes" if r["indices"] == ours["indices"] else "NO")
        print(f"{method:24} {r['time']:9.3f} {speedup:14.2f} {gflops:9.1f} {pct:7.0f}% {r['peak_mib']:9.1f} "
              f"{mem_ratio:15.4f} {same:>8}")


if __name__ == "__main__":
    main()
