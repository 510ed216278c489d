"""Token-by-token sampling with a static KV cache (the gpt-fast recipe) for `CausalTokenDecoder`.

The prompt is prefilled in one pass; then each new token is one single-position forward against the cache, its
position a device tensor, so the per-token step never synchronises with the host. The digits of each token are
sampled as in the MaskGIT sampler (`sample_digits`: most significant first, temperature dividing the logits), in
the same order of random draws as the uncached reference, which therefore gives the same tokens.
"""
from __future__ import annotations

import torch

from wmkernels.reference.autoregressive import uncached_autoregressive_generate
from wmkernels.sampling.maskgit import _frames, sample_digits


def _check(model, prompt, num_new_frames, temperature):
    cfg = model.config
    if not isinstance(prompt, torch.Tensor) or prompt.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"prompt must be an int32 or int64 tensor, got {getattr(prompt, 'dtype', type(prompt))}")
    side = int(cfg.S**0.5)
    if prompt.dim() != 4 or tuple(prompt.shape[2:]) != (side, side) or prompt.shape[1] < 1:
        raise ValueError(f"prompt must have shape (B, T0 >= 1, {side}, {side}), got {tuple(prompt.shape)}")
    if isinstance(num_new_frames, bool) or not isinstance(num_new_frames, int) or num_new_frames < 0:
        raise ValueError(f"num_new_frames must be an int >= 0, got {num_new_frames!r}")
    if prompt.shape[1] + num_new_frames > cfg.max_frames:
        raise ValueError(f"prompt frames ({prompt.shape[1]}) + num_new_frames ({num_new_frames}) exceed the model's "
                         f"max_frames={cfg.max_frames}")
    if int(prompt.min()) < 0 or int(prompt.max()) >= cfg.image_vocab_size:
        raise ValueError(f"prompt tokens must be in [0, {cfg.image_vocab_size}), got values in "
                         f"[{int(prompt.min())}, {int(prompt.max())}]")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")


@torch.inference_mode()
def autoregressive_generate(model, prompt: torch.Tensor, num_new_frames: int, temperature: float = 0.0,
                            generator: torch.Generator | None = None, use_cache: bool = True,
                            progress: bool = True) -> torch.Tensor:
    """Generate frames token by token in raster order.

    model: a `CausalTokenDecoder`. prompt: (B, T0, H, W) tokens. Returns (B, T0 + N, H, W) int64.
    use_cache=False runs the uncached reference (a full causal pass per token).
    """
    _check(model, prompt, num_new_frames, temperature)
    if not use_cache:
        return uncached_autoregressive_generate(model, prompt, num_new_frames, temperature, generator)
    cfg = model.config
    b, t0, h, w = prompt.shape
    seq = prompt.reshape(b, -1).long()
    length = seq.shape[1]
    total = length + num_new_frames * cfg.S
    out = torch.empty((b, total), dtype=torch.long, device=prompt.device)
    out[:, :length] = seq
    cache = model.new_cache(b)
    logits = model.forward_cached(seq, cache, torch.arange(length, device=prompt.device))[:, -1:]
    position = torch.full((1,), length, dtype=torch.long, device=prompt.device)
    for frame in _frames(num_new_frames, progress):
        for i in range(cfg.S):
            token, _ = sample_digits(logits, cfg.num_factored_vocabs, cfg.factored_vocab_size, temperature,
                                     generator)
            index = length + frame * cfg.S + i
            out[:, index] = token[:, 0]
            if index + 1 < total:
                logits = model.forward_cached(token, cache, position)
                position += 1
    return out.reshape(b, -1, h, w)
