"""STMaskGITConfig: the fields of the 1X GENIE `GenieConfig`, read from and written to its `config.json`."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

# Fields GENIE's config.json carries for training only (masking rates, prompt length, dropout). They do not change
# the model we build; they are kept so that a round trip writes them back.
TRAINING_FIELDS = {
    "max_corrupt_rate": 0.2,
    "non_mlm_ratio": 0.5,
    "num_prompt_frames": 8,
    "attn_drop": 0.0,
    "mlp_drop": 0.0,
}
# Older GENIE configs (before the factorized vocabulary) carry these instead.
_LEGACY_TRAINING_FIELDS = ("min_mask_rate", "max_mask_rate", "max_random_token_rate")


def _nth_root(x: int, n: int) -> int:
    root = round(x ** (1 / n))
    for r in (root - 1, root, root + 1):
        if r > 0 and r**n == x:
            return r
    raise ValueError(f"image_vocab_size={x} is not a perfect power num_factored_vocabs={n}")


@dataclasses.dataclass
class STMaskGITConfig:
    """Architecture of a GENIE-style STMaskGIT (names and defaults as in GENIE's GenieConfig).

    The mask token id is `image_vocab_size`; tokens are split into `num_factored_vocabs` digits of base
    `factored_vocab_size` (derived from image_vocab_size when None). `training` keeps the training-only fields.
    """

    num_layers: int
    num_heads: int
    d_model: int
    T: int = 16
    S: int = 256
    image_vocab_size: int = 262144
    use_mup: bool = False
    num_factored_vocabs: int = 1
    factored_vocab_size: int | None = None
    qkv_bias: bool = False
    proj_bias: bool = True
    qk_norm: bool = True
    mlp_ratio: float = 4.0
    mlp_bias: bool = True
    training: dict = dataclasses.field(default_factory=lambda: dict(TRAINING_FIELDS))

    def __post_init__(self):
        for name in ("num_layers", "num_heads", "d_model", "T", "S", "image_vocab_size", "num_factored_vocabs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config.{name} must be a positive int, got {value!r}")
        for name in ("use_mup", "qkv_bias", "proj_bias", "qk_norm", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"config.{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or not (
                0 < self.mlp_ratio < float("inf")):
            raise ValueError(f"config.mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if not isinstance(self.training, dict):
            raise ValueError(f"config.training must be an object, got {self.training!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"config.d_model={self.d_model} is not divisible by config.num_heads={self.num_heads}")
        side = math.isqrt(self.S)
        if side * side != self.S:
            raise ValueError(f"config.S={self.S} must be a square (frames are H x W = S tokens with H = W)")
        root = _nth_root(self.image_vocab_size, self.num_factored_vocabs)
        if self.factored_vocab_size is None:
            self.factored_vocab_size = root
        elif self.factored_vocab_size != root:
            raise ValueError(
                f"config.factored_vocab_size={self.factored_vocab_size} does not match image_vocab_size="
                f"{self.image_vocab_size} ** (1 / num_factored_vocabs={self.num_factored_vocabs}) = {root}"
            )

    @property
    def H(self) -> int:  # noqa: N802 (GENIE's name)
        return math.isqrt(self.S)

    @property
    def W(self) -> int:  # noqa: N802
        return math.isqrt(self.S)

    @property
    def mask_token_id(self) -> int:
        return self.image_vocab_size

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def num_logits(self) -> int:
        """Output channels: num_factored_vocabs * factored_vocab_size."""
        return self.num_factored_vocabs * self.factored_vocab_size

    @classmethod
    def from_dict(cls, data: dict) -> "STMaskGITConfig":
        """From GENIE's config.json contents (flat, or nested under "config"); training fields are kept aside."""
        if set(data) == {"config"} and isinstance(data["config"], dict):
            data = data["config"]
        fields = {f.name for f in dataclasses.fields(cls)} - {"training"}
        missing = [name for name in ("num_layers", "num_heads", "d_model") if name not in data]
        if missing:
            raise ValueError(f"config is missing the required field(s) {missing}")
        kwargs = {k: v for k, v in data.items() if k in fields}
        training = {k: v for k, v in data.items() if k in TRAINING_FIELDS or k in _LEGACY_TRAINING_FIELDS}
        unknown = sorted(set(data) - fields - set(training) - {"training"})
        if unknown:
            warnings.warn(f"config fields {unknown} are not GENIE STMaskGIT fields; ignoring them", stacklevel=2)
        extra = data.get("training", {})
        if not isinstance(extra, dict):
            raise ValueError(f"config.training must be an object, got {extra!r}")
        training.update(extra)
        return cls(**kwargs, training=training)

    def to_dict(self) -> dict:
        """The flat dict GENIE writes as config.json (training fields included)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "training"}
        out.update(self.training)
        return out

    @classmethod
    def from_json(cls, path: str | Path) -> "STMaskGITConfig":
        """Read GENIE's config.json; every problem (not JSON, not UTF-8, a bad field) raises ValueError naming it."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:  # e.g. "num_layers": "2", "training": 5
            raise ValueError(f"{path}: {e}") from e

    def save_json(self, path: str | Path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
