#pragma once
// Shared by the CPU (.cpp) and CUDA (.cu) kernels, so the CPU tests exercise the same math.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define WMK_HOST_DEVICE __host__ __device__
#define WMK_INLINE __forceinline__
#else
#define WMK_HOST_DEVICE
#define WMK_INLINE inline
#endif
