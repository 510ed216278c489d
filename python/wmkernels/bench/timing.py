"""Timing statistics and memory probes for the sampler runs."""
from __future__ import annotations

import resource
import sys
import time

import numpy as np
import torch


def percentile(values, q: float) -> float | None:
    """The q-th percentile (linear interpolation) of `values`, or None when there are none."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def summarize_calls(calls: list[dict], frame_tokens: int) -> dict | None:
    """Throughput of timed generate calls; each call is {"seconds", "batch", "new_frames"}.

    seconds_per_frame: a call's wall time divided by its new frames, i.e. the time to extend a batch by one
    frame (median and p90 over calls). frames_per_second: every generated frame of every sequence in the
    batch, over the total time; tokens_per_second: the same times frame_tokens (H * W).
    """
    if not calls:
        return None
    per_frame = [c["seconds"] / c["new_frames"] for c in calls]
    total_s = sum(c["seconds"] for c in calls)
    frames = sum(c["batch"] * c["new_frames"] for c in calls)
    fps = frames / total_s if total_s > 0 else None
    return {
        "calls": len(calls),
        "seconds_per_frame_median": percentile(per_frame, 50),
        "seconds_per_frame_p90": percentile(per_frame, 90),
        "call_seconds_median": percentile([c["seconds"] for c in calls], 50),
        "frames_per_second": fps,
        "tokens_per_second": fps * frame_tokens if fps is not None else None,
    }


class Stopwatch:
    """Wall time of a block, synchronizing CUDA first and last so queued kernels are counted."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda and exc[0] is None:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._start
        return False


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (psutil)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started, in MiB (getrusage; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def cuda_peak_mb(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated on `device` in MiB, or None off the GPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
