"""One benchmark run: data windows -> this rank's shard -> every sampler in a worker -> gathered report."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wmkernels.bench import distributed as wdist
from wmkernels.bench.protocol import SamplerContext
from wmkernels.bench.report import build_report, merge_runs
from wmkernels.bench.worker import SamplerJob, run_inline, run_isolated
from wmkernels.data import TokenDataset, write_synthetic_dataset


@dataclass
class BenchConfig:
    """Every setting of a run (the CLI fills it from a preset and the flags). See `wmk-bench --help`."""

    preset: str
    model_fields: dict
    out: str
    data: str | None = None
    synthetic: dict = field(default_factory=dict)
    checkpoint: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 1
    steps: int = 2
    prompt_frames: int = 8
    new_frames: int = 8
    stride: int = 15
    overlapping: bool = False
    num_windows: int = 4
    warmup: int = 1
    repeats: int = 3
    horizons: list[int] = field(default_factory=list)
    samplers: list[str] = field(default_factory=lambda: ["maskgit", "repeat-last"])
    reference: str | None = "maskgit-uncached"
    timeout_s: float | None = None
    setup_timeout_s: float | None = 600.0
    max_disagreement: float = 0.0
    isolation: str = "process"
    seed: int = 0
    progress: bool = True


def data_directory(config: BenchConfig, info: wdist.DistInfo) -> Path:
    """--data, or a synthetic dataset that rank 0 writes under --out (once; reused if already there)."""
    if config.data is not None:
        return Path(config.data)
    directory = Path(config.out) / f"synthetic-data-seed{config.seed}"
    if info.is_main and not (directory / "metadata.json").is_file():
        write_synthetic_dataset(directory, seed=config.seed, **config.synthetic)
    wdist.barrier(info)
    return directory


def choose_windows(num_available: int, wanted: int) -> list[int]:
    """`wanted` window indices spread evenly over the dataset (so they come from many segments)."""
    if num_available == 0:
        return []
    picks = np.linspace(0, num_available - 1, num=min(wanted, num_available)).round().astype(int)
    return sorted(set(picks.tolist()))


def run_benchmark(config: BenchConfig, info: wdist.DistInfo | None = None) -> dict | None:
    """Run every sampler on this rank's windows; return the report on rank 0 (None elsewhere)."""
    info = info or wdist.DistInfo()
    device = wdist.rank_device(config.device, info)
    directory = data_directory(config, info)
    window_size = config.prompt_frames + config.new_frames
    dataset = TokenDataset(directory, window_size, config.stride, non_overlapping=not config.overlapping)
    meta = dataset.metadata
    window_ids = choose_windows(len(dataset), config.num_windows)
    if not window_ids:
        raise ValueError(f"{directory}: no window of {window_size} frames every {config.stride} raw frames lies "
                         f"within one segment of the {meta.num_images} frames (lower --stride or the frame counts)")
    if len(window_ids) < info.world_size:
        raise ValueError(f"{directory}: {len(window_ids)} windows chosen, fewer than the {info.world_size} ranks "
                         "(raise --num-windows)")
    mine = wdist.shard(window_ids, info)
    batches = [mine[i:i + config.batch_size] for i in range(0, len(mine), config.batch_size)]
    windows = {b: dataset.windows(ids) for b, ids in enumerate(batches)}
    context = SamplerContext(device=device, dtype=config.dtype, vocab_size=meta.vocab_size, frame_size=meta.s,
                             max_frames=int(config.model_fields.get("T", window_size)), steps=config.steps,
                             seed=config.seed, model_fields=dict(config.model_fields), checkpoint=config.checkpoint)

    # The horizon sweep times the first batch only; on rank 0 only, so a run's numbers of calls do not
    # depend on how many ranks it was spread over.
    horizons = list(config.horizons) if info.is_main else []

    def job(spec: str) -> SamplerJob:
        return SamplerJob(name=spec, spec=spec, context=context,
                          prompts=[windows[b][:, :config.prompt_frames].numpy() for b in range(len(batches))],
                          window_ids=batches, new_frames=config.new_frames, horizons=horizons,
                          warmup=config.warmup, repeats=config.repeats, timeout_s=config.timeout_s,
                          setup_timeout_s=config.setup_timeout_s)

    # The reference first (its tokens are what the others are checked against), each spec once.
    specs = list(dict.fromkeys(([config.reference] if config.reference else []) + list(config.samplers)))
    runs = [_run_one(job(spec), config, info) for spec in specs]
    teacher = _teacher_forced(context, windows, batches, config.prompt_frames)

    gathered = wdist.gather_to_main({"runs": runs, "teacher": teacher}, info)
    if not info.is_main:
        return None
    merged = {spec: merge_runs([g["runs"][i] for g in gathered]) for i, spec in enumerate(specs)}
    teachers = [g["teacher"] for g in gathered]
    return build_report(config, info, device, dataset, directory, window_ids, merged, teachers)


def _run_one(job: SamplerJob, config: BenchConfig, info: wdist.DistInfo):
    bar = None
    if config.progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=job.total_calls, desc=f"{job.name} (rank 0 of {info.world_size})", unit="call",
                   leave=False)

    def on_call(label: str) -> None:
        if bar is not None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)

    try:
        runner = run_isolated if config.isolation == "process" else run_inline
        run = runner(job, on_call)
    finally:
        if bar is not None:
            bar.close()
    run.rank = info.rank
    return run


def _teacher_forced(context: SamplerContext, windows: dict, batches: list, prompt_frames: int) -> dict:
    """Per-window teacher-forced sums on this rank, or the reason they cannot be computed."""
    from wmkernels.bench import builtin

    per_window: dict[int, dict] = {}
    try:
        for b, ids in enumerate(batches):
            truth = windows[b].to(context.device)
            with torch.inference_mode():
                rows = builtin.teacher_forced_metrics(context, truth, prompt_frames)
            per_window.update({int(w): row for w, row in zip(ids, rows)})
    except Exception as err:  # noqa: BLE001 - the metrics are reported as missing, the run goes on
        return {"windows": {}, "reason": f"{type(err).__name__}: {err}" if not isinstance(
            err, builtin.ModelUnavailable) else str(err)}
    return {"windows": per_window, "reason": None}
