"""KV-cached MaskGIT frame sampling for GENIE-style world models.

The frames before t never change while frame t is sampled (temporal attention is causal, spatial attention stays
inside a frame), so their temporal K/V are cached once per layer (`FrameKVCache`) and every MaskGIT step is a
one-frame forward. For 8 prompt + 8 new frames at 2 steps that is 8 (prefill) + 8 x 2 (steps) + 7 (commits) = 31
frame-forwards instead of GENIE's 8 x 2 x 16 = 256. The prompt (the prefill) and each commit ride along with the next
frame's first step, in one forward over those frames and it: 16 passes over the weights instead of 31. The step
itself (sampling the digits, the cosine schedule, choosing which tokens to unmask) runs on device tensors only: no
host synchronisation per step.

The tokens are exactly those of the uncached reference samplers (`use_cache=False` runs GENIE's), random draws
included: see `wmkernels.reference.maskgit` for the order of draws and the two fixes to the public sampler.
"""
from __future__ import annotations

import contextlib
import math
import threading
import weakref
from typing import NamedTuple

import torch

from wmkernels.nn.kv_cache import FrameKVCache
from wmkernels.reference.maskgit import genie_maskgit_generate

UNMASK_MODES = ("random", "greedy")
# GENIE treats temperatures up to this as greedy (argmax) sampling.
GREEDY_TEMPERATURE = 1e-8


class GenerationResult(NamedTuple):
    """tokens: (B, T0 + N, H, W) int64, prompt then generated frames.
    first_step_logits: (B, F*V, N, H, W), each new frame's logits at its first (fully masked) MaskGIT step."""

    tokens: torch.Tensor
    first_step_logits: torch.Tensor


def sample_digits(logits: torch.Tensor, num_factored_vocabs: int, factored_vocab_size: int, temperature: float,
                  generator: torch.Generator | None = None):
    """Sample each token's digits independently. logits (B, S, F*V) -> (tokens (B, S) int64, confidence (B, S)).

    temperature <= 1e-8: argmax; otherwise softmax(logits / temperature) sampled with torch.multinomial, the most
    significant digit first. confidence is the product of the chosen digits' probabilities.
    """
    b, s, _ = logits.shape
    v = factored_vocab_size
    digits = logits.reshape(b, s, num_factored_vocabs, v)
    greedy = temperature <= GREEDY_TEMPERATURE
    probs = torch.softmax(digits if greedy else digits / temperature, dim=-1)
    tokens = torch.zeros((b, s), dtype=torch.long, device=logits.device)
    confidence = torch.ones((b, s), dtype=torch.float, device=logits.device)
    if greedy:  # every digit's most likely value (the first of equals, as argmax) and its probability in one call:
        # on CPU max(dim) took 70 us for GENIE's (1, 256, 2, 512), two argmax and gather calls ~200 us
        best_p, best = probs.max(dim=-1)  # (B, S, F)
    for j in reversed(range(num_factored_vocabs)):
        if greedy:
            digit, p_digit = best[:, :, j], best_p[:, :, j]
        else:
            p = probs[:, :, j]
            digit = torch.multinomial(p.reshape(-1, v), 1, generator=generator).reshape(b, s)
            p_digit = torch.gather(p, -1, digit.unsqueeze(-1)).squeeze(-1)
        tokens = tokens * v + digit
        confidence = confidence * p_digit
    return tokens, confidence


def maskgit_update(frame, unmasked, samples, confidence, step: int, steps: int, mask_token_id: int,
                   unmask_mode: str, generator=None):
    """One MaskGIT schedule step on device tensors. frame, samples: (B, S) int64; unmasked: (B, S) bool.

    Keeps the tokens already unmasked, and unless this is the last step re-masks the ceil(cos(pi/2 (step+1)/steps)
    * S) least confident new samples (random confidences in "random" mode). Returns (new frame, new unmasked).
    """
    b, s = samples.shape
    if step != steps - 1:
        n = math.ceil(math.cos((step + 1) / steps * math.pi / 2) * s)
        if unmask_mode == "random":
            side = math.isqrt(s)
            confidence = torch.rand((b, side, side), generator=generator, device=samples.device).reshape(b, s)
        confidence = confidence.masked_fill(unmasked, math.inf)
        order = torch.argsort(confidence, dim=1, stable=True)
        samples = samples.scatter(1, order[:, :n], mask_token_id)
        new_unmasked = unmasked.scatter(1, order[:, n:], True)
    else:
        new_unmasked = torch.ones_like(unmasked)
    return torch.where(unmasked, frame, samples), new_unmasked


