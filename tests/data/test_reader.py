"""TokenDataset: windows, strides, segment filtering, overlap filtering, dtypes, against a naive re-implementation."""
import numpy as np
import pytest
import torch

from wmkernels.data import TokenDataset, window_starts, write_token_dataset


def naive_starts(segment_ids, window_size, stride, filter_segments=True, non_overlapping=False):
    """The public GENIE loop, written plainly: every start, then the segment test, then the overlap test."""
    span = (window_size - 1) * stride
    starts = [s for s in range(len(segment_ids) - span)
              if not filter_segments or segment_ids[s] == segment_ids[s + span]]
    if non_overlapping:
        kept = []
        for s in starts:
            frames = set(range(s, s + span + 1, stride))
            if not any(frames & set(range(k, k + span + 1, stride)) for k in kept):
                kept.append(s)
        starts = kept
    return starts


def frame_numbered(directory, segment_lengths, s=4, token_dtype="uint32", vocab_size=2**18):
    """A dataset whose every token equals its frame's index, so a window reveals which frames it holds."""
    n = sum(segment_lengths)
    tokens = np.broadcast_to(np.arange(n)[:, None, None], (n, s, s)).copy()
    segs = np.repeat(np.arange(len(segment_lengths)), segment_lengths).astype(np.int32)
    write_token_dataset(directory, tokens, segs, token_dtype=token_dtype, vocab_size=vocab_size)
    return segs


@pytest.mark.parametrize("window_size,stride", [(16, 15), (4, 3), (3, 1), (1, 5), (5, 2)])
@pytest.mark.parametrize("non_overlapping", [False, True])
def test_windows_match_naive_definition(tmp_path, window_size, stride, non_overlapping):
    segs = frame_numbered(tmp_path, [40, 7, 300, 1, 95])
    ds = TokenDataset(tmp_path, window_size, stride, non_overlapping=non_overlapping)
    expected = naive_starts(segs, window_size, stride, non_overlapping=non_overlapping)
    assert ds.start_indices.tolist() == expected
    assert len(ds) == len(expected) > 0
    for i in (0, len(ds) // 2, len(ds) - 1):
        window = ds[i]
        assert window.shape == (window_size, 4, 4) and window.dtype == torch.int64
        frames = window[:, 0, 0].tolist()
        assert frames == [expected[i] + k * stride for k in range(window_size)]
        assert segs[frames[0]] == segs[frames[-1]]


def test_segment_filter_drops_exactly_the_crossing_windows(tmp_path):
    segs = frame_numbered(tmp_path, [50, 50, 50])
    kept = TokenDataset(tmp_path, 4, 10).start_indices
    everything = TokenDataset(tmp_path, 4, 10, filter_segments=False).start_indices
    assert everything.tolist() == list(range(150 - 30))
    dropped = sorted(set(everything.tolist()) - set(kept.tolist()))
    assert dropped and all(segs[s] != segs[s + 30] for s in dropped)
    assert all(segs[s] == segs[s + 30] for s in kept.tolist())


def test_non_overlapping_windows_share_no_frame_and_are_maximal(tmp_path):
    frame_numbered(tmp_path, [200, 120])
    ds = TokenDataset(tmp_path, 6, 4, non_overlapping=True)
    valid = TokenDataset(tmp_path, 6, 4).start_indices.tolist()
    frame_sets = [set(ds.frame_indices(i).tolist()) for i in range(len(ds))]
    for i in range(len(frame_sets)):
        for j in range(i):
            assert not frame_sets[i] & frame_sets[j]
    kept = set(ds.start_indices.tolist())
    for s in valid:  # every dropped window clashes with a kept one (greedy is maximal)
        if s not in kept:
            mine = set(range(s, s + 21, 4))
            assert any(mine & f for f in frame_sets)


def test_too_short_dataset_has_no_windows(tmp_path):
    frame_numbered(tmp_path, [10])
    ds = TokenDataset(tmp_path, 16, 15)
    assert len(ds) == 0
    assert ds.windows([]).shape == (0, 16, 4, 4)
    with pytest.raises(IndexError, match="out of range"):
        ds[0]


@pytest.mark.parametrize("token_dtype,vocab", [("uint16", 2**16), ("uint32", 2**18), ("int64", 2**18)])
def test_token_dtypes_read_as_int64(tmp_path, token_dtype, vocab):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(30, 16, 16))
    tokens[0, 0, 0] = vocab - 1  # the largest token survives the narrow dtype
    write_token_dataset(tmp_path, tokens, np.zeros(30, np.int32), token_dtype=token_dtype, vocab_size=vocab)
    ds = TokenDataset(tmp_path, 3, 2)
    assert ds.video.dtype == np.dtype(token_dtype)
    batch = ds.windows(range(len(ds)))
    assert batch.dtype == torch.int64 and batch.shape == (len(ds), 3, 16, 16)
    assert torch.equal(batch[0], torch.from_numpy(tokens[[0, 2, 4]]))


@pytest.mark.parametrize("arg", ["window_size", "stride"])
@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_bad_window_arguments(tmp_path, arg, value):
    frame_numbered(tmp_path, [20])
    with pytest.raises(ValueError, match=arg):
        TokenDataset(tmp_path, **{arg: value})


def test_window_starts_without_segments():
    assert window_starts(None, 10, 3, 2).tolist() == list(range(6))
