"""Frame samplers (KV-cached MaskGIT, token-by-token) and the metrics of the 1X challenge."""
from wmkernels.sampling.maskgit import GenerationResult, maskgit_generate

__all__ = ["GenerationResult", "maskgit_generate"]
