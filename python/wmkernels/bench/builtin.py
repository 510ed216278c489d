"""Everything of the benchmark that touches the world model and its samplers (issue 5), in one place.

The harness imports this module lazily, so it runs (with the model-free samplers) where `wmkernels.models`
and `wmkernels.sampling` are absent; each function here then raises `ModelUnavailable`, which the harness
reports as a reason, never as a crash. The functions are written against the agreed API:

    wmkernels.models.STMaskGIT.from_config(config) / .from_pretrained(directory)
    model.compute_logits(tokens (B,T,H,W)) -> (B, num_factored_vocabs * factored_vocab_size, T, H, W)
    wmkernels.sampling.maskgit_generate(model, prompt, num_new_frames, steps, temperature, unmask_mode,
                                        generator, use_cache, progress) -> GenerationResult(tokens, first_step_logits)

"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from wmkernels.bench.protocol import SamplerContext

#: The GENIE config fields the benchmark reports (and the presets set).
MODEL_FIELDS = ("num_layers", "num_heads", "d_model", "T", "S", "image_vocab_size", "num_factored_vocabs",
                "factored_vocab_size", "qk_norm", "qkv_bias", "proj_bias", "mlp_ratio", "mlp_bias", "use_mup")


class ModelUnavailable(RuntimeError):
    """The world model, its samplers or one of their metrics cannot run in this installation; says why."""


def _api():
    try:
        from wmkernels.models import STMaskGIT
        from wmkernels.sampling import maskgit_generate
    except ImportError as err:
        raise ModelUnavailable("the world model and its samplers (wmkernels.models, wmkernels.sampling, "
                               f"issue 5) are not part of this installation ({err})") from None
    return STMaskGIT, maskgit_generate


def model_api_available() -> tuple[bool, str | None]:
    """(True, None) when the model API imports, else (False, the reason)."""
    try:
        _api()
    except ModelUnavailable as err:
        return False, str(err)
    return True, None


def read_checkpoint_fields(directory: str | Path) -> dict:
    """The GENIE config fields of a checkpoint directory's config.json (training-only keys dropped).

    Needs no model code, so the harness can size prompts and report the model before loading anything.
    """
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing file (a GENIE checkpoint directory holds config.json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    missing = [k for k in ("num_layers", "num_heads", "d_model") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing required GENIE config keys {missing}")
    fields = {k: data[k] for k in MODEL_FIELDS if k in data}
    if "factored_vocab_size" not in fields and "image_vocab_size" in fields:
        # GENIE derives it: the num_factored_vocabs-th root of the vocabulary.
        n = int(fields.get("num_factored_vocabs", 1))
        fields["factored_vocab_size"] = round(int(fields["image_vocab_size"]) ** (1.0 / n))
    return fields


def build_model(model_fields: dict, checkpoint: str | None, device: str, dtype: torch.dtype, seed: int):
    """The world model under test, in eval mode on `device`/`dtype`.

    Random weights are drawn after `torch.manual_seed(seed)`, so every worker process and every rank builds
    the same model.
    """
    STMaskGIT, _ = _api()
    if checkpoint is not None:
        model = STMaskGIT.from_pretrained(checkpoint)
    else:
        torch.manual_seed(seed)
        model = STMaskGIT.from_config(dict(model_fields))
    return model.to(device=device, dtype=dtype).eval()


_MODELS: dict[tuple, Any] = {}


def cached_model(context: SamplerContext):
    """`build_model` for a context, once per process (a worker runs one sampler, so this is one model)."""
    key = (context.checkpoint, tuple(sorted(context.model_fields.items())), context.device, context.dtype,
           context.seed)
    if key not in _MODELS:
        _MODELS[key] = build_model(context.model_fields, context.checkpoint, context.device,
                                   context.torch_dtype, context.seed)
    return _MODELS[key]


class MaskGITSampler:
    """The built-in samplers `maskgit` (KV-cached) and `maskgit-uncached` (GENIE's, the reference).

    Each call draws its random unmasking order from a generator seeded with the context's seed, so the
    cached and uncached samplers (which draw in the same order) give the same tokens at temperature 0.
    """

    def __init__(self, context: SamplerContext, use_cache: bool):
        _, self._generate = _api()
        self.model = context.model()
        self.use_cache = use_cache
        self.seed = context.seed

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, num_new_frames: int, steps: int = 2, temperature: float = 0.0,
                 **opts: Any) -> torch.Tensor:
        """prompt: (B, T0, H, W) int64 -> (B, T0 + num_new_frames, H, W) int64."""
        generator = torch.Generator(device=prompt.device).manual_seed(self.seed)
        result = self._generate(self.model, prompt, num_new_frames, steps=steps, temperature=temperature,
                                unmask_mode="random", generator=generator, use_cache=self.use_cache,
                                progress=False)
        return result.tokens


def teacher_forced_metrics(context: SamplerContext, windows: torch.Tensor, prompt_frames: int) -> list[dict]:
    """Teacher-forced cross-entropy and token accuracy of the model on data windows, one dict per window.

    windows: (B, T, H, W) int64 ground truth. For each frame t >= prompt_frames the model sees the true
    frames before t and frame t fully masked (MaskGIT's first step); the loss is GENIE's cross-entropy over
    the factorized logits. Returns [{"ce_sum": float, "correct": int, "tokens": int}] per window, sums over
    its predicted tokens, so shards can be added up exactly.

    Computed with the frame KV cache (`wmkernels.sampling.teacher_forced_logits`: one prefill, then one masked
    decode and one commit per frame), which gives the same logits as GENIE's full forward.
    """
    _api()
    from wmkernels.sampling import factorized_argmax, factorized_cross_entropy, teacher_forced_logits

    model = context.model()
    cfg = model.config
    truth = windows.to(next(model.parameters()).device).long()
    logits = teacher_forced_logits(model, truth, prompt_frames)
    targets = truth[:, prompt_frames:]
    predicted = factorized_argmax(logits, cfg.num_factored_vocabs, cfg.factored_vocab_size)
    rows = []
    for b in range(truth.shape[0]):
        tokens = targets[b].numel()
        ce = factorized_cross_entropy(logits[b:b + 1], targets[b:b + 1], cfg.num_factored_vocabs,
                                      cfg.factored_vocab_size)
        rows.append({"ce_sum": float(ce) * tokens, "correct": int((predicted[b] == targets[b]).sum()),
                     "tokens": tokens})
    return rows
