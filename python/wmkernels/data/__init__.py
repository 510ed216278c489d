"""The 1X World Model Challenge token format (v1.1): reader with GENIE's windows, writer, synthetic data.

    TokenDataset(dir, window_size=16, stride=15, non_overlapping=False)   windows as int64 (T, s, s) tensors
    write_token_dataset(dir, tokens, segment_ids, ...)                    the same format, written
    write_synthetic_dataset(dir, ..., seed=0)                             small learnable data, deterministic
    TokenDataError                                                         bad data: names the file and problem
"""
from wmkernels.data.format import TokenDataError, TokenMetadata, read_metadata
from wmkernels.data.reader import TokenDataset, window_starts
from wmkernels.data.synthetic import synthetic_tokens, write_synthetic_dataset
from wmkernels.data.writer import write_token_dataset

__all__ = [
    "TokenDataError",
    "TokenDataset",
    "TokenMetadata",
    "read_metadata",
    "synthetic_tokens",
    "window_starts",
    "write_synthetic_dataset",
    "write_token_dataset",
]
