"""Writing a dataset in the 1X token format (what `TokenDataset` reads back unchanged)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from wmkernels.constants import IMAGE_VOCAB_SIZE
from wmkernels.data.format import (
    DEFAULT_HZ, DEFAULT_TOKEN_DTYPE, METADATA_FILE, SEGMENT_ID_DTYPE, SEGMENT_IDS_FILE, VIDEO_FILE,
    TokenMetadata,
)


def write_token_dataset(directory: Path | str, tokens, segment_ids, *, vocab_size: int = IMAGE_VOCAB_SIZE,
                        token_dtype: str = DEFAULT_TOKEN_DTYPE, hz: int = DEFAULT_HZ,
                        extra_metadata: dict | None = None) -> TokenMetadata:
    """Write video.bin, segment_ids.bin and metadata.json into `directory` (created if missing).

    tokens:       (N, s, s) integers in [0, vocab_size), numpy array or tensor; stored as `token_dtype`
    segment_ids:  (N,) integers fitting int32, one per frame
    Returns the metadata written. Existing files of the format in `directory` are replaced; the inputs are
    not modified. Raises ValueError naming the argument when shapes, values or dtypes do not fit.
    """
    tokens = _as_numpy(tokens, "tokens")
    segment_ids = _as_numpy(segment_ids, "segment_ids")
    if tokens.ndim != 3 or tokens.shape[1] != tokens.shape[2]:
        raise ValueError(f"write_token_dataset: tokens must have shape (N, s, s), got {tokens.shape}")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"write_token_dataset: tokens must be integers, got dtype {tokens.dtype}")
    if segment_ids.shape != (tokens.shape[0],):
        raise ValueError(f"write_token_dataset: segment_ids must have shape ({tokens.shape[0]},) "
                         f"(one per frame), got {segment_ids.shape}")
    if segment_ids.dtype.kind not in "iu":
        raise ValueError(f"write_token_dataset: segment_ids must be integers, got dtype {segment_ids.dtype}")
    meta = TokenMetadata(num_images=int(tokens.shape[0]), s=int(tokens.shape[1]), token_dtype=token_dtype,
                         vocab_size=vocab_size, hz=hz, extra=dict(extra_metadata or {}))
    try:
        meta.check("write_token_dataset")
    except ValueError as err:
        raise ValueError(f"write_token_dataset: {err.problem}") from None
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"write_token_dataset: tokens must lie in [0, {vocab_size}), "
                         f"found values in [{int(tokens.min())}, {int(tokens.max())}]")
    info = np.iinfo(SEGMENT_ID_DTYPE)
    if segment_ids.size and (int(segment_ids.min()) < info.min or int(segment_ids.max()) > info.max):
        raise ValueError("write_token_dataset: segment_ids must fit int32")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / VIDEO_FILE, np.ascontiguousarray(tokens, dtype=meta.dtype).tobytes())
    _write_atomic(directory / SEGMENT_IDS_FILE, np.ascontiguousarray(segment_ids, dtype=SEGMENT_ID_DTYPE).tobytes())
    # metadata.json last: a reader never sees new metadata next to old binaries.
    _write_atomic(directory / METADATA_FILE, (json.dumps(meta.to_json(), indent=2) + "\n").encode())
    return meta


def _as_numpy(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"write_token_dataset: {name} must be a numpy array or a torch tensor, got {type(value).__name__}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
