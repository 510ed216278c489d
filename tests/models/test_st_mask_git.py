"""STMaskGIT: parity with the reference GENIE model, logits layout, checkpoints and their errors."""
import json

import pytest
import torch

from tests.models.helpers import tiny_config, tiny_model
from wmkernels.models import CheckpointError, STMaskGIT, STMaskGITConfig
from wmkernels.nn import STTransformer
from wmkernels.nn._layout import is_column_major, store_linear_weights_column_major
from wmkernels.reference.genie import GenieSTMaskGIT


def _reference_for(model: STMaskGIT) -> GenieSTMaskGIT:
    ref = GenieSTMaskGIT(model.config.to_dict())
    ref.load_state_dict(model.state_dict())  # the GENIE names, unchanged
    return ref.to(next(model.parameters()).dtype).eval()


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": False}, {"use_mup": True}, {"num_factored_vocabs": 1},
                                       {"mlp_ratio": 2.0, "qkv_bias": False, "proj_bias": False, "mlp_bias": False}])
def test_compute_logits_matches_reference(overrides):
    model = tiny_model(spread=0.1, **overrides)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.image_vocab_size + 1, (2, cfg.T, cfg.H, cfg.W), generator=g)  # with mask tokens
    with torch.no_grad():
        want64 = _reference_for(model.double()).compute_logits(tokens)
        got64 = model.compute_logits(tokens)
        ref32 = _reference_for(model.float()).compute_logits(tokens)
        got32 = model.compute_logits(tokens)
    assert got32.shape == (2, cfg.num_factored_vocabs * cfg.factored_vocab_size, cfg.T, cfg.H, cfg.W)
    assert (got64 - want64).abs().max() <= 1e-9 * want64.abs().max()
    assert (got32.double() - want64).abs().max() <= 2 * (ref32.double() - want64).abs().max() + 1e-5


def test_logits_layout_and_fewer_frames():
    # Channel j*V + i is digit j (least significant first); frames t < T' do not depend on later frames.
    model = tiny_model(dtype=torch.float64)
    cfg = model.config
    tokens = torch.randint(0, cfg.image_vocab_size, (1, cfg.T, cfg.H, cfg.W))
    with torch.no_grad():
        full = model.compute_logits(tokens)
        head = model.compute_logits(tokens[:, :3])
        per_token = model.forward_tokens(tokens)  # (B, T, S, C)
    torch.testing.assert_close(head, full[:, :, :3], rtol=1e-10, atol=1e-10 * full.abs().max().item())
    torch.testing.assert_close(full[0, :, 2, 1, 3], per_token[0, 2, 1 * cfg.W + 3])


def test_embedding_factorizes_least_significant_first():
    model = tiny_model()
    emb, v = model.token_embed, model.config.factored_vocab_size
    tok = torch.tensor([[3 + 5 * v, model.config.mask_token_id]])
    out = emb(tok)
    torch.testing.assert_close(out[0, 0], emb.factored_embeds[0].weight[3] + emb.factored_embeds[1].weight[5])
    torch.testing.assert_close(out[0, 1], emb.mask_token_embed[0])


def _genie_config_json(cfg: STMaskGITConfig) -> dict:
    # What GENIE's GenieConfig writes: every field, the training-only ones included.
    data = cfg.to_dict()
    data.update(max_corrupt_rate=0.2, non_mlm_ratio=0.5, num_prompt_frames=8, attn_drop=0.0, mlp_drop=0.0)
    return data


@pytest.mark.parametrize("safe", [True, False])
def test_checkpoint_round_trip(tmp_path, safe):
    model = tiny_model(seed=3)
    model.save_pretrained(tmp_path, safe_serialization=safe)
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    loaded = STMaskGIT.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    tokens = torch.randint(0, model.config.image_vocab_size, (1, 4, 4, 4))
    with torch.no_grad():
        assert torch.equal(loaded.compute_logits(tokens), model.compute_logits(tokens))


