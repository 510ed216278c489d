"""The model-facing part of the benchmark (wmkernels.bench.builtin).

The checkpoint reader needs no model and runs everywhere. The rest needs issue 5's `wmkernels.models` and
`wmkernels.sampling`; those tests skip, saying so, until that branch is merged, then run unchanged.
"""
import json

import pytest
import torch

from wmkernels.bench import builtin
from wmkernels.bench.presets import PRESETS
from wmkernels.bench.protocol import SamplerContext


def test_read_checkpoint_fields(tmp_path):
    config = dict(PRESETS["genie-35m"].model)
    del config["factored_vocab_size"]  # GENIE's config.json may leave it to be derived
    config.update(max_corrupt_rate=0.2, non_mlm_ratio=0.5)  # training-only keys are dropped
    (tmp_path / "config.json").write_text(json.dumps(config))
    fields = builtin.read_checkpoint_fields(tmp_path)
    assert fields == PRESETS["genie-35m"].model


@pytest.mark.parametrize("content,error,fragment", [
    (None, FileNotFoundError, "missing file"),
    ("{oops", ValueError, "not valid JSON"),
    ("[]", ValueError, "expected a JSON object"),
    ('{"num_layers": 2}', ValueError, "missing required GENIE config keys ['num_heads', 'd_model']"),
])
def test_read_checkpoint_fields_errors(tmp_path, content, error, fragment):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(error) as info:
        builtin.read_checkpoint_fields(tmp_path)
    assert fragment in str(info.value) and "config.json" in str(info.value)


def needs_model():
    available, reason = builtin.model_api_available()
    if not available:
        pytest.skip(f"needs issue 5's model API, not merged yet: {reason}")


def tiny_context(**changes):
    fields = dict(PRESETS["tiny"].model)
    args = dict(device="cpu", dtype="float32", vocab_size=2**18, frame_size=16, max_frames=16, steps=2, seed=0,
                model_fields=fields)
    args.update(changes)
    return SamplerContext(**args)


def test_build_model_is_the_same_in_every_process():
    needs_model()
    ctx = tiny_context()
    a = builtin.build_model(ctx.model_fields, None, "cpu", torch.float32, seed=3)
    b = builtin.build_model(ctx.model_fields, None, "cpu", torch.float32, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert builtin.cached_model(ctx) is builtin.cached_model(ctx)


def test_cached_and_uncached_maskgit_agree_at_temperature_zero():
    needs_model()
    ctx = tiny_context()
    prompt = torch.randint(0, 2**18, (1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    cached = builtin.MaskGITSampler(ctx, use_cache=True).generate(prompt, 2, steps=2, temperature=0.0)
    uncached = builtin.MaskGITSampler(ctx, use_cache=False).generate(prompt, 2, steps=2, temperature=0.0)
    assert cached.shape == (1, 5, 16, 16) and cached.dtype == torch.int64
    assert torch.equal(cached, uncached)


def test_teacher_forced_metrics_rows():
    needs_model()
    ctx = tiny_context()
    windows = torch.randint(0, 2**18, (2, 5, 16, 16), generator=torch.Generator().manual_seed(1))
    rows = builtin.teacher_forced_metrics(ctx, windows, prompt_frames=3)
    assert len(rows) == 2
    for row in rows:
        assert row["tokens"] == 2 * 256 and 0 <= row["correct"] <= row["tokens"] and row["ce_sum"] > 0
    # The same numbers from GENIE's uncached full forward: frame t masked, the true frames before it.
    from wmkernels.sampling import factorized_argmax, factorized_cross_entropy

    model = ctx.model()
    cfg = model.config
    for b, row in enumerate(rows):
        ce_sum, correct = 0.0, 0
        for t in (3, 4):
            tokens = windows[b:b + 1, :t + 1].clone()
            tokens[:, t] = cfg.mask_token_id
            with torch.no_grad():
                logits = model.compute_logits(tokens)[:, :, t:t + 1]
            target = windows[b:b + 1, t:t + 1]
            ce_sum += float(factorized_cross_entropy(logits, target)) * 256
            correct += int((factorized_argmax(logits) == target).sum())
        assert row["correct"] == correct
        assert abs(row["ce_sum"] - ce_sum) <= 1e-4 * ce_sum


def test_tiny_preset_end_to_end_with_the_model(tmp_path):
    needs_model()
    from wmkernels.bench.cli import main

    out = tmp_path / "out"
    assert main(["--preset", "tiny", "--num-windows", "2", "--repeats", "1", "--prompt-frames", "3",
                 "--new-frames", "2", "--horizons", "1,2", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    by_name = {s["name"]: s for s in report["samplers"]}
    assert by_name["maskgit-uncached"]["status"] == "ok" and by_name["maskgit-uncached"]["is_reference"]
    assert by_name["maskgit"]["status"] == "ok" and by_name["maskgit"]["agreement"]["fraction"] == 1.0
    assert report["teacher_forced"]["ce_loss"] is not None and report["model"]["available"]
