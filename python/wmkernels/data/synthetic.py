"""A small synthetic dataset in the 1X token format with structure a model can learn.

Each segment (recording) is a scrolling, periodic background with 1 to `max_objects` square objects that move
at constant velocity and bounce off the frame edges, plus a little token noise. Token values are drawn once
per dataset from the whole 2^18 vocabulary (so both 512-way factors vary). Speeds are in cells per *raw* frame
and chosen so that at the challenge's 2 Hz sampling (every 15th raw frame) things move about a cell per frame:
the next frame is predictable from the previous ones, but not a copy of the last one.
Everything is a deterministic function of `seed`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wmkernels.constants import FRAME_SIZE, IMAGE_VOCAB_SIZE
from wmkernels.data.format import TokenMetadata
from wmkernels.data.writer import write_token_dataset

_BACKGROUND_TOKENS = 12
_OBJECT_TOKENS = 8


def synthetic_tokens(num_segments: int = 6, frames_per_segment: int = 300, *, seed: int = 0,
                     s: int = FRAME_SIZE, vocab_size: int = IMAGE_VOCAB_SIZE, max_objects: int = 3,
                     noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Generate tokens (num_segments * frames_per_segment, s, s) int64 and segment_ids (same N,) int32.

    noise: probability that a cell holds a uniformly random vocabulary token instead of the scene's token.
    """
    if num_segments < 1 or frames_per_segment < 1:
        raise ValueError(f"synthetic_tokens: num_segments and frames_per_segment must be >= 1, "
                         f"got {num_segments} and {frames_per_segment}")
    if s < 4:
        raise ValueError(f"synthetic_tokens: s must be >= 4 (objects are 2 to 4 cells wide), got {s}")
    if vocab_size < _BACKGROUND_TOKENS + _OBJECT_TOKENS:
        raise ValueError(f"synthetic_tokens: vocab_size must be >= {_BACKGROUND_TOKENS + _OBJECT_TOKENS}, "
                         f"got {vocab_size}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"synthetic_tokens: noise must lie in [0, 1], got {noise}")
    rng = np.random.default_rng(seed)
    palette = rng.choice(vocab_size, size=_BACKGROUND_TOKENS + _OBJECT_TOKENS, replace=False).astype(np.int64)
    background, objects = palette[:_BACKGROUND_TOKENS], palette[_BACKGROUND_TOKENS:]
    segments = [_segment(rng, frames_per_segment, s, background, objects, max_objects) for _ in range(num_segments)]
    tokens = np.concatenate(segments)
    if noise > 0:
        flip = rng.random(tokens.shape) < noise
        tokens[flip] = rng.integers(0, vocab_size, size=int(flip.sum()))
    segment_ids = np.repeat(np.arange(num_segments, dtype=np.int32), frames_per_segment)
    return tokens, segment_ids


def _segment(rng: np.random.Generator, frames: int, s: int, background: np.ndarray, objects: np.ndarray,
             max_objects: int) -> np.ndarray:
    t = np.arange(frames)
    # Background: token index (a*row + b*col + c) mod k over a grid that, in half of the segments, scrolls by
    # one cell per 15 raw frames along one axis (a camera pan).
    k = int(rng.integers(3, len(background) + 1))
    a, b, c = (int(x) for x in rng.integers(0, k, size=3))
    pan = np.zeros(2)
    if rng.random() < 0.5:
        pan[int(rng.integers(0, 2))] = rng.choice([-1.0, 1.0]) / 15.0
    rows = np.arange(s)[None, :, None] + np.floor(t * pan[0]).astype(np.int64)[:, None, None]
    cols = np.arange(s)[None, None, :] + np.floor(t * pan[1]).astype(np.int64)[:, None, None]
    out = background[(a * rows + b * cols + c) % k].astype(np.int64)
    out = np.broadcast_to(out, (frames, s, s)).copy()
    for _ in range(int(rng.integers(1, max_objects + 1))):
        size = int(rng.integers(2, 5))
        look = rng.choice(objects, size=(size, size))
        span = s - size  # top-left corner stays in [0, span]
        start = rng.random(2) * span
        velocity = rng.uniform(-2.0, 2.0, size=2) / 15.0
        pos = _bounce(start[None, :] + t[:, None] * velocity[None, :], span)  # (frames, 2)
        r = pos[:, 0, None] + np.arange(size)[None, :]  # (frames, size)
        col = pos[:, 1, None] + np.arange(size)[None, :]
        out[t[:, None, None], r[:, :, None], col[:, None, :]] = look[None]
    return out


def _bounce(x: np.ndarray, span: int) -> np.ndarray:
    """Reflect positions into [0, span] (a ball bouncing between walls) and round down to cells."""
    if span == 0:
        return np.zeros_like(x, dtype=np.int64)
    folded = np.mod(x, 2 * span)
    return np.floor(span - np.abs(folded - span)).astype(np.int64)


def write_synthetic_dataset(directory: Path | str, num_segments: int = 6, frames_per_segment: int = 300, *,
                            seed: int = 0, s: int = FRAME_SIZE, vocab_size: int = IMAGE_VOCAB_SIZE,
                            token_dtype: str = "uint32", hz: int = 30, max_objects: int = 3,
                            noise: float = 0.01) -> TokenMetadata:
    """Generate a synthetic dataset (see `synthetic_tokens`) and write it in the 1X format to `directory`."""
    tokens, segment_ids = synthetic_tokens(num_segments, frames_per_segment, seed=seed, s=s,
                                           vocab_size=vocab_size, max_objects=max_objects, noise=noise)
    return write_token_dataset(directory, tokens, segment_ids, vocab_size=vocab_size, token_dtype=token_dtype,
                               hz=hz, extra_metadata={"synthetic": {"seed": seed, "num_segments": num_segments,
                                                                    "frames_per_segment": frames_per_segment,
                                                                    "max_objects": max_objects, "noise": noise}})
