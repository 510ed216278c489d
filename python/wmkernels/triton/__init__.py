"""Triton kernels: the second GPU path (backend="triton"). Imported lazily, only when chosen."""
