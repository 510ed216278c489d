"""`wmk-bench` / `python -m wmkernels.bench`: time samplers against the reference on 1X-format data.

Scale out with `torchrun --nproc_per_node=N -m wmkernels.bench ...`: the windows are sharded over the ranks
and rank 0 writes the report. Outputs go to --out: report.json (schema wmk-bench/1), report.md and
time_per_frame.png; the table is printed. The exit status is 0 when the harness ran, even if samplers
failed (their failures are in the report); 2 for bad arguments or data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from wmkernels.bench import distributed as wdist
from wmkernels.bench.output import markdown_table, plot_horizons, terminal_table
from wmkernels.bench.presets import PRESETS
from wmkernels.bench.protocol import BUILTIN_SAMPLERS
from wmkernels.bench.report import write_json
from wmkernels.bench.runner import BenchConfig, run_benchmark

_MODEL_SAMPLERS = ("maskgit", "maskgit-uncached")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _seconds(text: str) -> float | None:
    if text.lower() in ("none", "0", "inf"):
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (or 'none'), got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def _horizons(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"horizons must be >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    samplers = "; ".join(f"{name}: {desc}" for name, (_, desc) in BUILTIN_SAMPLERS.items())
    p = argparse.ArgumentParser(prog="wmk-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("--data", help="1X-format directory (video.bin, segment_ids.bin, metadata.json); "
                                  "default: synthetic data written under --out")
    p.add_argument("--checkpoint", help="local GENIE checkpoint directory (config.json + weights), or 'none' for "
                                        "random weights from --seed; default: the preset's (tiny: the trained "
                                        "model shipped with the package; others: none)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--batch-size", type=_positive_int, help="prompts per generate call")
    p.add_argument("--steps", type=_positive_int, help="MaskGIT steps per frame")
    p.add_argument("--prompt-frames", type=_positive_int, help="frames given to the sampler")
    p.add_argument("--new-frames", type=_positive_int, help="frames it generates (windows hold prompt + new)")
    p.add_argument("--stride", type=_positive_int, default=15, help="raw frames between a window's frames")
    p.add_argument("--overlapping", action="store_true", help="use every valid window, not only disjoint ones")
    p.add_argument("--num-windows", type=_positive_int, help="data windows to sample from (spread over the data)")
    p.add_argument("--warmup", type=int, help="untimed generate calls before timing")
    p.add_argument("--repeats", type=_positive_int, help="timed calls per batch and per horizon")
    p.add_argument("--horizons", type=_horizons, help="new-frame counts for the time-per-frame plot, e.g. 1,2,4,8")
    p.add_argument("--sampler", action="append", dest="samplers", metavar="NAME|module:attribute",
                   help=f"sampler to time; repeat for several (default: maskgit, repeat-last). Built-in: {samplers}")
    p.add_argument("--reference", default="maskgit-uncached",
                   help="sampler whose temperature-0 tokens the others must match, or 'none'")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="limit on each generate call, warm-up calls (and any compilation in them) included; "
                        "the sampler's worker is killed past it (default: none)")
    p.add_argument("--setup-timeout", type=_seconds, default=600.0, metavar="SECONDS",
                   help="limit on loading a sampler (default: 600)")
    p.add_argument("--max-disagreement", type=_fraction, default=0.0,
                   help="largest share of generated tokens that may differ from the reference (default: 0)")
    p.add_argument("--isolation", choices=["process", "inline"], default="process",
                   help="process (default): each sampler in its own worker, timeouts enforced; "
                        "inline: in this process, for debugging, no timeout")
    p.add_argument("--seed", type=int, default=0, help="random weights, synthetic data and unmasking order")
    p.add_argument("--out", default=None, help="output directory (default: out/bench-<preset>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Fill the preset's defaults in for every flag not given."""
    preset = PRESETS[args.preset]
    pick = lambda value, default: default if value is None else value  # noqa: E731
    model_fields = dict(preset.model)
    checkpoint = preset.checkpoint if args.checkpoint is None else args.checkpoint
    if checkpoint is not None and checkpoint.lower() == "none":
        checkpoint = None
    if checkpoint:
        from wmkernels.bench.builtin import read_checkpoint_fields

        model_fields = read_checkpoint_fields(checkpoint)
    new_frames = pick(args.new_frames, preset.new_frames)
    horizons = pick(args.horizons, [h for h in preset.horizons if h < new_frames] + [new_frames])
    warmup = pick(args.warmup, preset.warmup)
    if warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {warmup}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: torch sees no CUDA GPU here (torch {torch.__version__})")
    reference = None if args.reference.lower() == "none" else args.reference
    return BenchConfig(
        preset=args.preset, model_fields=model_fields, out=args.out or f"out/bench-{args.preset}", data=args.data,
        synthetic=dict(preset.synthetic), checkpoint=checkpoint, device=args.device, dtype=args.dtype,
        batch_size=pick(args.batch_size, preset.batch_size), steps=pick(args.steps, preset.steps),
        prompt_frames=pick(args.prompt_frames, preset.prompt_frames), new_frames=new_frames, stride=args.stride,
        overlapping=args.overlapping, num_windows=pick(args.num_windows, preset.num_windows), warmup=warmup,
        repeats=pick(args.repeats, preset.repeats), horizons=horizons,
        samplers=args.samplers or ["maskgit", "repeat-last"], reference=reference, timeout_s=args.timeout,
        setup_timeout_s=args.setup_timeout, max_disagreement=args.max_disagreement, isolation=args.isolation,
        seed=args.seed, progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"wmk-bench: error: {err}", file=sys.stderr)
        return 2
    info = wdist.init_from_env(config.device)
    try:
        report = run_benchmark(config, info)
    except ValueError as err:  # bad data or settings (TokenDataError is a ValueError): say it, no traceback
        print(f"wmk-bench: error (rank {info.rank}): {err}", file=sys.stderr)
        return 2
    finally:
        wdist.shutdown(info)
    if report is None:  # not rank 0
        return 0
    out = Path(config.out)
    json_path = write_json(report, out / "report.json")
    md_path = out / "report.md"
    md_path.write_text(markdown_table(report))
    png_path = plot_horizons(report, out / "time_per_frame.png")
    print(terminal_table(report))
    print(f"\nreport: {json_path}\nmarkdown: {md_path}\nplot: {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
