"""The `Sampler` protocol a submission implements, how `--sampler` specs are loaded, and the output check.

A sampler is any object with

    generate(prompt, num_new_frames, **opts) -> tokens

    prompt:          int64 tensor (B, T0, H, W) on the benchmark's device, tokens in [0, vocab_size)
    num_new_frames:  N >= 1 frames to append
    opts:            keyword options; the harness passes `steps` (MaskGIT steps per frame) and
                     `temperature` (always 0.0: the run must be deterministic so it can be checked
                     against the reference sampler). Ignore options you do not use.
    returns:         int64 tensor (B, T0 + N, H, W), on any device, holding the prompt unchanged in its
                     first T0 frames followed by the N generated frames, every token in [0, vocab_size).

`--sampler` takes a built-in name (see `BUILTIN_SAMPLERS`) or `module:attribute` (the module must be
importable, e.g. from the current directory). The attribute may be

    * an object with a `generate` method: used as it is;
    * a class or any other callable: called with a `SamplerContext` if it takes a positional argument
      (else with none), and must return such an object. The context gives the device, dtype, vocabulary, frame size and `context.model()`, the
      benchmark's world model (loaded once per process), so a submission can sample from the same weights.

Every sampler is run in its own worker process (see `worker.py`), so `model()` and any CUDA state are per
sampler, and a sampler that hangs can be killed.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class Sampler(Protocol):
    """What `--sampler` loads: `generate(prompt (B,T0,H,W), num_new_frames, **opts) -> (B,T0+N,H,W) int64`."""

    def generate(self, prompt: torch.Tensor, num_new_frames: int, **opts: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplerContext:
    """What a sampler factory is given. Plain data, so it can be sent to a worker process.

    model_fields: the GENIE config fields of the benchmark's model (preset, or read from the checkpoint)
    checkpoint:   local checkpoint directory, or None for random weights drawn from `seed`
    """

    device: str
    dtype: str
    vocab_size: int
    frame_size: int
    max_frames: int
    steps: int
    seed: int
    model_fields: dict = field(default_factory=dict)
    checkpoint: str | None = None

    def model(self):
        """The world model under test (`wmkernels.models.STMaskGIT`), built once per process.

        Raises `wmkernels.bench.builtin.ModelUnavailable` where the model API is not installed.
        """
        from wmkernels.bench import builtin  # lazily: the model code is optional for the harness itself

        return builtin.cached_model(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


class SamplerLoadError(RuntimeError):
    """A `--sampler` spec that does not resolve to a sampler; the message says why."""


class BadOutput(RuntimeError):
    """A sampler returned tokens of the wrong shape, dtype, range, or with the prompt altered."""


def _repeat_last(context: SamplerContext):
    from wmkernels.bench.baselines import RepeatLastFrame

    return RepeatLastFrame()


def _maskgit(use_cache: bool) -> Callable[[SamplerContext], Any]:
    def factory(context: SamplerContext):
        from wmkernels.bench import builtin

        return builtin.MaskGITSampler(context, use_cache=use_cache)

    return factory


#: Built-in samplers by name: name -> (factory, one-line description).
BUILTIN_SAMPLERS: dict[str, tuple[Callable[[SamplerContext], Any], str]] = {
    "maskgit": (_maskgit(True), "the package's KV-cached MaskGIT sampler (wmkernels.sampling.maskgit_generate)"),
    "maskgit-uncached": (_maskgit(False), "GENIE's uncached MaskGIT sampler (maskgit_generate, use_cache=False): "
                                          "the reference"),
    "repeat-last": (_repeat_last, "trivial baseline that repeats the last prompt frame; needs no model"),
}


def load_sampler(spec: str, context: SamplerContext) -> Sampler:
    """Resolve a built-in name or `module:attribute` to a Sampler (see the module docstring)."""
    if spec in BUILTIN_SAMPLERS:
        obj = BUILTIN_SAMPLERS[spec][0](context)
    else:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise SamplerLoadError(f"sampler {spec!r} is neither a built-in ({', '.join(BUILTIN_SAMPLERS)}) "
                                   "nor of the form module:attribute")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as err:
            raise SamplerLoadError(f"cannot import module {module_name!r} for sampler {spec!r}: {err}") from err
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise SamplerLoadError(f"module {module_name!r} has no attribute {attr!r} (sampler {spec!r})")
            obj = getattr(obj, part)
        if isinstance(obj, type) or not callable(getattr(obj, "generate", None)):
            if not callable(obj):
                raise SamplerLoadError(f"{spec!r} is neither an object with a generate() method nor a callable "
                                       f"returning one (it is a {type(obj).__name__})")
            obj = obj(context) if _takes_argument(obj) else obj()
    if not callable(getattr(obj, "generate", None)):
        raise SamplerLoadError(f"{spec!r} gave a {type(obj).__name__}, which has no generate() method")
    return obj


def _takes_argument(factory: Callable) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: give them the context
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                  inspect.Parameter.VAR_POSITIONAL)
    return any(p.kind in positional for p in params)


def check_output(tokens: object, prompt: torch.Tensor, num_new_frames: int, vocab_size: int) -> torch.Tensor:
    """Return `tokens` on the CPU if it honours the protocol for `prompt`; raise BadOutput saying why."""
    b, t0, h, w = prompt.shape
    want = (b, t0 + num_new_frames, h, w)
    if not isinstance(tokens, torch.Tensor):
        raise BadOutput(f"generate() returned a {type(tokens).__name__}, expected a torch.Tensor {want}")
    if tuple(tokens.shape) != want:
        raise BadOutput(f"generate() returned shape {tuple(tokens.shape)}, expected {want} "
                        "(B, prompt frames + new frames, H, W)")
    if tokens.dtype != torch.int64:
        raise BadOutput(f"generate() returned dtype {tokens.dtype}, expected torch.int64")
    tokens = tokens.detach().cpu()
    if tokens.numel():
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            raise BadOutput(f"generate() returned tokens in [{low}, {high}], outside the vocabulary [0, {vocab_size})")
    if not torch.equal(tokens[:, :t0], prompt.cpu()):
        raise BadOutput("generate() changed the prompt frames (the first T0 output frames must equal the prompt)")
    return tokens
