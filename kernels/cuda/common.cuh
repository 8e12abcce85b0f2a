// Shared helpers of the segnet CUDA kernels (included by every .cu file).
//
// Conventions: every kernel is `extern "C"` (unmangled names, looked up by the Rust side), f32,
// contiguous NCHW, 32-bit indices (the Rust wrappers refuse tensors of 2^31 elements or more), and
// grid-stride loops so the host may cap the grid size. Reductions use fixed-shape tree reductions
// (no atomics), so results are identical run to run.
#pragma once

#define SEGNET_MAX_RANK 8
#define SEGNET_BLOCK 256

// Grid-stride loop over [0, n).
#define GRID_STRIDE(i, n) \
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

// Sum of `v` over the block; every thread gets the result. `scratch` holds >= 32 floats.
// Fixed order: warp shuffles then warp 0 over the per-warp partials.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (threadIdx.x < nwarps) ? scratch[threadIdx.x] : 0.0f;
    if (warp == 0) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    return scratch[0];
}

// Max of `v` over the block; every thread gets the result.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (threadIdx.x < nwarps) ? scratch[threadIdx.x] : -INFINITY;
    if (warp == 0) {
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    return scratch[0];
}
