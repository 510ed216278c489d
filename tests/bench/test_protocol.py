"""The Sampler protocol: loading specs, the output check, the baseline, and in-process failure reporting."""
import numpy as np
import pytest
import torch

from wmkernels.bench import RepeatLastFrame, SamplerContext, check_output, load_sampler
from wmkernels.bench.protocol import BadOutput, Sampler, SamplerLoadError
from wmkernels.bench.worker import SamplerJob, run_inline

CONTEXT = SamplerContext(device="cpu", dtype="float32", vocab_size=2**18, frame_size=16, max_frames=16, steps=2,
                         seed=0)
S = "tests.bench.submissions"


def prompt(b=2, t0=3, seed=0):
    return torch.randint(0, 2**18, (b, t0, 16, 16), generator=torch.Generator().manual_seed(seed))


def test_repeat_last_frame():
    p = prompt()
    before = p.clone()
    out = RepeatLastFrame().generate(p, 4)
    assert out.shape == (2, 7, 16, 16) and out.dtype == torch.int64
    assert torch.equal(out[:, :3], p) and all(torch.equal(out[:, 3 + k], p[:, -1]) for k in range(4))
    assert torch.equal(p, before)
    assert torch.equal(check_output(out, p, 4, 2**18), out)
    with pytest.raises(ValueError, match="prompt must have shape"):
        RepeatLastFrame().generate(p[:, :0], 2)


@pytest.mark.parametrize("spec", ["repeat-last", f"{S}:repeat_last_instance", f"{S}:NeedsContext",
                                  "wmkernels.bench.baselines:RepeatLastFrame"])
def test_load_sampler_forms(spec):
    sampler = load_sampler(spec, CONTEXT)
    assert isinstance(sampler, Sampler)
    p = prompt()
    assert torch.equal(sampler.generate(p, 2, steps=2, temperature=0.0), RepeatLastFrame().generate(p, 2))


@pytest.mark.parametrize("spec,fragment", [
    ("nonsense", "neither a built-in"),
    (":attr", "neither a built-in"),
    ("no_such_module_xyz:Thing", "cannot import module 'no_such_module_xyz'"),
    (f"{S}:Missing", "has no attribute 'Missing'"),
    (f"{S}:not_a_sampler", "neither an object with a generate() method nor a callable"),
    ("builtins:str", "gave a str, which has no generate() method"),
])
def test_load_sampler_errors(spec, fragment):
    with pytest.raises(SamplerLoadError) as info:
        load_sampler(spec, CONTEXT)
    assert fragment in str(info.value)


@pytest.mark.parametrize("make,fragment", [
    (lambda p: [1, 2], "returned a list"),
    (lambda p: p, "returned shape (2, 3, 16, 16), expected (2, 5, 16, 16)"),
    (lambda p: RepeatLastFrame().generate(p, 2).to(torch.int32), "dtype torch.int32, expected torch.int64"),
    (lambda p: RepeatLastFrame().generate(p, 2) + 2**18, "outside the vocabulary"),
    (lambda p: RepeatLastFrame().generate(p, 2) - 2**18, "outside the vocabulary"),
    (lambda p: torch.cat([p.flip(0), p[:, :2]], 1), "changed the prompt frames"),
])
def test_check_output_rejects(make, fragment):
    p = prompt()
    with pytest.raises(BadOutput) as info:
        check_output(make(p), p, 2, 2**18)
    assert fragment in str(info.value)


def job(spec, windows=3, batch=2, horizons=(1, 2)):
    rng = np.random.default_rng(0)
    ids = list(range(windows))
    batches = [ids[i:i + batch] for i in range(0, windows, batch)]
    prompts = [rng.integers(0, 2**18, size=(len(b), 3, 16, 16)) for b in batches]
    return SamplerJob(name=spec, spec=spec, context=CONTEXT, prompts=prompts, window_ids=batches, new_frames=2,
                      horizons=list(horizons), warmup=1, repeats=2)


def test_inline_run_of_good_sampler():
    j = job("repeat-last")
    labels = []
    run = run_inline(j, labels.append)
    assert run.ok and len(labels) == j.total_calls == 1 + 2 * (2 + 2)
    assert len(run.calls) == 4 and {c["batch"] for c in run.calls} == {2, 1}
    assert sorted(run.horizon_calls) == [1, 2] and all(len(v) == 2 for v in run.horizon_calls.values())
    assert sorted(run.generated) == [0, 1, 2]
    assert np.array_equal(run.generated[2], np.repeat(j.prompts[1][0, -1:], 2, axis=0))
    assert run.peak_rss_mb > 0 and run.rss_before_mb > 0 and run.cuda_max_allocated_mb is None


@pytest.mark.parametrize("name,kind,fragment", [
    ("Raises", "error", "RuntimeError: boom from a submission"),
    ("RaisesInInit", "load", "OSError: cannot open my weights"),
    ("WrongShape", "bad_output", "returned shape (2, 2, 16, 16), expected (2, 5, 16, 16)"),
    ("WrongDtype", "bad_output", "torch.int32"),
    ("ChangesPrompt", "bad_output", "changed the prompt"),
    ("not_a_sampler", "load", "neither an object"),
])
def test_inline_failures_are_reported(name, kind, fragment):
    run = run_inline(job(f"{S}:{name}"))
    assert not run.ok and run.failure["kind"] == kind
    assert fragment in run.failure["message"]
    if kind in ("error", "bad_output"):
        assert run.failure["message"].startswith("warm-up call 1/1")  # says which call broke


def test_model_samplers_report_unavailable_without_the_model():
    from wmkernels.bench import builtin

    available, reason = builtin.model_api_available()
    if available:
        pytest.skip("the model API is installed; tests/bench/test_builtin.py covers the model samplers")
    run = run_inline(job("maskgit"))
    assert run.failure["kind"] == "unavailable" and run.failure["message"] == reason
    assert "wmkernels.models" in reason
