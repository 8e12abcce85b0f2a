// Sums over any set of axes (the engine's sum/mean and the broadcast-gradient reduction).
//
// What: out[o] = scale * sum over the reduced multi-index r of x[base(o) + off(r)], where
//       base(o) walks the kept dims (out_dims/out_strides -> in_strides) and off(r) walks the
//       reduced dims (red_dims/red_strides). Same contract as engine::ops::reduce::reduce_kernel.
// Launch: `reduce_block_f32`: one 256-thread block per output element (used when the reduced
//       extent is >= 256), block-strided partial sums then a fixed tree (block_sum);
//       `reduce_thread_f32`: one thread per output element, serial sum in index order (small
//       reduced extents). Grid-stride over outputs in both. No atomics: deterministic.
// Validated: cuda_parity.rs sum/mean over random axis sets and broadcast backward vs the CPU kernel.
#include "common.cuh"

struct ReduceDesc {
    int kept_rank;
    int kept_dims[SEGNET_MAX_RANK];
    int kept_strides[SEGNET_MAX_RANK];  // input strides of the kept dims
    int red_rank;
    int red_dims[SEGNET_MAX_RANK];
    int red_strides[SEGNET_MAX_RANK];   // input strides of the reduced dims
};

__device__ __forceinline__ int unravel(int idx, int rank, const int* dims, const int* strides) {
    int off = 0;
    for (int d = rank - 1; d >= 0; --d) {
        off += (idx % dims[d]) * strides[d];
        idx /= dims[d];
    }
    return off;
}

extern "C" __global__ void reduce_thread_f32(int n_out, int n_red, float scale, ReduceDesc s,
                                             const float* __restrict__ x, float* __restrict__ y) {
    GRID_STRIDE(o, n_out) {
        const int base = unravel(o, s.kept_rank, s.kept_dims, s.kept_strides);
        float acc = 0.0f;
        for (int r = 0; r < n_red; ++r) acc += x[base + unravel(r, s.red_rank, s.red_dims, s.red_strides)];
        y[o] = acc * scale;
    }
}

extern "C" __global__ void reduce_block_f32(int n_out, int n_red, float scale, ReduceDesc s,
                                            const float* __restrict__ x, float* __restrict__ y) {
    __shared__ float scratch[32];
    for (int o = blockIdx.x; o < n_out; o += gridDim.x) {
        const int base = unravel(o, s.kept_rank, s.kept_dims, s.kept_strides);
        float acc = 0.0f;
        for (int r = threadIdx.x; r < n_red; r += blockDim.x)
            acc += x[base + unravel(r, s.red_rank, s.red_dims, s.red_strides)];
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) y[o] = acc * scale;
    }
}
