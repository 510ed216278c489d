"""The KV-cached MaskGIT sampler gives exactly the tokens of both uncached reference samplers."""
import itertools

import pytest
import torch

from tests.models.helpers import tiny_model
from wmkernels.reference.genie import GenieSTMaskGIT
from wmkernels.reference.maskgit import genie_maskgit_generate
from wmkernels.sampling import GenerationResult, maskgit_generate

T_MAX = 10  # tiny_model's T


def _prompt(batch, frames, model, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    return torch.randint(0, cfg.image_vocab_size, (batch, frames, cfg.H, cfg.W), generator=g)


def _run_all(model, prompt, new, steps, temperature=0.0, mode="random", seed=7, stride=1):
    """Cached, GENIE-uncached and truncated-uncached runs, each with its own generator seeded alike."""
    gens = [torch.Generator().manual_seed(seed) for _ in range(3)]
    cached = maskgit_generate(model, prompt, new, steps, temperature, mode, gens[0], progress=False,
                              window_stride=stride)
    genie = maskgit_generate(model, prompt, new, steps, temperature, mode, gens[1], use_cache=False, progress=False,
                             window_stride=stride)
    truncated = genie_maskgit_generate(model, prompt, new, steps, temperature, mode, gens[2], stride, truncated=True)
    return cached, genie, GenerationResult(*truncated)


def _assert_logits_close(got, want, rel=1e-5):
    # Relative to the logits' scale: the random models' logits reach the hundreds.
    assert got.shape == want.shape
    assert (got.double() - want.double()).abs().max() <= rel * want.abs().max()


# batch 1 and 3; prompt lengths 1, 4, 8; steps 1, 2, 4; qk_norm on and off. 8 + 5 frames > T_MAX: the window slides.
GRID = list(itertools.product([1, 3], [1, 4, 8], [1, 2, 4], [True, False]))


def _assert_logits_rule(got, ref64, refs32):
    """DESIGN.md's rule: at most 2x as far from the float64 logits as the uncached float32 samplers' logits are,
    plus 16 float32 roundings at the logits' scale. (Without qk_norm the random models amplify rounding: the
    uncached float32 logits themselves sit up to ~1e-4 of the scale away from float64.)"""
    assert got.shape == ref64.shape
    ref_err = max((r.double() - ref64).abs().max().item() for r in refs32)
    rounding = 16 * torch.finfo(torch.float32).eps * ref64.abs().max().item()
    err = (got.double() - ref64).abs().max().item()
    assert err <= 2 * ref_err + rounding, f"logits error {err:.3g} > 2 x the float32 references' {ref_err:.3g}"


@pytest.mark.parametrize("batch, prompt_len, steps, qk_norm", GRID)
def test_greedy_tokens_equal_both_references(batch, prompt_len, steps, qk_norm):
    model = tiny_model(seed=prompt_len + steps, qk_norm=qk_norm)
    prompt = _prompt(batch, prompt_len, model, seed=steps)
    new = 5 if prompt_len == 8 else 4
    cached, genie, truncated = _run_all(model, prompt, new, steps)
    assert cached.tokens.shape == (batch, prompt_len + new, 4, 4) and cached.tokens.dtype == torch.int64
    assert torch.equal(cached.tokens[:, :prompt_len], prompt)
    assert torch.equal(cached.tokens, genie.tokens)
    assert torch.equal(cached.tokens, truncated.tokens)
    assert cached.first_step_logits.shape == (batch, 2 * 16, new, 4, 4)
    # The same weights in float64 sample the same frames, so their first-step logits are the yardstick.
    model64 = tiny_model(seed=prompt_len + steps, qk_norm=qk_norm, dtype=torch.float64)
    genie64 = maskgit_generate(model64, prompt, new, steps, 0.0, "random", torch.Generator().manual_seed(7),
                               use_cache=False, progress=False)
    assert torch.equal(genie64.tokens, genie.tokens)
    _assert_logits_rule(cached.first_step_logits, genie64.first_step_logits,
                        [genie.first_step_logits, truncated.first_step_logits])


@pytest.mark.parametrize("temperature, mode", [(1.0, "random"), (0.7, "greedy"), (2.5, "random"), (0.0, "greedy")])
@pytest.mark.parametrize("batch", [1, 3])
def test_seeded_sampling_equal_both_references(temperature, mode, batch):
    model = tiny_model(seed=11)
    prompt = _prompt(batch, 3, model)
    cached, genie, truncated = _run_all(model, prompt, 9, 2, temperature, mode)  # 3 + 9 > T_MAX
    assert torch.equal(cached.tokens, genie.tokens)
    assert torch.equal(cached.tokens, truncated.tokens)


def test_temperature_changes_the_samples():
    # The public baseline's temperature has no effect; ours divides the logits.
    model = tiny_model(seed=5)
    prompt = _prompt(2, 2, model)
    runs = [maskgit_generate(model, prompt, 3, 2, t, generator=torch.Generator().manual_seed(0), progress=False)
            for t in (0.0, 1.0, 50.0)]
    assert not torch.equal(runs[0].tokens, runs[1].tokens)
    assert not torch.equal(runs[1].tokens, runs[2].tokens)


@pytest.mark.parametrize("stride", [1, 3, 9])
def test_sliding_window_long_rollout(stride):
    model = tiny_model(seed=2, qk_norm=False)
    prompt = _prompt(2, 4, model)
    cached, genie, truncated = _run_all(model, prompt, 2 * T_MAX, 2, temperature=0.8, stride=stride)
    assert cached.tokens.shape[1] == 4 + 2 * T_MAX
    assert torch.equal(cached.tokens, genie.tokens)
    assert torch.equal(cached.tokens, truncated.tokens)


def test_first_step_logits_are_teacher_forced_logits():
    # A frame's first step sees its context and a fully masked frame: compute_logits of exactly that.
    model = tiny_model(seed=9)
    prompt = _prompt(2, 3, model)
    out = maskgit_generate(model, prompt, 4, steps=2, progress=False)
    for i in range(4):
        t = 3 + i
        masked = out.tokens[:, : t + 1].clone()
        masked[:, t] = model.mask_token_id
        with torch.no_grad():
            want = model.compute_logits(masked)[:, :, t]
        _assert_logits_close(out.first_step_logits[:, :, i], want)


def test_matches_reference_genie_model_float64():
    # The pure-PyTorch GENIE (SDPA attention, GENIE's permutes) with the same weights samples the same frames.
    model = tiny_model(seed=4, dtype=torch.float64)
    ref = GenieSTMaskGIT(model.config.to_dict()).double().eval()
    ref.load_state_dict(model.state_dict())
    prompt = _prompt(3, 4, model)
    ours = maskgit_generate(model, prompt, 8, steps=2, temperature=1.0, generator=torch.Generator().manual_seed(3),
                            progress=False)
    tokens, logits = genie_maskgit_generate(ref, prompt, 8, 2, 1.0, "random", torch.Generator().manual_seed(3))
    assert torch.equal(ours.tokens, tokens)
    _assert_logits_close(ours.first_step_logits, logits, rel=1e-12)


def test_a_run_builds_the_fused_op_args_once(monkeypatch):
    # The cached sampler's passes reuse the fused decode op's arguments within a run (STTransformer.reuse_decode_args)
    # and rebuild them at the next run.
    from wmkernels.nn import STTransformer

    model = tiny_model()
    prompt = _prompt(1, 3, model)
    builds = []
    build = STTransformer._build_decode_op_args
    monkeypatch.setattr(STTransformer, "_build_decode_op_args", lambda self, x: builds.append(1) or build(self, x))
    for run in (1, 2):
        out = maskgit_generate(model, prompt, 3, steps=2, unmask_mode="greedy", progress=False)
        assert len(builds) == run  # 6 passes, one build
    ref = genie_maskgit_generate(model, prompt, 3, 2, 0.0, "greedy", None)[0]
    assert torch.equal(out.tokens, ref)
    assert model.decoder._decode_args_memo is None


def test_inputs_are_not_modified_and_zero_new_frames():
    model = tiny_model()
    prompt = _prompt(1, 2, model)
    before = prompt.clone()
    out = maskgit_generate(model, prompt, 0, progress=False)
    assert torch.equal(prompt, before) and torch.equal(out.tokens, prompt)
    assert out.first_step_logits.shape == (1, 32, 0, 4, 4)
    maskgit_generate(model, prompt.int(), 2, progress=False)
    assert torch.equal(prompt, before)


def test_bad_arguments_raise():
    model = tiny_model()
    ok = _prompt(1, 2, model)
    with pytest.raises(ValueError, match="outside"):
        maskgit_generate(model, torch.full_like(ok, model.config.image_vocab_size), 1, progress=False)
    with pytest.raises(ValueError, match="outside"):
        maskgit_generate(model, torch.full_like(ok, -3), 1, progress=False)
    with pytest.raises(ValueError, match="more than the model's T"):
        maskgit_generate(model, _prompt(1, T_MAX + 1, model), 1, progress=False)
    with pytest.raises(ValueError, match="shape"):
        maskgit_generate(model, torch.zeros(1, 2, 5, 5, dtype=torch.long), 1, progress=False)
    with pytest.raises(ValueError, match="shape"):
        maskgit_generate(model, torch.zeros(1, 2, 16, dtype=torch.long), 1, progress=False)
    with pytest.raises(TypeError, match="int32 or int64"):
        maskgit_generate(model, ok.float(), 1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        maskgit_generate(model, ok, 1, steps=0, progress=False)
    with pytest.raises(ValueError, match="unmask_mode"):
        maskgit_generate(model, ok, 1, unmask_mode="confident", progress=False)
    with pytest.raises(ValueError, match="temperature"):
        maskgit_generate(model, ok, 1, temperature=-1.0, progress=False)
    with pytest.raises(ValueError, match="window_stride"):
        maskgit_generate(model, ok, T_MAX, window_stride=T_MAX, progress=False)


@pytest.mark.parametrize("with_commit", [False, True])
def test_cached_step_compiles_fullgraph(with_commit):
    # The per-step path (one-frame forward against the cache, then the schedule update) has no host
    # synchronisation and no graph break, nor has the first step of a frame, which also commits the finished frame
    # before it in the same pass. aot_eager traces it fully (what fullgraph checks) without inductor's compile time;
    # the STBlock test covers inductor.
    from wmkernels.sampling import maskgit_update, sample_digits

    model = tiny_model(seed=6)
    cfg = model.config
    prompt = _prompt(2, 4, model).reshape(2, 4, cfg.S)
    cached, finished = (prompt[:, :3], prompt[:, 3]) if with_commit else (prompt, None)

    def step(frame, unmasked, cache, finished):
        logits = model.decode_logits(frame, cache, commit=finished)
        samples, confidence = sample_digits(logits, cfg.num_factored_vocabs, cfg.factored_vocab_size, 0.0)
        return maskgit_update(frame, unmasked, samples, confidence, 0, 2, cfg.mask_token_id, "greedy")

    frame = torch.full((2, cfg.S), cfg.mask_token_id)
    unmasked = torch.zeros(2, cfg.S, dtype=torch.bool)
    results, counts = [], []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        cache = model.new_cache(2)
        with torch.no_grad():
            model.prefill(cached, cache)
            results.append(fn(frame, unmasked, cache, finished))
        counts.append((int(cache.num_frames), cache.host_frames))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert counts[0] == counts[1] == (4, 4)  # 4 committed frames either way


def test_greedy_digits_are_each_digits_argmax_first_of_ties():
    """sample_digits at temperature 0, against its definition digit by digit: the most significant digit first, the
    lowest index among equal probabilities (argmax), the confidence the product of the chosen probabilities in that
    order. Rounded logits make ties common."""
    from wmkernels.sampling import sample_digits

    g = torch.Generator().manual_seed(3)
    for num, size in ((2, 512), (3, 7), (1, 16)):
        logits = (torch.randn(2, 37, num * size, generator=g) * 2).round()
        probs = torch.softmax(logits.reshape(2, 37, num, size), dim=-1)
        want_tokens, want_conf = torch.zeros(2, 37, dtype=torch.long), torch.ones(2, 37)
        for j in reversed(range(num)):
            digit = probs[:, :, j].argmax(dim=-1)
            want_tokens = want_tokens * size + digit
            want_conf = want_conf * probs[:, :, j].gather(-1, digit.unsqueeze(-1)).squeeze(-1)
        tokens, confidence = sample_digits(logits, num, size, 0.0)
        assert torch.equal(tokens, want_tokens) and torch.equal(confidence, want_conf)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_split_decode_pass_gives_the_same_run(temperature, monkeypatch):
    """Batch 1 on 2 threads with the fused decode pass split into two tasks ($WMK_DECODE_SPLIT=1; by default only
    where MKL's packed product runs): the same tokens as GENIE's uncached sampler, and bitwise the unsplit run's
    first-step logits, over a sliding window."""
    model = tiny_model(seed=4)
    prompt = _prompt(1, 3, model)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = {}
        for split in ("1", "0"):
            monkeypatch.setenv("WMK_DECODE_SPLIT", split)
            runs[split] = maskgit_generate(model, prompt, 9, 2, temperature, generator=torch.Generator().manual_seed(3),
                                           progress=False)
        genie = maskgit_generate(model, prompt, 9, 2, temperature, generator=torch.Generator().manual_seed(3),
                                 use_cache=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(runs["1"].tokens, genie.tokens) and torch.equal(runs["1"].tokens, runs["0"].tokens)
    assert torch.equal(runs["1"].first_step_logits, runs["0"].first_step_logits)
