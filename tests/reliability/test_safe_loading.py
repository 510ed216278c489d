"""Safe loading: a checkpoint whose pickle would run code is refused (and runs nothing); corrupt or truncated
checkpoint, config and data files raise clear errors naming the file, never a partly loaded model."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from wmkernels import STMaskGIT
from wmkernels.data import TokenDataError, TokenDataset, write_token_dataset
from wmkernels.models import CheckpointError

CONFIG = dict(num_layers=1, num_heads=2, d_model=16, T=2, S=4, image_vocab_size=64, num_factored_vocabs=2)


class WritesMarker:
    """Unpickling this runs os.system: the attack a torch file read without weights_only allows."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class OpensMarker:
    """A second payload without a shell: unpickling calls open(marker, "w"), which creates the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def checkpoint(tmp_path):
    model = STMaskGIT.from_config(CONFIG, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "ckpt", safe_serialization=False)
    return tmp_path / "ckpt", model


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("payload", [WritesMarker, OpensMarker])
@pytest.mark.parametrize("how", ["zip", "legacy", "raw-pickle"])
def test_pickle_that_runs_code_is_refused_and_runs_nothing(checkpoint, tmp_path, payload, how):
    directory, model = checkpoint
    marker = tmp_path / "pwned"
    state = _state(model)
    state["pos_embed_TSC"] = payload(marker)
    path = directory / "pytorch_model.bin"
    if how == "raw-pickle":
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=how == "zip")
    # The payload does run when unpickled without weights_only (the test would be vacuous otherwise).
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(payload(probe)))
    assert probe.exists()
    # A torch file names the blocked global; a raw pickle (protocol 5) fails on its first opcode already.
    with pytest.raises(CheckpointError, match="not a readable torch file" if how == "raw-pickle" else
                       "was refused: it holds Python objects") as info:
        STMaskGIT.from_pretrained(directory)
    assert str(path) in str(info.value)
    assert not marker.exists(), "loading the checkpoint ran code from its pickle"
    assert "weights_only` set to `False`" not in str(info.value), "the error must not advise the unsafe load"


def test_torch_file_round_trip_still_loads(checkpoint):
    directory, model = checkpoint
    loaded = STMaskGIT.from_pretrained(directory)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "torch"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_or_truncated_weights_name_the_file(tmp_path, safe, damage):
    model = STMaskGIT.from_config(CONFIG)
    model.save_pretrained(tmp_path, safe_serialization=safe)
    path = tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x93NUMPY" + bytes(range(256)) * 4,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        STMaskGIT.from_pretrained(tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("bad", ["int-tensor", "not-a-tensor"])
def test_non_float_or_non_tensor_entries_are_refused(checkpoint, bad):
    directory, model = checkpoint
    state = _state(model)
    state["out_x_proj.bias"] = state["out_x_proj.bias"].long() if bad == "int-tensor" else 3
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="out_x_proj.bias") as info:
        STMaskGIT.from_pretrained(directory)
    assert "pytorch_model.bin" in str(info.value)


@pytest.mark.parametrize("text,fragment", [
    ('{"num_layers": 1, ', "not valid JSON"),
    (b'{"num_layers": "\xff\xfe"}', "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"num_layers": "1", "num_heads": 2, "d_model": 16}', "config.num_layers must be a positive int"),
    ('{"num_layers": 1, "num_heads": 2, "d_model": 16, "training": 5}', "config.training must be an object"),
    ('{"num_layers": 1, "num_heads": 2, "d_model": 16, "qk_norm": "yes"}', "config.qk_norm must be true or false"),
    ('{"num_layers": 1, "num_heads": 2, "d_model": 16, "mlp_ratio": "4"}', "config.mlp_ratio must be a positive"),
])
def test_corrupt_config_names_the_file(checkpoint, text, fragment):
    directory, _ = checkpoint
    path = directory / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=fragment) as info:
        STMaskGIT.from_pretrained(directory)
    assert str(path) in str(info.value)


# --- data files (tests/data/test_errors.py has the rest) -------------------------------------------------------


@pytest.fixture
def dataset(tmp_path):
    write_token_dataset(tmp_path, np.zeros((20, 16, 16), np.int64), np.zeros(20, np.int32))
    return tmp_path


def test_metadata_not_utf8_names_the_file(dataset):
    (dataset / "metadata.json").write_bytes(b'{"num_images": 20, "hz": "\xff"}')
    with pytest.raises(TokenDataError, match="metadata.json") as info:
        TokenDataset(dataset)
    assert info.value.path.name == "metadata.json"


@pytest.mark.parametrize("hz", ["30", -1, 0, True, None])
def test_metadata_bad_hz_names_the_field(dataset, hz):
    meta = json.loads((dataset / "metadata.json").read_text())
    meta["hz"] = hz
    (dataset / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(TokenDataError, match="'hz' must be an integer"):
        TokenDataset(dataset)


@pytest.mark.parametrize("cut", [1, 1024, 20 * 1024 - 4])
def test_truncated_video_is_refused(dataset, cut):
    path = dataset / "video.bin"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])
    with pytest.raises(TokenDataError, match="video.bin"):
        TokenDataset(dataset)
