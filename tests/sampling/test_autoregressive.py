"""Token-by-token sampling: the static-KV-cache sampler gives exactly the uncached reference's tokens."""
import pytest
import torch

from wmkernels.models import CausalDecoderConfig, CausalTokenDecoder
from wmkernels.sampling import autoregressive_generate


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = CausalDecoderConfig(num_layers=2, num_heads=4, d_model=32, max_frames=4, S=9, image_vocab_size=64)
    model = CausalTokenDecoder(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.to(dtype).eval()


def _prompt(model, batch, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.image_vocab_size, (batch, frames, 3, 3), generator=g)


@pytest.mark.parametrize("batch, prompt_frames, new_frames", [(1, 1, 2), (3, 2, 2), (2, 1, 3)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_equals_uncached(batch, prompt_frames, new_frames, temperature):
    model = _model(seed=batch + prompt_frames)
    prompt = _prompt(model, batch, prompt_frames)
    cached = autoregressive_generate(model, prompt, new_frames, temperature, torch.Generator().manual_seed(5),
                                     progress=False)
    uncached = autoregressive_generate(model, prompt, new_frames, temperature, torch.Generator().manual_seed(5),
                                       use_cache=False, progress=False)
    assert cached.shape == (batch, prompt_frames + new_frames, 3, 3) and cached.dtype == torch.int64
    assert torch.equal(cached[:, :prompt_frames], prompt)
    assert torch.equal(cached, uncached)


def test_cached_logits_equal_full_pass():
    model = _model(dtype=torch.float64)
    seq = _prompt(model, 2, 3).reshape(2, -1)
    full = model(seq)
    cache = model.new_cache(2)
    pre = model.forward_cached(seq[:, :10], cache, torch.arange(10))
    steps = [model.forward_cached(seq[:, i:i + 1], cache, torch.tensor([i])) for i in range(10, seq.shape[1])]
    got = torch.cat([pre, *steps], dim=1)
    assert (got - full).abs().max() <= 1e-12 * full.abs().max()


def test_bad_arguments():
    model = _model()
    with pytest.raises(ValueError, match="max_frames"):
        autoregressive_generate(model, _prompt(model, 1, 2), 3, progress=False)
    with pytest.raises(ValueError, match="shape"):
        autoregressive_generate(model, torch.zeros(1, 1, 4, 4, dtype=torch.long), 1, progress=False)
    with pytest.raises(ValueError, match="tokens must be in"):
        autoregressive_generate(model, torch.full((1, 1, 3, 3), 64), 1, progress=False)
    with pytest.raises(TypeError, match="int32 or int64"):
        autoregressive_generate(model, torch.zeros(1, 1, 3, 3), 1, progress=False)