def _linear_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_linear_weights_stored_column_major(tmp_path):
    # The model keeps its Linear weights column by column (wmkernels.nn._layout); the layout must survive loading a
    # checkpoint (whose tensors are row-major and replace the parameters), and change no result.
    model = tiny_model(seed=5)
    weights = _linear_weights(model)
    assert len(weights) == 6 * model.config.num_layers + 1  # 2 x (qkv, proj), fc1, fc2; the readout
    assert all(is_column_major(w) and w.shape[0] > 1 for w in weights)
    model.save_pretrained(tmp_path)
    loaded = STMaskGIT.from_pretrained(tmp_path).eval()
    assert all(is_column_major(w) for w in _linear_weights(loaded))
    # The same model with row-major weights gives bitwise the same logits.
    row_major = STMaskGIT.from_pretrained(tmp_path).eval()
    for w in _linear_weights(row_major):
        w.data = w.data.contiguous()
    assert not any(is_column_major(w) for w in _linear_weights(row_major))
    tokens = torch.randint(0, model.config.image_vocab_size, (2, 5, 4, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.compute_logits(tokens), row_major.compute_logits(tokens))


def test_store_column_major_keeps_parameters_and_values():
    layer = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    before = [(p, p.detach().clone()) for p in layer.parameters()]
    assert store_linear_weights_column_major(layer) is layer
    after = list(layer.parameters())
    assert all(p is q for (p, _), q in zip(before, after))  # same Parameter objects (optimizers keep theirs)
    assert all(torch.equal(p, v) for p, v in before)
    assert is_column_major(layer[0].weight) and is_column_major(layer[2].weight)


def test_seeded_init_does_not_depend_on_the_weight_layout():
    # init_weights draws every weight in (out, in) order, so a seed gives the model it gave with row-major weights.
    model = STMaskGIT(tiny_config())
    row_major = STMaskGIT(tiny_config())
    for w in _linear_weights(row_major):
        w.data = w.data.contiguous()
    model.init_weights(torch.Generator().manual_seed(7))
    row_major.init_weights(torch.Generator().manual_seed(7))
    for (name, a), b in zip(model.state_dict().items(), row_major.state_dict().values()):
        assert torch.equal(a, b), name


def test_loads_genie_directory_with_training_fields(tmp_path):
    model = tiny_model(seed=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps({"config": _genie_config_json(model.config)}))
    loaded = STMaskGIT.from_pretrained(tmp_path)
    assert loaded.config.training["num_prompt_frames"] == 8
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def _write(tmp_path, cfg, state):
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(_genie_config_json(cfg)))


def test_missing_tensor_is_named(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    del state["decoder.layers.1.mlp.fc1.weight"]
    _write(tmp_path, model.config, state)
    with pytest.raises(CheckpointError, match=r"missing tensor 'decoder\.layers\.1\.mlp\.fc1\.weight'"):
        STMaskGIT.from_pretrained(tmp_path)


def test_misshaped_tensor_is_named(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    state["pos_embed_TSC"] = state["pos_embed_TSC"][:, :4]
    _write(tmp_path, model.config, state)
    with pytest.raises(CheckpointError, match=r"'pos_embed_TSC' has shape \(1, 4, 16, 32\).*\(1, 10, 16, 32\)"):
        STMaskGIT.from_pretrained(tmp_path)


@pytest.mark.parametrize("field, value, named", [
    ("num_layers", 3, r"missing tensor 'decoder\.layers\.2\."),
    ("qk_norm", False, r"'decoder\.layers\.0\.norm1\.weight'"),
    ("d_model", 64, r"'out_x_proj\.weight' has shape"),
])
def test_config_that_does_not_match_is_reported(tmp_path, field, value, named):
    model = tiny_model()
    _write(tmp_path, tiny_config(**{field: value}), model.state_dict())
    with pytest.raises(CheckpointError, match=named):
        STMaskGIT.from_pretrained(tmp_path)


def test_missing_files_and_bad_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        STMaskGIT.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        STMaskGIT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_genie_config_json(tiny_config())))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        STMaskGIT.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="factored_vocab_size"):
        STMaskGITConfig(num_layers=1, num_heads=1, d_model=8, image_vocab_size=256, num_factored_vocabs=2,
                        factored_vocab_size=15)
    with pytest.raises(ValueError, match="square"):
        tiny_config(S=15)
    with pytest.raises(ValueError, match="required"):
        STMaskGITConfig.from_dict({"num_layers": 2})


