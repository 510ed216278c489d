"""The benchmark report: merging ranks, the agreement check, and the JSON document (schema wmk-bench/1).

The schema is written down in `schema/wmk-bench-1.schema.json` (JSON Schema 2020-12, every field described);
`load_schema()` returns it and the tests validate every report the CLI writes against it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from wmkernels.bench.timing import percentile, summarize_calls
from wmkernels.bench.worker import SamplerRun

SCHEMA_VERSION = "wmk-bench/1"
_SCHEMA_FILE = "wmk-bench-1.schema.json"


def load_schema() -> dict:
    """The JSON Schema of the report (schema version `SCHEMA_VERSION`)."""
    return json.loads(resources.files("wmkernels.bench").joinpath("schema", _SCHEMA_FILE).read_text())


def merge_runs(runs: list[SamplerRun]) -> SamplerRun:
    """One sampler's runs on every rank (in rank order) as one: calls and tokens pooled, memory the max.

    A failure on any rank fails the sampler; the first failing rank's reason is kept, naming the rank.
    """
    merged = SamplerRun(runs[0].name, runs[0].spec)
    for run in runs:
        if run.failure is not None and merged.failure is None:
            merged.failure = dict(run.failure, rank=run.rank)
        merged.calls.extend(run.calls)
        for horizon, calls in run.horizon_calls.items():
            merged.horizon_calls.setdefault(horizon, []).extend(calls)
        merged.generated.update(run.generated)
    for attr in ("rss_before_mb", "peak_rss_mb", "cuda_max_allocated_mb"):
        values = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
        setattr(merged, attr, max(values) if values else None)
    return merged


def agreement(candidate: SamplerRun, reference: SamplerRun | None, reference_spec: str | None,
              window_ids: list[int]) -> dict:
    """Share of the candidate's generated tokens equal to the reference's, over the windows in `window_ids`."""
    def unchecked(reason: str) -> dict:
        return {"checked": False, "fraction": None, "tokens_compared": 0, "reason": reason}

    if reference is None:
        return unchecked("no reference sampler was given (--reference none)")
    if candidate is reference:
        return unchecked("this is the reference sampler")
    if reference.failure is not None:
        return unchecked(f"the reference sampler {reference_spec!r} failed: {reference.failure['message']}")
    if candidate.failure is not None:
        return unchecked("the sampler failed before its tokens could be compared")
    equal = total = 0
    for w in window_ids:  # in window order, so the sum is the same however the windows were sharded
        ours, theirs = candidate.generated[w], reference.generated[w]
        equal += int(np.count_nonzero(ours == theirs))
        total += ours.size
    return {"checked": True, "fraction": equal / total if total else None, "tokens_compared": total, "reason": None}


def sampler_entry(run: SamplerRun, is_reference: bool, agree: dict, frame_tokens: int) -> dict:
    """The report's entry for one (merged) sampler; failed samplers carry no timing."""
    ok = run.failure is None
    horizons = []
    if ok:
        for horizon in sorted(run.horizon_calls):
            calls = run.horizon_calls[horizon]
            horizons.append({"new_frames": horizon, "calls": len(calls), "seconds_per_frame_median":
                             percentile([c["seconds"] / c["new_frames"] for c in calls], 50)})
    failure = None
    if run.failure is not None:
        failure = {"kind": run.failure["kind"], "message": run.failure["message"], "rank": run.failure.get("rank")}
    return {
        "name": run.name,
        "spec": run.spec,
        "is_reference": is_reference,
        "status": "ok" if ok else "failed",
        "failure": failure,
        "timing": summarize_calls(run.calls, frame_tokens) if ok else None,
        "horizons": horizons,
        "memory": {"peak_rss_mb": run.peak_rss_mb, "rss_before_mb": run.rss_before_mb,
                   "cuda_max_allocated_mb": run.cuda_max_allocated_mb},
        "agreement": agree,
    }


def teacher_forced_summary(teachers: list[dict], window_ids: list[int]) -> dict:
    """Pool the ranks' per-window teacher-forced sums; the first rank's reason if any rank could not."""
    reasons = [t["reason"] for t in teachers if t["reason"]]
    if reasons:
        return {"ce_loss": None, "accuracy": None, "tokens": 0, "reason": reasons[0]}
    rows = {}
    for t in teachers:
        rows.update(t["windows"])
    ce = sum(rows[w]["ce_sum"] for w in window_ids)
    correct = sum(rows[w]["correct"] for w in window_ids)
    tokens = sum(rows[w]["tokens"] for w in window_ids)
    return {"ce_loss": ce / tokens if tokens else None, "accuracy": correct / tokens if tokens else None,
            "tokens": tokens, "reason": None}


def build_report(config, info, device: str, dataset, directory: Path, window_ids: list[int],
                 merged: dict[str, SamplerRun], teachers: list[dict]) -> dict:
    """The report document (see the schema) from the merged per-sampler runs."""
    from wmkernels import __version__
    from wmkernels.bench import builtin

    meta = dataset.metadata
    frame_tokens = meta.s * meta.s
    reference = merged.get(config.reference) if config.reference else None
    entries = []
    for spec, run in merged.items():
        agree = agreement(run, reference, config.reference, window_ids)
        if agree["checked"] and agree["fraction"] is not None and 1.0 - agree["fraction"] > config.max_disagreement:
            run.failure = {"kind": "disagreement", "rank": None, "message": (
                f"{1.0 - agree['fraction']:.4%} of {agree['tokens_compared']} generated tokens differ from the "
                f"reference {config.reference!r} at temperature 0 (--max-disagreement {config.max_disagreement:g})")}
        entries.append(sampler_entry(run, run is reference, agree, frame_tokens))
    available, why = builtin.model_api_available()
    gpu = torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else None
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "wmkernels": __version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "cpu_count": os.cpu_count() or 1, "device": device, "gpu": gpu,
            "world_size": info.world_size, "isolation": config.isolation,
        },
        "settings": {
            "preset": config.preset, "data": str(directory), "synthetic_data": config.data is None,
            "checkpoint": config.checkpoint, "device": config.device, "dtype": config.dtype,
            "batch_size": config.batch_size, "steps": config.steps, "prompt_frames": config.prompt_frames,
            "new_frames": config.new_frames, "stride": config.stride, "overlapping": config.overlapping,
            "num_windows": config.num_windows, "warmup": config.warmup, "repeats": config.repeats,
            "horizons": list(config.horizons), "timeout_s": config.timeout_s,
            "setup_timeout_s": config.setup_timeout_s, "max_disagreement": config.max_disagreement,
            "seed": config.seed, "reference": config.reference, "samplers": list(config.samplers),
        },
        "data": {
            "path": str(directory), "num_frames": meta.num_images, "vocab_size": meta.vocab_size,
            "frame_size": meta.s, "token_dtype": meta.token_dtype, "window_size": dataset.window_size,
            "windows_available": len(dataset), "windows_used": len(window_ids), "window_ids": list(window_ids),
        },
        "model": {"fields": dict(config.model_fields), "weights": "checkpoint" if config.checkpoint else "random",
                  "available": available, "reason": why},
        "teacher_forced": teacher_forced_summary(teachers, window_ids),
        "samplers": entries,
    }


def write_json(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