def _check_args(model, prompt, num_new_frames, steps, temperature, unmask_mode, window_stride):
    model.check_tokens(prompt, "prompt", allow_mask=False)
    device = next(model.parameters()).device
    if prompt.device != device:
        raise ValueError(f"prompt is on {prompt.device} but the model is on {device}")
    for name, value, low in (("num_new_frames", num_new_frames, 0), ("steps", steps, 1),
                             ("window_stride", window_stride, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if unmask_mode not in UNMASK_MODES:
        raise ValueError(f"unmask_mode must be one of {UNMASK_MODES}, got {unmask_mode!r}")
    t_max = model.config.T
    if prompt.shape[1] + num_new_frames > t_max and window_stride >= t_max:
        raise ValueError(f"window_stride={window_stride} must be < T={t_max} to slide the window past T frames")


# One idle FrameKVCache per model, reused by the next run of the same shape (a static cache, as LLM decoders keep):
# a fresh one is 2 x num_layers x T_max frames of memory (256 MiB for GENIE-35M) whose pages the OS has to map and
# zero again on first touch in every run. Keyed weakly by the model, so nothing outlives it; a run that finds the
# cache taken (another thread sampling the same model) allocates its own.
_IDLE_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_IDLE_LOCK = threading.Lock()


@contextlib.contextmanager
def _sampling_cache(model, batch_size: int):
    param = next(model.parameters())
    key = (batch_size, param.dtype, param.device)
    with _IDLE_LOCK:
        idle = _IDLE_CACHES.pop(model, None)
    cache = idle[1] if idle is not None and idle[0] == key else FrameKVCache.for_model(model, batch_size)
    cache.reset()
    try:
        yield cache
    finally:
        with _IDLE_LOCK:
            _IDLE_CACHES[model] = (key, cache)


def _frames(num_new_frames: int, progress: bool):
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional
            return range(num_new_frames)
        return tqdm(range(num_new_frames), desc="frames", leave=False)
    return range(num_new_frames)


@torch.inference_mode()
def maskgit_generate(model, prompt: torch.Tensor, num_new_frames: int, steps: int = 2, temperature: float = 0.0,
                     unmask_mode: str = "random", generator: torch.Generator | None = None, use_cache: bool = True,
                     progress: bool = True, *, window_stride: int = 1) -> GenerationResult:
    """Generate `num_new_frames` frames after `prompt` with MaskGIT, frame by frame.

    model: an `STMaskGIT`. prompt: (B, T0, H, W) int tokens in [0, image_vocab_size), 1 <= T0 <= config.T.
    steps: MaskGIT steps per frame. temperature: 0 is greedy; > 0 divides the logits before sampling.
    unmask_mode: "random" (GENIE's default) or "greedy" (keep the most confident tokens).
    generator: source of every random draw (same order as the reference samplers).
    use_cache: False runs GENIE's uncached sampler (the whole T-frame window at every step).
    window_stride: past T frames, drop this many of the oldest frames whenever the window is full.
    Returns GenerationResult(tokens (B, T0+N, H, W) int64, first_step_logits (B, F*V, N, H, W)).
    """
    _check_args(model, prompt, num_new_frames, steps, temperature, unmask_mode, window_stride)
    if not use_cache:
        return GenerationResult(*genie_maskgit_generate(model, prompt, num_new_frames, steps, temperature,
                                                        unmask_mode, generator, window_stride))
    # The fused decode op's arguments are built once for the run (the model does not change during it), not per pass.
    with _sampling_cache(model, prompt.shape[0]) as cache, model.decoder.reuse_decode_args():
        return _generate(model, prompt, num_new_frames, steps, temperature, unmask_mode, generator, progress,
                         window_stride, cache)


def _generate(model, prompt, num_new_frames, steps, temperature, unmask_mode, generator, progress, window_stride,
              cache):
    cfg = model.config
    b, t0 = prompt.shape[:2]
    s, t_max, mask_id = cfg.S, cfg.T, cfg.mask_token_id
    window = prompt.reshape(b, t0, s).long()
    # Finished frames whose K/V are still to be stored (the prompt, then each new frame): they go through the model
    # together with the next frame's first step (one pass instead of two; the same tokens). The cache comes empty
    # from _sampling_cache.
    pending = window
    new_frames, first_logits = [], []
    for i in _frames(num_new_frames, progress):
        if window.shape[1] == t_max:  # slide: re-fill the cache with the kept frames at their new positions, in the
            window = window[:, window_stride:]  # pass of the first step
            cache.reset()
            pending = window
        frame = torch.full((b, s), mask_id, dtype=torch.long, device=prompt.device)
        unmasked = torch.zeros((b, s), dtype=torch.bool, device=prompt.device)
        for step in range(steps):
            logits = model.decode_logits(frame, cache, commit=pending)  # (B, S, F*V)
            pending = None
            if step == 0:
                first_logits.append(logits.transpose(1, 2))
            samples, confidence = sample_digits(logits, cfg.num_factored_vocabs, cfg.factored_vocab_size,
                                                temperature, generator)
            frame, unmasked = maskgit_update(frame, unmasked, samples, confidence, step, steps, mask_id,
                                             unmask_mode, generator)
        new_frames.append(frame)
        window = torch.cat([window, frame.unsqueeze(1)], dim=1)
        if window.shape[1] < t_max:  # the next frame reuses the cache (it commits this one)
            pending = frame.unsqueeze(1)
    tokens = torch.cat([prompt.reshape(b, t0, s).long(), *(f.unsqueeze(1) for f in new_frames)], dim=1)
    if first_logits:
        logits = torch.stack(first_logits, dim=2)
    else:
        logits = torch.empty((b, cfg.num_logits, 0, s), device=prompt.device)
    return GenerationResult(tokens.reshape(b, -1, cfg.H, cfg.W), logits.unflatten(-1, (cfg.H, cfg.W)))
