"""Metrics of the 1X challenge on factorized logits: teacher-forced cross-entropy and token accuracy.

The cross-entropy of a token is the sum over its digits of the digit's cross-entropy (GENIE's `compute_loss`),
averaged over the tokens scored; it is the compression metric of the challenge (nats per token).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wmkernels.nn.kv_cache import FrameKVCache


def _digits(targets: torch.Tensor, num_factored_vocabs: int, factored_vocab_size: int) -> torch.Tensor:
    powers = factored_vocab_size ** torch.arange(num_factored_vocabs, device=targets.device)
    return (targets.long().unsqueeze(1) // powers.view(1, -1, *([1] * (targets.dim() - 1)))) % factored_vocab_size


def _check(logits, targets, num_factored_vocabs, factored_vocab_size):
    if logits.dim() != 5 or logits.shape[1] != num_factored_vocabs * factored_vocab_size:
        raise ValueError(f"logits must be (B, {num_factored_vocabs} * {factored_vocab_size}, T, H, W), "
                         f"got {tuple(logits.shape)}")
    if tuple(targets.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"targets must be (B, T, H, W) = {(logits.shape[0], *logits.shape[2:])}, "
                         f"got {tuple(targets.shape)}")


def factorized_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, num_factored_vocabs: int = 2,
                             factored_vocab_size: int = 512, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of the summed digit cross-entropies (nats per token).

    logits: (B, F*V, T, H, W) in GENIE's layout; targets: (B, T, H, W) tokens in [0, V**F);
    mask: optional (B, T, H, W) bool, the tokens to score (all when None). Returns a 0-d float tensor.
    """
    _check(logits, targets, num_factored_vocabs, factored_vocab_size)
    b, _, t, h, w = logits.shape
    digit_logits = logits.reshape(b, num_factored_vocabs, factored_vocab_size, t, h, w).transpose(1, 2)
    digits = _digits(targets, num_factored_vocabs, factored_vocab_size)  # (B, F, T, H, W)
    loss = F.cross_entropy(digit_logits.float(), digits, reduction="none").sum(dim=1)  # (B, T, H, W)
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / mask.sum()


def factorized_argmax(logits: torch.Tensor, num_factored_vocabs: int = 2, factored_vocab_size: int = 512):
    """Most likely token of each position: logits (B, F*V, T, H, W) -> tokens (B, T, H, W) int64."""
    b, _, t, h, w = logits.shape
    digits = logits.reshape(b, num_factored_vocabs, factored_vocab_size, t, h, w).argmax(dim=2)
    powers = factored_vocab_size ** torch.arange(num_factored_vocabs, device=logits.device)
    return (digits * powers.view(1, -1, 1, 1, 1)).sum(dim=1)


def token_accuracy(predicted: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of tokens predicted exactly (every digit right). predicted, targets: (B, T, H, W); mask optional."""
    if predicted.shape != targets.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and targets {tuple(targets.shape)} differ in shape")
    hit = (predicted == targets).float()
    return hit.mean() if mask is None else (hit * mask).sum() / mask.sum()


@torch.inference_mode()
def teacher_forced_logits(model, tokens: torch.Tensor, num_prompt_frames: int = 1) -> torch.Tensor:
    """Logits of every frame t >= num_prompt_frames given the true frames before it, the frame fully masked.

    What the challenge scores (GENIE's `predict_zframe_logits` first step), computed with the frame KV cache:
    per frame one pass that commits the true frames before it not yet cached (the whole prompt at first, then one)
    and decodes the masked frame.
    tokens: (B, T', H, W), T' <= config.T. Returns (B, F*V, T' - num_prompt_frames, H, W).
    """
    model.check_tokens(tokens, "tokens", allow_mask=False)
    b, t = tokens.shape[:2]
    if not 1 <= num_prompt_frames < t:
        raise ValueError(f"num_prompt_frames must be in [1, {t - 1}] for {t} frames, got {num_prompt_frames}")
    cfg = model.config
    frames = tokens.reshape(b, t, cfg.S).long()
    cache = FrameKVCache.for_model(model, b)
    masked = torch.full((b, cfg.S), cfg.mask_token_id, dtype=torch.long, device=tokens.device)
    out = []
    with model.decoder.reuse_decode_args():
        for i in range(num_prompt_frames, t):
            # The true frames before i not yet cached (the prompt, then frame i - 1) are committed in the same pass
            # that decodes the masked frame i.
            commit = frames[:, :num_prompt_frames] if i == num_prompt_frames else frames[:, i - 1]
            out.append(model.decode_logits(masked, cache, commit=commit).transpose(1, 2))
    return torch.stack(out, dim=2).unflatten(-1, (cfg.H, cfg.W))


def evaluate_teacher_forced(model, tokens: torch.Tensor, num_prompt_frames: int = 1) -> dict:
    """{"loss": cross-entropy (nats/token), "acc": argmax token accuracy} of the frames after the prompt."""
    cfg = model.config
    logits = teacher_forced_logits(model, tokens, num_prompt_frames)
    targets = tokens[:, num_prompt_frames:].long()
    loss = factorized_cross_entropy(logits, targets, cfg.num_factored_vocabs, cfg.factored_vocab_size)
    acc = token_accuracy(factorized_argmax(logits, cfg.num_factored_vocabs, cfg.factored_vocab_size), targets)
    return {"loss": loss.item(), "acc": acc.item()}
