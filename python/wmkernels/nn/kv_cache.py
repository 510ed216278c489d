"""FrameKVCache: preallocated per-layer temporal K/V for frame-by-frame sampling.

Temporal attention is causal and spatial attention stays inside a frame, so the hidden states of frames before t
never change while frame t is sampled. Their temporal keys and values are stored once per layer, and each MaskGIT
step runs one frame against them. Everything is preallocated with static shapes and the frame count is a tensor,
so the per-step path has no host synchronisation (CUDA-graph and `torch.compile(fullgraph=True)` friendly).
"""
from __future__ import annotations

import torch


class FrameKVCache:
    """Temporal K and V of every layer: `k`, `v` of shape (num_layers, B, T_max, S, H, D), filled in place.

    `num_frames` is an int64 tensor of shape (): the count of committed frames (0 .. T_max). Slot `num_frames` is
    the working slot of the frame being sampled: a MaskGIT step may write its K/V there (the fused CPU pass keeps them
    to itself instead), and the next step or the commit overwrites it.
    """

    def __init__(self, num_layers: int, batch_size: int, max_frames: int, spatial_size: int, num_heads: int,
                 head_dim: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        shape = (num_layers, batch_size, max_frames, spatial_size, num_heads, head_dim)
        # Uninitialized: every reader (the decode kernels and the reference) looks at slots < num_frames only, so
        # zeroing 2 x num_layers x T_max frames (256 MiB for GENIE-35M) would be a pass over memory nobody reads.
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.num_frames = torch.zeros((), dtype=torch.long, device=device)
        # The same count kept on the host by STMaskGIT.prefill / commit_frame, so that a write past T_max is refused
        # with a Python exception before any kernel runs (on a GPU an out-of-range slot would be a device-side
        # assert) without reading num_frames back from the device.
        self.host_frames = 0

    @classmethod
    def for_model(cls, model, batch_size: int, *, dtype: torch.dtype | None = None) -> "FrameKVCache":
        """A cache sized for an `STMaskGIT` (T_max = config.T frames of config.S tokens), on the model's device."""
        cfg = model.config
        param = next(model.parameters())
        return cls(cfg.num_layers, batch_size, cfg.T, cfg.S, cfg.num_heads, cfg.d_model // cfg.num_heads,
                   dtype=dtype or param.dtype, device=param.device)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_frames(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        """Memory held by the K and V buffers, in bytes."""
        return self.k.numel() * self.k.element_size() * 2

    def position(self) -> torch.Tensor:
        """The working slot's index as an int64 tensor of shape (1,) (a view of num_frames)."""
        return self.num_frames.view(1)

    def reset(self) -> None:
        """Forget every frame (the buffers keep their storage; stale slots are masked by `num_frames`)."""
        self.num_frames.zero_()
        self.host_frames = 0

    def check_free_slot(self, op: str, commits: int = 0) -> None:
        """Raise IndexError unless `commits` more committed frames and a working slot fit in T_max (a host-side
        check: no sync)."""
        if self.host_frames + commits >= self.max_frames:
            where = (f"no slot is left for a new frame" if commits == 0 else
                     f"no room for {commits} more committed frames and a working slot")
            raise IndexError(f"{op}: the FrameKVCache holds {self.host_frames} committed frames, its T_max = "
                             f"{self.max_frames}: {where} (slide the window or reset it)")
