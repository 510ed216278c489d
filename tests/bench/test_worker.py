"""Samplers in worker processes: a hang is killed at the timeout, a crash is reported, the good one is timed."""
import numpy as np

from wmkernels.bench.worker import run_isolated
from tests.bench.test_protocol import job

S = "tests.bench.submissions"


def test_isolated_good_run_matches_inline_tokens():
    j = job("repeat-last")
    labels = []
    run = run_isolated(j, labels.append)
    assert run.ok, run.failure
    assert len(labels) == j.total_calls and len(run.calls) == 4
    assert all(np.array_equal(run.generated[w], np.repeat(p[i, -1:], 2, axis=0))
               for p, ids in zip(j.prompts, j.window_ids) for i, w in enumerate(ids))
    assert run.peak_rss_mb > 0


def test_hanging_sampler_is_killed_at_the_timeout():
    j = job(f"{S}:Sleeps")
    j.timeout_s = 1.0
    run = run_isolated(j)
    # Not waited out: the sleeper would have returned None (a bad_output failure) after 120 s.
    assert run.failure["kind"] == "timeout"
    assert "warm-up call 1/1" in run.failure["message"] and "--timeout=1s" in run.failure["message"]


def test_crashing_sampler_is_reported():
    run = run_isolated(job(f"{S}:Crashes"))
    assert run.failure["kind"] == "crashed"
    assert "exit code 3" in run.failure["message"] and "warm-up call 1/1" in run.failure["message"]


def test_failures_in_the_worker_carry_their_reason():
    run = run_isolated(job(f"{S}:Raises"))
    assert run.failure["kind"] == "error" and "boom from a submission" in run.failure["message"]
