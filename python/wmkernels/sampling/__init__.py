"""Frame samplers (KV-cached MaskGIT, token-by-token) and the metrics of the 1X challenge."""
from wmkernels.sampling.autoregressive import autoregressive_generate
from wmkernels.sampling.maskgit import GenerationResult, maskgit_generate, maskgit_update, sample_digits
from wmkernels.sampling.metrics import (evaluate_teacher_forced, factorized_argmax, factorized_cross_entropy,
                                        teacher_forced_logits, token_accuracy)

__all__ = [
    "GenerationResult",
    "autoregressive_generate",
    "evaluate_teacher_forced",
    "factorized_argmax",
    "factorized_cross_entropy",
    "maskgit_generate",
    "maskgit_update",
    "sample_digits",
    "teacher_forced_logits",
    "token_accuracy",
]
