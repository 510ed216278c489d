"""The `--preset` choices: model shape, data, and how long to time, for `wmk-bench`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wmkernels.constants import FACTORED_VOCAB_SIZE, IMAGE_VOCAB_SIZE, NUM_FACTORED_VOCABS

# The defaults of the public GENIE code's GenieConfig; a preset overrides the shape.
_GENIE_DEFAULTS = dict(T=16, S=256, image_vocab_size=IMAGE_VOCAB_SIZE, num_factored_vocabs=NUM_FACTORED_VOCABS,
                       factored_vocab_size=FACTORED_VOCAB_SIZE, qk_norm=True, qkv_bias=False, proj_bias=True,
                       mlp_ratio=4.0, mlp_bias=True, use_mup=False)


#: The model trained for the tiny preset (python -m wmkernels.bench.train_tiny), shipped inside the package.
TINY_CHECKPOINT = Path(__file__).parent / "assets" / "tiny"


@dataclass(frozen=True)
class Preset:
    """model: GENIE config fields (random weights from --seed unless a checkpoint is used); checkpoint: the
    default of --checkpoint; synthetic: the data generated when no --data is given; the rest are the defaults
    of the flags of the same names."""

    description: str
    model: dict
    synthetic: dict = field(default_factory=lambda: dict(num_segments=6, frames_per_segment=300))
    batch_size: int = 1
    steps: int = 2
    prompt_frames: int = 8
    new_frames: int = 8
    num_windows: int = 4
    warmup: int = 1
    repeats: int = 3
    horizons: tuple[int, ...] = (1, 2, 4, 8)
    checkpoint: str | None = None


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        description="a 2-layer d_model 64 model trained on synthetic data (shipped in the package), on that data: "
                    "the whole run in about a minute on a laptop CPU",
        model=dict(_GENIE_DEFAULTS, num_layers=2, num_heads=4, d_model=64),
        repeats=2,
        checkpoint=str(TINY_CHECKPOINT) if (TINY_CHECKPOINT / "config.json").is_file() else None,
    ),
    "genie-35m": Preset(
        description="GENIE baseline shape, 35M parameters: 32 layers, d_model 256, 8 heads, T=16, S=256",
        model=dict(_GENIE_DEFAULTS, num_layers=32, num_heads=8, d_model=256),
        num_windows=8,
    ),
    "genie-138m": Preset(
        description="GENIE 138M shape: 32 layers, d_model 512, 8 heads, T=16, S=256",
        model=dict(_GENIE_DEFAULTS, num_layers=32, num_heads=8, d_model=512),
        num_windows=8,
    ),
}
