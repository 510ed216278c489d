"""write_token_dataset round trip and its argument checks; the synthetic generator."""
import json

import numpy as np
import pytest
import torch

from wmkernels.data import (
    TokenDataset, read_metadata, synthetic_tokens, write_synthetic_dataset, write_token_dataset,
)


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("token_dtype", ["uint32", "uint16"])
def test_round_trip(tmp_path, as_tensor, token_dtype):
    vocab = 2**16 if token_dtype == "uint16" else 2**18
    tokens, segs = synthetic_tokens(3, 40, seed=3, vocab_size=vocab)
    before = tokens.copy(), segs.copy()
    args = (torch.from_numpy(tokens), torch.from_numpy(segs)) if as_tensor else (tokens, segs)
    meta = write_token_dataset(tmp_path, *args, vocab_size=vocab, token_dtype=token_dtype, hz=10,
                               extra_metadata={"note": [1, 2]})
    assert np.array_equal(tokens, before[0]) and np.array_equal(segs, before[1])  # inputs untouched
    again = read_metadata(tmp_path)
    assert again == meta and again.extra == {"note": [1, 2]} and again.hz == 10
    ds = TokenDataset(tmp_path, window_size=1, stride=1, filter_segments=False)
    assert np.array_equal(np.asarray(ds.video), tokens) and np.array_equal(np.asarray(ds.segment_ids), segs)
    assert torch.equal(ds.windows(range(len(ds)))[:, 0], torch.from_numpy(tokens))
    # a second write replaces the first
    write_token_dataset(tmp_path, tokens[:5], segs[:5], vocab_size=vocab, token_dtype=token_dtype)
    assert read_metadata(tmp_path).num_images == 5 and len(TokenDataset(tmp_path, 1, 1)) == 5


@pytest.mark.parametrize("kwargs,error,fragment", [
    (dict(tokens=np.zeros((4, 16, 8), np.int64)), ValueError, "shape (N, s, s)"),
    (dict(tokens=np.zeros((4, 16, 16), np.float32)), ValueError, "must be integers"),
    (dict(tokens=np.full((4, 16, 16), 2**18)), ValueError, "must lie in [0, 262144)"),
    (dict(tokens=np.full((4, 16, 16), -1)), ValueError, "must lie in [0, 262144)"),
    (dict(segment_ids=np.zeros(3, np.int32)), ValueError, "segment_ids must have shape (4,)"),
    (dict(segment_ids=np.full(4, 2**40)), ValueError, "fit int32"),
    (dict(token_dtype="uint16"), ValueError, "does not fit token_dtype uint16"),
    (dict(token_dtype="float64"), ValueError, "token_dtype 'float64'"),
    (dict(tokens=[[[1]]]), TypeError, "tokens must be a numpy array"),
])
def test_writer_rejects_bad_arguments(tmp_path, kwargs, error, fragment):
    args = dict(tokens=np.zeros((4, 16, 16), np.int64), segment_ids=np.zeros(4, np.int32))
    args.update(kwargs)
    with pytest.raises(error) as info:
        write_token_dataset(tmp_path / "out", **args)
    assert fragment in str(info.value)
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_synthetic_is_deterministic_and_in_vocab(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", 2, 50, seed=7)
    write_synthetic_dataset(tmp_path / "b", 2, 50, seed=7)
    write_synthetic_dataset(tmp_path / "c", 2, 50, seed=8)
    read = lambda d: (d / "video.bin").read_bytes()  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b") != read(tmp_path / "c")
    assert a.num_images == 100 and json.loads((tmp_path / "a" / "metadata.json").read_text())["synthetic"]["seed"] == 7
    TokenDataset(tmp_path / "a")  # the reader's range check passes
    tokens, _ = synthetic_tokens(2, 50, seed=7, vocab_size=1000)
    assert tokens.min() >= 0 and tokens.max() < 1000


def test_synthetic_has_learnable_motion():
    """At 2 Hz frames change, yet every token of the next frame is found near the same cell of the previous one."""
    tokens, segs = synthetic_tokens(4, 300, seed=0, noise=0.0)
    frames = tokens.reshape(4, 300, 16, 16)[:, ::15]  # 2 Hz, within each segment
    prev, nxt = frames[:, :-1].reshape(-1, 16, 16), frames[:, 1:].reshape(-1, 16, 16)
    assert (prev == nxt).mean() < 0.98  # not a still image
    padded = np.pad(prev, ((0, 0), (2, 2), (2, 2)), mode="edge")
    near = np.zeros(nxt.shape, bool)
    for dr in range(5):
        for dc in range(5):
            near |= padded[:, dr:dr + 16, dc:dc + 16] == nxt
    assert near.mean() > 0.95  # local motion: predictable from the past, unlike random tokens
    distinct = np.unique(tokens).size
    assert distinct <= 20  # a fixed palette: structure, not noise
    # both 512-way factors of the tokens vary
    assert np.unique(tokens % 512).size > 1 and np.unique(tokens // 512).size > 1
    assert (segs[1:] >= segs[:-1]).all()


@pytest.mark.parametrize("kwargs", [dict(num_segments=0), dict(s=3), dict(noise=1.5), dict(vocab_size=10)])
def test_synthetic_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        synthetic_tokens(**kwargs)
