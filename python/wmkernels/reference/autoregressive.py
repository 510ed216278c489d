"""Uncached token-by-token sampling: every new token re-runs the model's full causal pass over the sequence.

The yardstick of the KV-cached `wmkernels.sampling.autoregressive_generate`. `model(tokens (B, L))` returns
next-token logits (B, L, F*V); digits are drawn as in the reference MaskGIT sampler (most significant first,
temperature dividing the logits, `torch.multinomial` with the given generator).
"""
from __future__ import annotations

import torch

from wmkernels.reference.maskgit import _sample_frame


@torch.no_grad()
def uncached_autoregressive_generate(model, prompt, num_new_frames, temperature=0.0, generator=None):
    """prompt (B, T0, H, W) -> (B, T0 + N, H, W) int64."""
    cfg = model.config
    b, _, h, w = prompt.shape
    seq = prompt.reshape(b, -1).long()
    for _ in range(num_new_frames * cfg.S):
        logits = model(seq)[:, -1]  # (B, F*V)
        token, _ = _sample_frame(logits[:, :, None, None], cfg, temperature, generator)
        seq = torch.cat([seq, token], dim=1)
    return seq.reshape(b, -1, h, w)
