// Data movement for the shape ops: permute (and transpose), concat and split.
//
// What: `permute_f32`  y[i] = x[sum_d idx_d(i) * in_stride[perm[d]]] for the output dims
//                      (strides precomputed on the host in `PermDesc`);
//       `copy_rows_f32` for r in rows, j in row_len: dst[r*dst_stride + dst_off + j] =
//                      src[r*src_stride + src_off + j]; concat places each input this way and split
//                      takes each piece (rows = product of the dims before the axis).
// Launch: 1-D, 256 threads, grid-stride over output elements.
// Validated: cuda_parity.rs permute/transpose/concat/split forward and backward vs the CPU (exact).
#include "common.cuh"

struct PermDesc {
    int rank;
    int out_dims[SEGNET_MAX_RANK];
    int in_strides[SEGNET_MAX_RANK];  // input stride of each output dim
};

extern "C" __global__ void permute_f32(int n, PermDesc s, const float* __restrict__ x, float* __restrict__ y) {
    GRID_STRIDE(i, n) {
        int rem = i, off = 0;
        for (int d = s.rank - 1; d >= 0; --d) {
            off += (rem % s.out_dims[d]) * s.in_strides[d];
            rem /= s.out_dims[d];
        }
        y[i] = x[off];
    }
}

extern "C" __global__ void copy_rows_f32(int rows, int row_len, const float* __restrict__ src, int src_stride,
                                         int src_off, float* __restrict__ dst, int dst_stride, int dst_off) {
    const int n = rows * row_len;
    GRID_STRIDE(i, n) {
        const int r = i / row_len, j = i % row_len;
        dst[r * dst_stride + dst_off + j] = src[r * src_stride + src_off + j];
    }
}
