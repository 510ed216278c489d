"""Report pieces as pure functions: timing statistics, merging ranks, agreement, teacher-forced pooling, schema."""
import jsonschema
import numpy as np
import pytest

from wmkernels.bench import load_schema
from wmkernels.bench.report import agreement, merge_runs, sampler_entry, teacher_forced_summary
from wmkernels.bench.timing import summarize_calls
from wmkernels.bench.worker import SamplerRun


def test_summarize_calls():
    calls = [{"seconds": s, "batch": b, "new_frames": n} for s, b, n in [(0.8, 2, 4), (0.3, 1, 2), (2.0, 2, 8)]]
    out = summarize_calls(calls, frame_tokens=256)
    per_frame = sorted([0.8 / 4, 0.3 / 2, 2.0 / 8])
    assert out["calls"] == 3
    assert out["seconds_per_frame_median"] == pytest.approx(per_frame[1])
    assert out["seconds_per_frame_p90"] == pytest.approx(per_frame[1] + 0.8 * (per_frame[2] - per_frame[1]))
    frames = 2 * 4 + 1 * 2 + 2 * 8
    assert out["frames_per_second"] == pytest.approx(frames / 3.1)
    assert out["tokens_per_second"] == pytest.approx(256 * frames / 3.1)
    assert summarize_calls([], 256) is None


def fake_run(name, rank, windows, value, failure=None, rss=100.0):
    run = SamplerRun(name, name, rank=rank, rss_before_mb=rss / 2, peak_rss_mb=rss)
    run.calls = [{"seconds": 0.1 * (rank + 1), "batch": 1, "new_frames": 2}]
    run.horizon_calls = {1: [{"seconds": 0.05, "batch": 1, "new_frames": 1}]}
    run.generated = {w: np.full((2, 4, 4), value) for w in windows}
    if failure:
        run.failure = {"kind": failure, "message": f"{failure} on {rank}"}
    return run


def test_merge_runs_pools_ranks():
    merged = merge_runs([fake_run("s", 0, [0, 2], 1, rss=120.0), fake_run("s", 1, [1], 1, rss=90.0)])
    assert merged.ok and sorted(merged.generated) == [0, 1, 2]
    assert len(merged.calls) == 2 and len(merged.horizon_calls[1]) == 2
    assert merged.peak_rss_mb == 120.0 and merged.rss_before_mb == 60.0 and merged.cuda_max_allocated_mb is None


def test_merge_runs_keeps_first_failure_with_rank():
    merged = merge_runs([fake_run("s", 0, [0], 1), fake_run("s", 1, [1], 1, failure="timeout"),
                         fake_run("s", 2, [2], 1, failure="error")])
    assert merged.failure == {"kind": "timeout", "message": "timeout on 1", "rank": 1}


def test_agreement():
    ref = fake_run("ref", 0, [0, 1], 5)
    same = fake_run("a", 0, [0, 1], 5)
    half = fake_run("b", 0, [0, 1], 5)
    half.generated[1] = np.full((2, 4, 4), 6)
    assert agreement(same, ref, "ref", [0, 1]) == {"checked": True, "fraction": 1.0, "tokens_compared": 64,
                                                    "reason": None}
    assert agreement(half, ref, "ref", [0, 1])["fraction"] == 0.5
    assert agreement(ref, ref, "ref", [0, 1])["reason"] == "this is the reference sampler"
    assert "--reference none" in agreement(same, None, None, [0, 1])["reason"]
    broken = fake_run("ref", 0, [], 5, failure="error")
    assert "reference sampler 'ref' failed: error on 0" in agreement(same, broken, "ref", [0, 1])["reason"]
    assert not agreement(fake_run("c", 0, [], 0, failure="error"), ref, "ref", [0, 1])["checked"]


def test_teacher_forced_summary():
    rows = [{"windows": {0: {"ce_sum": 3.0, "correct": 2, "tokens": 4}}, "reason": None},
            {"windows": {1: {"ce_sum": 5.0, "correct": 1, "tokens": 4}}, "reason": None}]
    assert teacher_forced_summary(rows, [0, 1]) == {"ce_loss": 1.0, "accuracy": 3 / 8, "tokens": 8, "reason": None}
    rows[1] = {"windows": {}, "reason": "no model"}
    assert teacher_forced_summary(rows, [0, 1]) == {"ce_loss": None, "accuracy": None, "tokens": 0,
                                                     "reason": "no model"}


def test_schema_is_valid_and_rejects_drift():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    entry = sampler_entry(fake_run("s", 0, [0], 1), False, {"checked": False, "fraction": None,
                                                           "tokens_compared": 0, "reason": "x"}, 256)
    sampler_schema = {**schema["properties"]["samplers"]["items"], "$defs": schema["$defs"]}
    jsonschema.validate(entry, sampler_schema)
    failed = sampler_entry(merge_runs([fake_run("s", 3, [0], 1, failure="crashed")]), False,
                           {"checked": False, "fraction": None, "tokens_compared": 0, "reason": "x"}, 256)
    jsonschema.validate(failed, sampler_schema)
    assert failed["timing"] is None and failed["failure"]["rank"] == 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(entry, status="fine"), sampler_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(entry, extra_field=1), sampler_schema)
