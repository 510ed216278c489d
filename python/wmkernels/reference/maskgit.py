"""The uncached MaskGIT frame samplers: GENIE's (every step runs all T frames, future ones masked) and the
truncated one (every step runs frames 0 .. t only). Both are the yardstick of the KV-cached sampler.

The per-frame loop follows the public GENIE `maskgit_generate`: a cosine schedule of how many tokens stay masked,
confidence = product of the chosen digits' probabilities, already-unmasked tokens kept, the digits sampled from
the most significant down. Two deliberate differences: the temperature divides the logits before the softmax
(GENIE divides the probabilities, which `Categorical` renormalises away, so its temperature has no effect), and
every random draw comes from the given `generator` (GENIE's random unmasking uses the global RNG), in this order
per step: the digits' `torch.multinomial` draws (most significant first, only when temperature > 0), then one
`torch.rand` of shape (B, H, W) for random unmasking (not on the last step).

Past T frames the window slides: when the context holds T frames, the oldest `window_stride` are dropped.
Imports nothing of ours: `model` only needs `compute_logits(tokens (B, T', H, W)) -> (B, F*V, T', H, W)`, `config`
(with T, S, image_vocab_size, num_factored_vocabs, factored_vocab_size) and `mask_token_id`.
"""
from __future__ import annotations

import math

import torch


def _cosine_masked_count(step: int, steps: int, tokens_per_frame: int) -> int:
    """How many tokens of the frame stay masked after `step` (0-based) of `steps`."""
    return math.ceil(math.cos((step + 1) / steps * math.pi / 2) * tokens_per_frame)


def _sample_frame(logits_chw, cfg, temperature, generator):
    """logits (B, F*V, H, W) -> (tokens (B, S), confidence (B, S))."""
    b = logits_chw.shape[0]
    nf, v = cfg.num_factored_vocabs, cfg.factored_vocab_size
    logits = logits_chw.reshape(b, nf, v, -1).permute(0, 3, 1, 2).contiguous()  # (B, S, F, V)
    greedy = temperature <= 1e-8
    probs = torch.softmax(logits if greedy else logits / temperature, dim=-1)
    tokens = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
    confidence = torch.ones(logits.shape[:2], dtype=torch.float, device=logits.device)
    for j in reversed(range(nf)):
        p = probs[:, :, j]
        if greedy:
            digit = p.argmax(dim=-1)
        else:
            digit = torch.multinomial(p.reshape(-1, v), 1, generator=generator).reshape(p.shape[:2])
        tokens = tokens * v + digit
        confidence = confidence * torch.gather(p, -1, digit.unsqueeze(-1)).squeeze(-1)
    return tokens, confidence


def _maskgit_frame(frame_logits, cfg, mask_id, steps, temperature, unmask_mode, generator, device, batch):
    """Run the MaskGIT steps for one frame; frame_logits(frame (B, S)) -> logits (B, F*V, H, W)."""
    s = cfg.S
    frame = torch.full((batch, s), mask_id, dtype=torch.long, device=device)
    unmasked = torch.zeros(batch, s, dtype=torch.bool, device=device)
    first_logits = None
    for step in range(steps):
        logits = frame_logits(frame)
        if first_logits is None:
            first_logits = logits.clone()
        samples, confidence = _sample_frame(logits, cfg, temperature, generator)
        was_unmasked = unmasked.clone()
        if step != steps - 1:
            n = _cosine_masked_count(step, steps, s)
            if unmask_mode == "random":
                side = math.isqrt(s)
                confidence = torch.rand((batch, side, side), generator=generator, device=device).reshape(batch, s)
            elif unmask_mode != "greedy":
                raise ValueError(f"unmask_mode must be 'random' or 'greedy', got {unmask_mode!r}")
            confidence[unmasked] = torch.inf
            order = torch.argsort(confidence, dim=1, stable=True)
            unmasked.scatter_(1, order[:, n:], True)
            samples.scatter_(1, order[:, :n], mask_id)
        samples[was_unmasked] = frame[was_unmasked]
        frame = samples
    return frame, first_logits


@torch.no_grad()
def genie_maskgit_generate(model, prompt, num_new_frames, steps=2, temperature=0.0, unmask_mode="random",
                           generator=None, window_stride=1, truncated=False):
    """Uncached MaskGIT sampling. prompt (B, T0, H, W) -> (tokens (B, T0+N, H, W), first_logits (B, F*V, N, H, W)).

    truncated=False: GENIE's sampler, each step runs the whole window padded with masked frames to T frames.
    truncated=True: each step runs only the window and the frame being sampled.
    """
    cfg = model.config
    b, mask_id, t_max = prompt.shape[0], model.mask_token_id, cfg.T
    h = w = math.isqrt(cfg.S)
    window = prompt.long()
    new_frames, first = [], []
    for _ in range(num_new_frames):
        if window.shape[1] == t_max:
            window = window[:, window_stride:]
        out_t = window.shape[1]
        pad = 1 if truncated else t_max - out_t
        masked = torch.full((b, pad, h, w), mask_id, dtype=torch.long, device=prompt.device)
        inputs = torch.cat([window, masked], dim=1)

        def frame_logits(frame, inputs=inputs, out_t=out_t):
            inputs[:, out_t] = frame.reshape(b, h, w)
            return model.compute_logits(inputs)[:, :, out_t]

        frame, logits = _maskgit_frame(frame_logits, cfg, mask_id, steps, temperature, unmask_mode, generator,
                                       prompt.device, b)
        frame = frame.reshape(b, 1, h, w)
        window = torch.cat([window, frame], dim=1)
        new_frames.append(frame)
        first.append(logits)
    tokens = torch.cat([prompt.long(), *new_frames], dim=1)
    logits = torch.stack(first, dim=2) if first else prompt.new_empty((b, cfg.num_factored_vocabs *
                                                                        cfg.factored_vocab_size, 0, h, w),
                                                                       dtype=torch.float)
    return tokens, logits
