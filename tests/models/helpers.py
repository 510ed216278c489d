"""Tiny random STMaskGIT models shared by the model and sampler tests."""
import torch

from wmkernels.models import STMaskGIT, STMaskGITConfig


def tiny_config(**overrides) -> STMaskGITConfig:
    fields = dict(num_layers=2, num_heads=4, d_model=32, T=10, S=16, image_vocab_size=256, num_factored_vocabs=2,
                  qk_norm=True, qkv_bias=True)
    fields.update(overrides)
    return STMaskGITConfig(**fields)


def tiny_model(seed: int = 0, dtype=torch.float32, spread: float = 0.3, **overrides) -> STMaskGIT:
    """A random model in eval mode; `spread` (N(0, spread) added to every parameter, well above GENIE's 0.02
    init) makes its logits spread out, so that sampling is not decided by rounding."""
    g = torch.Generator().manual_seed(seed)
    model = STMaskGIT.from_config(tiny_config(**overrides), generator=g)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * spread)
    return model.to(dtype).eval()
