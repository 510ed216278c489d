"""Samplers that need no model: trivial baselines for the harness (and for testing it)."""
from __future__ import annotations

from typing import Any

import torch


class RepeatLastFrame:
    """Predicts that nothing moves: every new frame is a copy of the last prompt frame.

    It is the cheapest possible sampler (a copy), so its time per frame is the harness's own overhead, and on
    data with a static background its agreement with a model says how much the model predicts motion.
    """

    def generate(self, prompt: torch.Tensor, num_new_frames: int, **opts: Any) -> torch.Tensor:
        """prompt: (B, T0, H, W) int64 with T0 >= 1 -> (B, T0 + num_new_frames, H, W) int64."""
        if prompt.ndim != 4 or prompt.shape[1] < 1:
            raise ValueError(f"RepeatLastFrame: prompt must have shape (B, T0>=1, H, W), got {tuple(prompt.shape)}")
        if num_new_frames < 0:
            raise ValueError(f"RepeatLastFrame: num_new_frames must be >= 0, got {num_new_frames}")
        last = prompt[:, -1:].expand(-1, num_new_frames, -1, -1)
        return torch.cat([prompt, last], dim=1)
