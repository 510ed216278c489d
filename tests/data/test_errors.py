"""Bad 1X-format data: each problem raises TokenDataError naming the file and what is wrong."""
import json

import numpy as np
import pytest

from wmkernels.data import TokenDataError, TokenDataset, write_token_dataset


@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(1)
    write_token_dataset(tmp_path, rng.integers(0, 2**18, size=(40, 16, 16)), np.zeros(40, np.int32))
    TokenDataset(tmp_path)  # the unbroken dataset reads fine
    return tmp_path


def edit_metadata(directory, **changes):
    path = directory / "metadata.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def expect_error(directory, file_name, *fragments):
    with pytest.raises(TokenDataError) as info:
        TokenDataset(directory)
    message = str(info.value)
    assert info.value.path.name == file_name and file_name in message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, ValueError)


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", "nope", "does not exist")


@pytest.mark.parametrize("name", ["metadata.json", "video.bin", "segment_ids.bin"])
def test_missing_file(good, name):
    (good / name).unlink()
    expect_error(good, name, "missing file")


def test_video_not_whole_frames(good):
    with open(good / "video.bin", "ab") as f:
        f.write(b"\0" * 12)
    expect_error(good, "video.bin", "not a whole number of frames", "1024 bytes")


def test_segment_ids_not_whole(good):
    with open(good / "segment_ids.bin", "ab") as f:
        f.write(b"\0\0")
    expect_error(good, "segment_ids.bin", "not a whole number")


def test_token_at_vocab_size(good):
    video = np.memmap(good / "video.bin", dtype=np.uint32, mode="r+", shape=(40, 16, 16))
    video[7, 3, 5] = 2**18
    video.flush()
    del video
    expect_error(good, "video.bin", "token 262144", "frame 7, row 3, column 5", "[0, 262144)")


def test_token_above_smaller_declared_vocab(good):
    edit_metadata(good, vocab_size=1000)
    expect_error(good, "video.bin", "outside the vocabulary [0, 1000)")


def test_negative_token_in_signed_dtype(tmp_path):
    write_token_dataset(tmp_path, np.zeros((5, 16, 16), np.int64), np.zeros(5, np.int32), token_dtype="int64")
    video = np.memmap(tmp_path / "video.bin", dtype=np.int64, mode="r+", shape=(5, 16, 16))
    video[4, 0, 0] = -3
    video.flush()
    del video
    expect_error(tmp_path, "video.bin", "token -3 at frame 4")


def test_metadata_num_images_disagrees_with_video(good):
    edit_metadata(good, num_images=41)
    expect_error(good, "video.bin", "holds 40 frames", "num_images=41")


def test_metadata_frame_size_disagrees_with_video(good):
    edit_metadata(good, s=8, num_images=160)  # 40 16x16 frames are 160 8x8 frames: sizes fit, ids do not
    expect_error(good, "segment_ids.bin", "holds 40 segment ids", "num_images=160")


def test_metadata_token_dtype_disagrees_with_video(good):
    edit_metadata(good, token_dtype="int64")  # 40 uint32 frames are 20 int64 frames
    expect_error(good, "video.bin", "holds 20 frames", "int64", "num_images=40")


def test_segment_ids_count_disagrees(good):
    np.zeros(39, np.int32).tofile(good / "segment_ids.bin")
    expect_error(good, "segment_ids.bin", "holds 39 segment ids", "num_images=40")


@pytest.mark.parametrize("changes,fragment", [
    ({"token_dtype": "float32"}, "token_dtype 'float32'"),
    ({"token_dtype": "uint16"}, "does not fit token_dtype uint16"),
    ({"num_images": -1}, "'num_images' must be an integer"),
    ({"num_images": True}, "'num_images' must be an integer"),
    ({"s": "16"}, "'s' must be an integer"),
])
def test_bad_metadata_fields(good, changes, fragment):
    edit_metadata(good, **changes)
    expect_error(good, "metadata.json", fragment)


def test_metadata_without_num_images(good):
    (good / "metadata.json").write_text(json.dumps({"s": 16}))
    expect_error(good, "metadata.json", "missing required key 'num_images'")


@pytest.mark.parametrize("text,fragment", [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_metadata_not_an_object(good, text, fragment):
    (good / "metadata.json").write_text(text)
    expect_error(good, "metadata.json", fragment)
