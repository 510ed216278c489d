"""Loading and saving GENIE checkpoint directories (config.json + model.safetensors or a torch file).

The tensor names are GENIE's, used as they are. Every mismatch between the files and the model the config
describes is reported by tensor name, with the config field that most likely disagrees.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from wmkernels.models.config import STMaskGITConfig
from wmkernels.nn._layout import store_linear_weights_column_major

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
# Torch files read with weights_only=True, in this order of preference.
TORCH_NAMES = ("pytorch_model.bin", "model.pt", "model.pth")


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not match its config (missing, unexpected or mis-shaped tensors)."""


def _hint(name: str, shape_mismatch: bool) -> str:
    """The config field(s) a tensor's presence (or, with shape_mismatch, its shape) depends on."""
    if name == "pos_embed_TSC":
        return "T, S, d_model"
    if name.startswith("token_embed"):
        return "num_factored_vocabs, factored_vocab_size (image_vocab_size), d_model"
    if name.startswith("out_x_proj"):
        return "image_vocab_size, num_factored_vocabs, d_model"
    if shape_mismatch:
        if re.search(r"attn\.norm\.", name):
            return "d_model, num_heads"
        return "mlp_ratio, d_model" if "mlp" in name else "d_model"
    if re.search(r"attn\.norm\.", name) or re.search(r"\.norm[12]\.", name):
        return "qk_norm"
    for suffix, field in (("qkv.bias", "qkv_bias"), ("proj.bias", "proj_bias"), ("fc1.bias", "mlp_bias"),
                          ("fc2.bias", "mlp_bias")):
        if name.endswith(suffix):
            return field
    return "num_layers"


def _order(name: str):
    # Model-level tensors first: their shapes tell the most about a config mismatch.
    return (name.startswith("decoder."), name)


def _load_safetensors(path: Path, map_location) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - safetensors is a dependency of the models extra
        raise ImportError(f"reading {path} needs the safetensors package (pip install safetensors)") from e
    try:
        return load_file(str(path), device=str(map_location))
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError) on a bad file
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e


def _load_torch_file(path: Path, map_location) -> dict:
    """A torch file read with weights_only=True: tensors and plain containers only, never arbitrary objects."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global it does not allow-list: a class, or a function such as os.system
        # that a crafted pickle would call while loading. Nothing of the file has run. (torch's own message goes
        # on to suggest weights_only=False, which is exactly what must not be done with such a file: keep only
        # its diagnosis.)
        detail = next((line.strip() for line in str(e).splitlines() if "unsupported" in line.lower()), "")
        if "global" in detail.lower():
            raise CheckpointError(
                f"{path} was refused: it holds Python objects other than tensors, which loading would have to run "
                f"(torch.load(weights_only=True) refuses them; re-save the state dict, or use safetensors): "
                f"{detail}") from e
        raise CheckpointError(f"{path} is not a readable torch file (corrupt or truncated?): {detail or e}") from e
    except Exception as e:  # a truncated zip, a file that is not a torch file, ...
        raise CheckpointError(f"{path} is not a readable torch file (corrupt or truncated?): {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def read_state_dict(directory: Path, map_location="cpu") -> dict:
    """The tensors of directory/model.safetensors (preferred) or of the first torch file of TORCH_NAMES.

    Every value must be a floating-point tensor; a file that cannot be read raises CheckpointError naming it.
    """
    path = directory / SAFETENSORS_NAME
    if path.is_file():
        state = _load_safetensors(path, map_location)
    else:
        path = next((directory / name for name in TORCH_NAMES if (directory / name).is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"{directory} has no weights: expected {SAFETENSORS_NAME} or one of {list(TORCH_NAMES)}")
        state = _load_torch_file(path, map_location)
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        if not value.dtype.is_floating_point:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {value.dtype}; the model's weights are "
                                  "floating point")
    return state


def check_state_dict(model: torch.nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped tensor of `state` for `model`."""
    expected = model.state_dict()
    problems = []
    for name in sorted(set(expected) - set(state), key=_order):
        problems.append(f"missing tensor {name!r} (expected shape {tuple(expected[name].shape)}; "
                        f"check config {_hint(name, False)})")
    for name in sorted(set(state) - set(expected), key=_order):
        problems.append(f"unexpected tensor {name!r} of shape {tuple(state[name].shape)} "
                        f"(check config {_hint(name, False)})")
    for name in sorted(set(state) & set(expected), key=_order):
        got, want = tuple(state[name].shape), tuple(expected[name].shape)
        if got != want:
            problems.append(f"tensor {name!r} has shape {got}, but the config gives {want} "
                            f"(check config {_hint(name, True)})")
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise CheckpointError(f"{source} does not match its config:\n  " + "\n  ".join(shown))


def load_pretrained(cls, directory, backend=None, map_location="cpu"):
    """Build `cls(config)` from directory/config.json and load its weights strictly (see CheckpointError)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}")
    config = STMaskGITConfig.from_json(config_path)
    state = read_state_dict(directory, map_location)
    with torch.device("meta"):
        model = cls(config, backend=backend)
    check_state_dict(model, state, source=str(directory))
    model.load_state_dict(state, strict=True, assign=True)  # the file's tensors become the parameters: re-store
    return store_linear_weights_column_major(model.to(map_location))  # the Linear weights as the model keeps them


def save_pretrained(model, directory, safe_serialization: bool = True) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_json(directory / CONFIG_NAME)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(state, str(directory / SAFETENSORS_NAME), metadata={"format": "pt"})
    else:
        torch.save(state, directory / TORCH_NAMES[0])
