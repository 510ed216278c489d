"""Reading a 1X-format token dataset and cutting it into windows, with the public GENIE code's semantics.

A window is `window_size` frames taken every `stride`-th raw frame: frames start, start + stride, ...,
start + (window_size - 1) * stride (16 frames every 15th raw frame turns 30 Hz into 2 Hz). Every raw frame
may start a window. A window whose first and last frames lie in different segments (recordings) is dropped.
With `non_overlapping=True` (as for validation) windows are kept greedily in order of their start, skipping
any window that shares a frame with one already kept.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wmkernels.data.format import (
    SEGMENT_ID_DTYPE, SEGMENT_IDS_FILE, VIDEO_FILE, TokenDataError, TokenMetadata, read_metadata,
)

# Tokens are range-checked in chunks of this many frames, so a multi-GB video.bin never sits in memory at once.
_CHECK_CHUNK_FRAMES = 1 << 14


class TokenDataset(torch.utils.data.Dataset):
    """Windows of a 1X-format dataset; `dataset[i]` is an int64 tensor (window_size, s, s).

    directory:        folder with video.bin, segment_ids.bin, metadata.json
    window_size:      frames per window (16 in the challenge)
    stride:           raw frames between consecutive frames of a window (15 in the challenge)
    filter_segments:  drop windows whose first and last frames lie in different segments
    non_overlapping:  keep only windows that share no frame with an earlier kept window
    check_tokens:     scan video.bin once and raise if a token is negative or >= vocab_size
    """

    def __init__(self, directory: Path | str, window_size: int = 16, stride: int = 15, *,
                 filter_segments: bool = True, non_overlapping: bool = False, check_tokens: bool = True):
        for name, value in (("window_size", window_size), ("stride", stride)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TokenDataset: {name} must be an integer >= 1, got {value!r}")
        self.directory = Path(directory)
        self.metadata: TokenMetadata = read_metadata(self.directory)
        self.window_size = window_size
        self.stride = stride
        self.video = _open_video(self.directory / VIDEO_FILE, self.metadata)
        self.segment_ids = _open_segment_ids(self.directory / SEGMENT_IDS_FILE, self.metadata)
        if check_tokens:
            check_token_range(self.video, self.metadata.vocab_size, self.directory / VIDEO_FILE)
        self.start_indices = window_starts(self.segment_ids if filter_segments else None, len(self.video),
                                           window_size, stride, non_overlapping=non_overlapping)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.metadata.s, self.metadata.s)

    def __len__(self) -> int:
        return len(self.start_indices)

    def frame_indices(self, index: int) -> np.ndarray:
        """The raw frame indices (window_size,) of window `index`."""
        start = int(self.start_indices[index])
        return start + self.stride * np.arange(self.window_size)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"TokenDataset: window index {index} out of range for {len(self)} windows")
        frames = np.asarray(self.video[self.frame_indices(index)])
        return torch.from_numpy(frames.astype(np.int64))

    def windows(self, indices) -> torch.Tensor:
        """Stack windows: indices (B,) -> int64 tensor (B, window_size, s, s)."""
        items = [self[int(i)] for i in indices]
        if not items:
            return torch.empty((0, self.window_size, *self.frame_shape), dtype=torch.int64)
        return torch.stack(items)


def window_starts(segment_ids: np.ndarray | None, num_frames: int, window_size: int, stride: int, *,
                  non_overlapping: bool = False) -> np.ndarray:
    """Start frames (int64, ascending) of the valid windows; `segment_ids` None keeps segment-crossing ones."""
    span = (window_size - 1) * stride  # distance from a window's first raw frame to its last
    if num_frames <= span:
        return np.empty(0, dtype=np.int64)
    starts = np.arange(num_frames - span, dtype=np.int64)
    if segment_ids is not None:
        seg = np.asarray(segment_ids)
        starts = starts[seg[starts] == seg[starts + span]]
    if non_overlapping:
        starts = _greedy_disjoint(starts, window_size, stride)
    return starts


def _greedy_disjoint(starts: np.ndarray, window_size: int, stride: int) -> np.ndarray:
    # Two windows share a frame only if their starts differ by a multiple of the stride smaller than
    # window_size * stride. Scanning starts in increasing order, the only kept window that can clash with a
    # candidate is the last one kept with the same start modulo the stride.
    last_kept: dict[int, int] = {}
    kept = []
    reach = window_size * stride
    for start in starts.tolist():
        prev = last_kept.get(start % stride)
        if prev is None or start - prev >= reach:
            kept.append(start)
            last_kept[start % stride] = start
    return np.asarray(kept, dtype=np.int64)


def _open_video(path: Path, meta: TokenMetadata) -> np.ndarray:
    if not path.is_file():
        raise TokenDataError(path, "missing file (the tokens of every frame)")
    frame_bytes = meta.s * meta.s * meta.dtype.itemsize
    size = path.stat().st_size
    if size % frame_bytes:
        raise TokenDataError(path, f"size {size} bytes is not a whole number of frames "
                                   f"({meta.s}x{meta.s} {meta.token_dtype} = {frame_bytes} bytes each)")
    frames = size // frame_bytes
    if frames != meta.num_images:
        raise TokenDataError(path, f"holds {frames} frames of {meta.s}x{meta.s} {meta.token_dtype}, "
                                   f"but metadata.json says num_images={meta.num_images}")
    if frames == 0:
        return np.empty((0, meta.s, meta.s), dtype=meta.dtype)
    return np.memmap(path, dtype=meta.dtype, mode="r", shape=(frames, meta.s, meta.s))


def _open_segment_ids(path: Path, meta: TokenMetadata) -> np.ndarray:
    if not path.is_file():
        raise TokenDataError(path, "missing file (the segment id, int32, of every frame)")
    size = path.stat().st_size
    if size % SEGMENT_ID_DTYPE.itemsize:
        raise TokenDataError(path, f"size {size} bytes is not a whole number of int32 segment ids")
    count = size // SEGMENT_ID_DTYPE.itemsize
    if count != meta.num_images:
        raise TokenDataError(path, f"holds {count} segment ids, but metadata.json says "
                                   f"num_images={meta.num_images} (one id per frame)")
    if count == 0:
        return np.empty(0, dtype=SEGMENT_ID_DTYPE)
    return np.memmap(path, dtype=SEGMENT_ID_DTYPE, mode="r", shape=(count,))


def check_token_range(video: np.ndarray, vocab_size: int, path: Path) -> None:
    """Raise TokenDataError naming the first frame with a token outside [0, vocab_size)."""
    for begin in range(0, len(video), _CHECK_CHUNK_FRAMES):
        chunk = np.asarray(video[begin:begin + _CHECK_CHUNK_FRAMES])
        bad = (chunk >= vocab_size) | (chunk < 0) if chunk.dtype.kind == "i" else chunk >= vocab_size
        if bad.any():
            flat = int(np.flatnonzero(bad)[0])
            frame, rest = divmod(flat, chunk.shape[1] * chunk.shape[2])
            row, col = divmod(rest, chunk.shape[2])
            value = int(chunk[frame, row, col])
            raise TokenDataError(path, f"token {value} at frame {begin + frame}, row {row}, column {col} "
                                       f"is outside the vocabulary [0, {vocab_size})")