def test_bad_tokens_raise():
    model = tiny_model()
    cfg = model.config
    with pytest.raises(ValueError, match="outside"):
        model.compute_logits(torch.full((1, 2, 4, 4), cfg.mask_token_id + 1))
    with pytest.raises(ValueError, match="outside"):
        model.compute_logits(torch.full((1, 2, 4, 4), -1))
    with pytest.raises(ValueError, match=r"shape \(B, T, 4, 4\)"):
        model.compute_logits(torch.zeros(1, 2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="more than the model's T=10"):
        model.compute_logits(torch.zeros(1, 11, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="int32 or int64"):
        model.compute_logits(torch.zeros(1, 2, 4, 4))


@pytest.mark.parametrize("qk_norm", [True, False])
def test_prefill_frame_by_frame_equals_one_pass(qk_norm):
    # The two ways of filling the cache store the same K/V (up to rounding) and count the same frames.
    model = tiny_model(seed=3, qk_norm=qk_norm)
    tokens = torch.randint(0, model.config.image_vocab_size, (2, 5, model.config.S), generator=torch.Generator().manual_seed(0))
    caches = [model.new_cache(2), model.new_cache(2)]
    with torch.no_grad():
        model.prefill(tokens, caches[0], frame_by_frame=False)
        model.prefill(tokens, caches[1], frame_by_frame=True)
    for c in caches:
        assert int(c.num_frames) == 5 and c.host_frames == 5
    for a, b in ((caches[0].k, caches[1].k), (caches[0].v, caches[1].v)):
        torch.testing.assert_close(a[:, :, :5], b[:, :, :5], rtol=1e-4, atol=1e-5 * a[:, :, :5].abs().max().item())


@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("cached_before", [0, 3])
@pytest.mark.parametrize("n_commit", [1, 2])
def test_decode_with_commit_equals_commit_then_decode(qk_norm, cached_before, n_commit):
    # decode_logits(frame, cache, commit=frames) runs one pass over the committed frames and the decoded one; it
    # must store the same K/V, count the same frames and give the same logits as committing them one by one first.
    model = tiny_model(seed=5, qk_norm=qk_norm)
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.image_vocab_size, (2, cached_before + n_commit, cfg.S), generator=g)
    frame = torch.randint(0, cfg.mask_token_id + 1, (2, cfg.S), generator=g)  # mask tokens allowed
    caches = [model.new_cache(2), model.new_cache(2)]
    with torch.no_grad():
        for c in caches:
            if cached_before:
                model.prefill(tokens[:, :cached_before], c)
        commit = tokens[:, cached_before:]
        got = model.decode_logits(frame, caches[0], commit=commit if n_commit > 1 else commit[:, 0])
        for i in range(n_commit):
            model.commit_frame(commit[:, i], caches[1])
        want = model.decode_logits(frame, caches[1])
    for c in caches:
        assert int(c.num_frames) == cached_before + n_commit and c.host_frames == cached_before + n_commit
    n = cached_before + n_commit  # not the working slot: decode_logits need not store the decoded frame's K/V
    for a, b in ((caches[0].k, caches[1].k), (caches[0].v, caches[1].v)):
        torch.testing.assert_close(a[:, :, :n], b[:, :, :n], rtol=1e-4, atol=1e-5 * b[:, :, :n].abs().max().item())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("qk_norm", [True, False])
def test_first_pass_on_cpu_is_the_decode_pass(qk_norm, monkeypatch):
    # Into an empty cache on CPU, decode_logits(frame, cache, commit=prompt) runs the decode pass at slot 0 (the
    # fused op), not the layers' causal forward; it stores the K/V and gives the logits of prefill-then-decode.
    model = tiny_model(seed=7, qk_norm=qk_norm)
    cfg = model.config
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, cfg.image_vocab_size, (2, 4, cfg.S), generator=g)
    frame = torch.full((2, cfg.S), cfg.mask_token_id)
    want_cache, cache = model.new_cache(2), model.new_cache(2)
    with torch.inference_mode():
        model.prefill(prompt, want_cache)
        want = model.decode_logits(frame, want_cache)

        def causal_forward(*args, **kwargs):
            raise AssertionError("the causal forward ran")

        monkeypatch.setattr(STTransformer, "forward_prefill", causal_forward)
        got = model.decode_logits(frame, cache, commit=prompt)
    assert int(cache.num_frames) == 4 and cache.host_frames == 4
    for a, b in ((cache.k, want_cache.k), (cache.v, want_cache.v)):  # the 4 committed frames (not the working slot)
        torch.testing.assert_close(a[:, :, :4], b[:, :, :4], rtol=1e-4, atol=1e-5 * b[:, :, :4].abs().max().item())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_first_pass_with_autograd_stays_differentiable():
    # With autograd on, the first pass into an empty cache is the layers' causal forward: the logits have gradients
    # (the decode ops, inference-only, would raise at backward).
    model = tiny_model(seed=8)
    cfg = model.config
    prompt = torch.randint(0, cfg.image_vocab_size, (1, 3, cfg.S), generator=torch.Generator().manual_seed(3))
    logits = model.decode_logits(torch.full((1, cfg.S), cfg.mask_token_id), model.new_cache(1), commit=prompt)
    logits.square().mean().backward()
    grad = model.decoder.layers[0].temporal_attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_decode_with_commit_bad_arguments():
    model = tiny_model()
    cfg = model.config
    frame = torch.zeros(1, cfg.S, dtype=torch.long)
    cache = model.new_cache(1)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"commit must have shape \(B, S\) or \(B, n, S\)"):
            model.decode_logits(frame, cache, commit=torch.zeros(1, cfg.S + 1, dtype=torch.long))
        with pytest.raises(ValueError, match="commit must have shape"):
            model.decode_logits(frame, cache, commit=torch.zeros(2, 1, cfg.S, dtype=torch.long))
        # T_max frames committed leave no slot for the decoded frame.
        with pytest.raises(IndexError, match=f"T_max = {cfg.T}: no room for {cfg.T} more"):
            model.decode_logits(frame, cache, commit=torch.zeros(1, cfg.T, cfg.S, dtype=torch.long))
        assert cache.host_frames == 0 and int(cache.num_frames) == 0
