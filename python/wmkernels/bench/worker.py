"""Running one sampler on one rank's prompts, isolated in its own process so it can fail, hang or leak alone.

The worker process loads the sampler, warms it up, times it over a horizon sweep
and over every batch of prompts, checks each output against the protocol, and sends the times and the
generated tokens back. Before each step it tells the parent what it is starting, so the parent enforces
`timeout_s` on every generate call and `setup_timeout_s` on loading, killing the worker when one runs over.
A process of its own also gives each sampler its own peak-RSS figure and CUDA peak.

Workers are forked from a multiprocessing *forkserver* that has imported torch once (never initialising
CUDA), so a worker starts in milliseconds rather than re-importing torch; where forkserver is missing
(Windows) they are spawned.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import traceback
from dataclasses import dataclass, field
from multiprocessing import forkserver
from typing import Callable

import numpy as np
import torch

from wmkernels.bench.protocol import BadOutput, SamplerContext, SamplerLoadError, check_output, load_sampler
from wmkernels.bench.timing import Stopwatch, cuda_peak_mb, current_rss_mb, peak_rss_mb

#: Failure kinds, as reported in the JSON (`samplers[].failure.kind`).
FAILURE_KINDS = ("load", "unavailable", "error", "timeout", "bad_output", "crashed", "disagreement")


@dataclass
class SamplerJob:
    """One sampler on one rank: prompts (batches of (B, T0, H, W) int64) and how to time them."""

    name: str
    spec: str
    context: SamplerContext
    prompts: list[np.ndarray]
    window_ids: list[list[int]]
    new_frames: int
    horizons: list[int]
    warmup: int = 1
    repeats: int = 3
    timeout_s: float | None = None
    setup_timeout_s: float | None = None

    @property
    def total_calls(self) -> int:
        return self.warmup + self.repeats * (len(self.horizons) + len(self.prompts))


@dataclass
class SamplerRun:
    """What one sampler did on one rank. `failure` is None on success, else {"kind", "message"}.

    calls:          the timed calls over all prompt batches, each {"seconds", "batch", "new_frames"}
    horizon_calls:  new_frames -> timed calls on the first batch with that many new frames
    generated:      window id -> (N, H, W) int64, the frames generated in the first timed run
    rank:           the rank that ran it (set by the runner)
    """

    name: str
    spec: str
    failure: dict | None = None
    calls: list[dict] = field(default_factory=list)
    horizon_calls: dict[int, list[dict]] = field(default_factory=dict)
    generated: dict[int, np.ndarray] = field(default_factory=dict)
    rss_before_mb: float | None = None
    peak_rss_mb: float | None = None
    cuda_max_allocated_mb: float | None = None
    rank: int = 0

    @property
    def ok(self) -> bool:
        return self.failure is None

    def fail(self, kind: str, message: str) -> "SamplerRun":
        assert kind in FAILURE_KINDS, kind
        self.failure = {"kind": kind, "message": message}
        return self


def _describe(err: BaseException) -> str:
    """`Type: message`, plus the innermost frame of the traceback, so a report says where it broke."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def execute(job: SamplerJob, announce: Callable[[str, str], None]) -> SamplerRun:
    """Run `job` in this process; `announce(phase, label)` is called before each step ("setup" or "call")."""
    run = SamplerRun(job.name, job.spec)
    ctx = job.context
    device = torch.device(ctx.device)
    announce("setup", f"loading sampler {job.spec!r}")
    try:
        sampler = load_sampler(job.spec, ctx)
    except SamplerLoadError as err:
        return run.fail("load", str(err))
    except Exception as err:  # noqa: BLE001 - a submission's constructor may raise anything
        from wmkernels.bench.builtin import ModelUnavailable

        if isinstance(err, ModelUnavailable):
            return run.fail("unavailable", str(err))
        return run.fail("load", f"could not load {job.spec!r}: {_describe(err)}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run.rss_before_mb = current_rss_mb()
    prompts = [torch.from_numpy(p).to(device) for p in job.prompts]

    def call(prompt: torch.Tensor, new_frames: int, label: str) -> tuple[torch.Tensor, dict]:
        announce("call", label)
        with Stopwatch(device) as watch:
            out = sampler.generate(prompt, new_frames, steps=ctx.steps, temperature=0.0)
        tokens = check_output(out, prompt, new_frames, ctx.vocab_size)
        return tokens, {"seconds": watch.seconds, "batch": int(prompt.shape[0]), "new_frames": new_frames}

    label = "warm-up"
    try:
        for i in range(job.warmup):
            label = f"warm-up call {i + 1}/{job.warmup}"
            call(prompts[0], job.new_frames, label)
        for horizon in job.horizons:
            for r in range(job.repeats):
                label = f"horizon {horizon}, repeat {r + 1}/{job.repeats}"
                run.horizon_calls.setdefault(horizon, []).append(call(prompts[0], horizon, label)[1])
        for b, (prompt, ids) in enumerate(zip(prompts, job.window_ids)):
            for r in range(job.repeats):
                label = f"batch {b + 1}/{len(prompts)}, repeat {r + 1}/{job.repeats}"
                tokens, timing = call(prompt, job.new_frames, label)
                run.calls.append(timing)
                if r == 0:
                    new = tokens[:, prompt.shape[1]:].numpy()
                    run.generated.update({int(w): new[i] for i, w in enumerate(ids)})
    except BadOutput as err:
        return run.fail("bad_output", f"{label}: {err}")
    except Exception as err:  # noqa: BLE001 - any error of a submission is reported, never raised
        return run.fail("error", f"{label}: {_describe(err)}")
    finally:
        run.peak_rss_mb = peak_rss_mb()
        run.cuda_max_allocated_mb = cuda_peak_mb(device)
    return run


def _child_main(conn, job: SamplerJob) -> None:
    try:
        run = execute(job, lambda phase, label: conn.send(("phase", phase, label)))
    except BaseException as err:  # noqa: BLE001 - the harness's own bugs still reach the parent as a reason
        run = SamplerRun(job.name, job.spec).fail("crashed", f"worker error: {_describe(err)}")
    conn.send(("done", run))
    conn.close()


def _mp_context():
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    # The server imports the preload before it ever sees this process's sys.path (Python 3.11 ignores the
    # sys_path it is given), so a wmkernels found through a runtime sys.path change would be shadowed by an
    # installed one in the workers. Start it with this sys.path in PYTHONPATH so both run the same code.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return ctx


def run_isolated(job: SamplerJob, on_call: Callable[[str], None] | None = None) -> SamplerRun:
    """Run `job` in a fresh worker process; kill it if a generate call outlasts `job.timeout_s`
    (or loading outlasts `job.setup_timeout_s`). `on_call(label)` is called as each call starts."""
    mp = _mp_context()
    receiver, sender = mp.Pipe(duplex=False)
    proc = mp.Process(target=_child_main, args=(sender, job), name=f"wmk-bench-{job.name}")
    proc.start()
    sender.close()  # only the child holds the sending end now: its death shows up as EOF
    phase, label = "setup", f"starting a worker for {job.spec!r}"
    try:
        while True:
            limit = job.timeout_s if phase == "call" else job.setup_timeout_s
            if not receiver.poll(limit):
                what = f"generate call ({label})" if phase == "call" else label
                option = "--timeout" if phase == "call" else "--setup-timeout"
                return SamplerRun(job.name, job.spec).fail(
                    "timeout", f"{what} did not finish within {option}={limit:g}s; the worker was killed")
            try:
                message = receiver.recv()
            except EOFError:
                proc.join(10)
                return SamplerRun(job.name, job.spec).fail(
                    "crashed", f"worker process died during {label} (exit code {proc.exitcode})")
            if message[0] == "phase":
                phase, label = message[1], message[2]
                if phase == "call" and on_call is not None:
                    on_call(label)
            elif message[0] == "done":
                proc.join(30)
                return message[1]
    finally:
        receiver.close()
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def run_inline(job: SamplerJob, on_call: Callable[[str], None] | None = None) -> SamplerRun:
    """Run `job` in this process (for debugging a sampler): no timeout is enforced, memory is the harness's."""
    def announce(phase: str, label: str) -> None:
        if phase == "call" and on_call is not None:
            on_call(label)

    return execute(job, announce)
