"""The 1X World Model Challenge token format (v1.1): file names, metadata, and its validation errors.

A dataset is a directory holding

    video.bin        raw array of shape (num_images, s, s), dtype `token_dtype` (default uint32), C order
    segment_ids.bin  raw int32 array of shape (num_images,): which recording each frame belongs to
    metadata.json    {"num_images": int, "s": int, "token_dtype": str, "vocab_size": int, "hz": int, ...}

Unknown metadata keys are kept (the public data carries more, e.g. about actions) and written back unchanged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wmkernels.constants import FRAME_SIZE, IMAGE_VOCAB_SIZE

VIDEO_FILE = "video.bin"
SEGMENT_IDS_FILE = "segment_ids.bin"
METADATA_FILE = "metadata.json"
SEGMENT_ID_DTYPE = np.dtype(np.int32)
DEFAULT_TOKEN_DTYPE = "uint32"
DEFAULT_HZ = 30
#: Token dtypes the format allows: unsigned or signed integers of up to 64 bits.
ALLOWED_TOKEN_DTYPES = ("uint16", "uint32", "int32", "int64", "uint64")


class TokenDataError(ValueError):
    """A 1X-format dataset that cannot be read: the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class TokenMetadata:
    """The fields of metadata.json this package uses; `extra` holds every other key, untouched."""

    num_images: int
    s: int = FRAME_SIZE
    token_dtype: str = DEFAULT_TOKEN_DTYPE
    vocab_size: int = IMAGE_VOCAB_SIZE
    hz: int = DEFAULT_HZ
    extra: dict = field(default_factory=dict)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.token_dtype)

    def to_json(self) -> dict:
        out = dict(self.extra)
        out.update(num_images=self.num_images, s=self.s, token_dtype=self.token_dtype,
                   vocab_size=self.vocab_size, hz=self.hz)
        return out

    @classmethod
    def from_json(cls, data: object, path: Path) -> "TokenMetadata":
        """Parse and check the decoded metadata.json (`path` only names the file in errors)."""
        if not isinstance(data, dict):
            raise TokenDataError(path, f"expected a JSON object, found {type(data).__name__}")
        if "num_images" not in data:
            raise TokenDataError(path, "missing required key 'num_images'")
        known = {"num_images", "s", "token_dtype", "vocab_size", "hz"}
        meta = cls(
            num_images=_int_field(data, "num_images", path, minimum=0),
            s=_int_field(data, "s", path, minimum=1, default=FRAME_SIZE),
            token_dtype=str(data.get("token_dtype", DEFAULT_TOKEN_DTYPE)),
            vocab_size=_int_field(data, "vocab_size", path, minimum=1, default=IMAGE_VOCAB_SIZE),
            hz=_int_field(data, "hz", path, minimum=1, default=DEFAULT_HZ),
            extra={k: v for k, v in data.items() if k not in known},
        )
        meta.check(path)
        return meta

    def check(self, path: Path | str) -> None:
        """Raise TokenDataError if the fields contradict each other (e.g. a dtype too small for the vocabulary)."""
        if self.token_dtype not in ALLOWED_TOKEN_DTYPES:
            raise TokenDataError(path, f"token_dtype {self.token_dtype!r} is not one of {ALLOWED_TOKEN_DTYPES}")
        largest = int(np.iinfo(self.dtype).max)
        if self.vocab_size - 1 > largest:
            raise TokenDataError(path, f"vocab_size {self.vocab_size} does not fit token_dtype {self.token_dtype} "
                                       f"(largest value {largest})")


def _int_field(data: dict, key: str, path: Path, minimum: int, default: int | None = None) -> int:
    value = data.get(key, default)
    # bool is an int subclass; `"num_images": true` is a broken file, not 1 frame.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TokenDataError(path, f"'{key}' must be an integer >= {minimum}, found {value!r}")
    return value


def read_metadata(directory: Path | str) -> TokenMetadata:
    """Read and check `directory/metadata.json`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TokenDataError(directory, "dataset directory does not exist")
    path = directory / METADATA_FILE
    if not path.is_file():
        raise TokenDataError(path, "missing file (every 1X-format dataset has metadata.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenDataError(path, f"not valid JSON ({err})") from None
    return TokenMetadata.from_json(data, path)
